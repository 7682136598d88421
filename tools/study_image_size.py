#!/usr/bin/env python3
"""Which input image size should the Fashion-MNIST demo feed EfficientNet-Lite0?

For each size S the 28x28 grayscale Fashion-MNIST images are replicated to RGB,
resized to SxS (PIL bicubic), normalised as the model expects
((x - 127) / 128 on 0..255 pixels, see models/efficientnet-lite0/README.md),
embedded with onnxruntime (batch 32, 2 intra-op threads) and L2-normalised.
The first 10000 training images are the memory, the first 1000 test images the
queries; each query is classified by cosine kNN:

* rank voting: neighbour i (0-based, by decreasing cosine) votes 1 / (2 + i)
  for its label, k in {10, 50};
* plurality voting at k = 10 (ties go to the tied label whose best neighbour
  ranks highest).

Throughput is images/s over the session.run calls only (one untimed warm-up
batch per size).  A raw-pixel baseline (784 floats, L2-normalised, same kNN
rules) is reported on the same split.

Dependencies: numpy, onnxruntime and pillow (used only for the bicubic resize).

Usage::

    python tools/study_image_size.py [--model PATH] [--data DIR] [--sizes 32 48 64 ...]
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "efficientnet-lite0" / "efficientnet-lite0.onnx"
DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
N_MEMORY, N_QUERY, BATCH, THREADS = 10000, 1000, 32, 2


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not a ubyte IDX file"
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(data_dir: Path):
    xm = read_idx(data_dir / "train-images-idx3-ubyte.gz")[:N_MEMORY]
    ym = read_idx(data_dir / "train-labels-idx1-ubyte.gz")[:N_MEMORY]
    xq = read_idx(data_dir / "t10k-images-idx3-ubyte.gz")[:N_QUERY]
    yq = read_idx(data_dir / "t10k-labels-idx1-ubyte.gz")[:N_QUERY]
    return xm, ym.astype(np.int64), xq, yq.astype(np.int64)


def preprocess(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,3,S,S], bicubic resize, (x - 127) / 128."""
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        resized = np.asarray(Image.fromarray(img, mode="L").resize((size, size), Image.BICUBIC), np.float32)
        out[i] = ((resized - 127.0) / 128.0)[None]  # broadcast gray -> R, G, B
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed(session: ort.InferenceSession, batch_input: np.ndarray) -> tuple[np.ndarray, float]:
    """Embed in batches of BATCH; returns (embeddings, seconds spent in session.run)."""
    session.run(["embedding"], {"input": batch_input[:BATCH]})  # untimed warm-up
    chunks, seconds = [], 0.0
    for start in range(0, len(batch_input), BATCH):
        batch = batch_input[start : start + BATCH]
        t0 = time.perf_counter()
        (emb,) = session.run(["embedding"], {"input": batch})
        seconds += time.perf_counter() - t0
        chunks.append(emb)
    return np.concatenate(chunks), seconds


def knn_accuracies(memory: np.ndarray, mem_labels: np.ndarray, queries: np.ndarray,
                   q_labels: np.ndarray, n_classes: int = 10) -> dict[str, float]:
    """Cosine kNN on L2-normalised vectors; returns accuracy per voting rule."""
    sims = queries @ memory.T
    kmax = 50
    top = np.argpartition(-sims, kmax, axis=1)[:, :kmax]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    nbr_labels = mem_labels[np.take_along_axis(top, order, axis=1)]  # [Q, 50], best first
    rows = np.arange(len(queries))[:, None]

    results = {}
    for k in (10, 50):
        votes = np.zeros((len(queries), n_classes))
        np.add.at(votes, (np.broadcast_to(rows, (len(queries), k)), nbr_labels[:, :k]),
                  1.0 / (2.0 + np.arange(k)))
        results[f"rank@{k}"] = float((votes.argmax(1) == q_labels).mean())

    k = 10
    counts = np.zeros((len(queries), n_classes))
    np.add.at(counts, (np.broadcast_to(rows, (len(queries), k)), nbr_labels[:, :k]), 1.0)
    # Tie-break: among labels with the top count, the one whose best neighbour ranks highest.
    first_rank = np.full((len(queries), n_classes), k, dtype=np.float64)
    for i in range(k - 1, -1, -1):
        first_rank[np.arange(len(queries)), nbr_labels[:, i]] = i
    pred = np.argmax(counts * (k + 1) - first_rank, axis=1)
    results["plurality@10"] = float((pred == q_labels).mean())
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 96, 128, 160])
    args = ap.parse_args()

    xm, ym, xq, yq = load_split(args.data)
    print(f"memory {xm.shape} queries {xq.shape}; onnxruntime {ort.__version__}; model {args.model}")

    raw = knn_accuracies(l2_normalise(xm.reshape(len(xm), -1).astype(np.float32)), ym,
                         l2_normalise(xq.reshape(len(xq), -1).astype(np.float32)), yq)
    print(f"raw pixels 28x28: rank@10 {raw['rank@10']:.3f}  rank@50 {raw['rank@50']:.3f}  "
          f"plurality@10 {raw['plurality@10']:.3f}", flush=True)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])

    rows = []
    for size in args.sizes:
        em, tm = embed(session, preprocess(xm, size))
        eq, tq = embed(session, preprocess(xq, size))
        acc = knn_accuracies(l2_normalise(em), ym, l2_normalise(eq), yq)
        ips = (len(em) + len(eq)) / (tm + tq)
        rows.append((size, acc, ips))
        print(f"S={size:3d}: rank@10 {acc['rank@10']:.3f}  rank@50 {acc['rank@50']:.3f}  "
              f"plurality@10 {acc['plurality@10']:.3f}  {ips:8.1f} img/s", flush=True)

    print("\n| S | acc rank k=10 | acc rank k=50 | acc plurality k=10 | images/s (batch 32) |")
    print("|---|---|---|---|---|")
    for size, acc, ips in rows:
        print(f"| {size} | {acc['rank@10']:.3f} | {acc['rank@50']:.3f} | {acc['plurality@10']:.3f} | {ips:.1f} |")
    print(f"| raw pixels | {raw['rank@10']:.3f} | {raw['rank@50']:.3f} | {raw['plurality@10']:.3f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
