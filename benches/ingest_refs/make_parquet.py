"""Writes the ingestion benchmark's inputs (run with .venv/bin/python, which
has pyarrow): N clustered 128-d float32 embeddings as Parquet files of 100k
rows (row groups of 10k; FixedSizeList<float32>, label, id) plus the same
vectors as vectors.npy for the faiss reference; and M Fashion-MNIST test
images as PNG bytes in one Parquet file (row groups of 1,000).

usage: make_parquet.py OUT_DIR N_EMBEDDINGS N_IMAGES
"""
import gzip
import io
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DIM = 128
FILE_ROWS = 100_000
GROUP_ROWS = 10_000
DATASET = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def embeddings(out, n):
    d = os.path.join(out, "embeddings")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(256, DIM)).astype(np.float32) * 4
    all_vectors = np.empty((n, DIM), dtype=np.float32)
    for f, start in enumerate(range(0, n, FILE_ROWS)):
        rows = min(FILE_ROWS, n - start)
        which = rng.integers(0, 256, size=rows)
        v = (centres[which] + rng.normal(scale=0.35 * 4, size=(rows, DIM))).astype(np.float32)
        all_vectors[start:start + rows] = v
        table = pa.table({
            "id": pa.array(np.arange(start, start + rows, dtype=np.uint64)),
            "label": pa.array([f"c{w}" for w in which]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), DIM),
        })
        pq.write_table(table, os.path.join(d, f"part-{f:04d}.parquet"), row_group_size=GROUP_ROWS, compression="snappy")
    np.save(os.path.join(out, "vectors.npy"), all_vectors)


def images(out, n):
    raw = gzip.open(os.path.join(DATASET, "t10k-images-idx3-ubyte.gz")).read()
    labels = np.frombuffer(gzip.open(os.path.join(DATASET, "t10k-labels-idx1-ubyte.gz")).read(), dtype=np.uint8, offset=8)
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    pngs = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(pixels[i % len(pixels)], mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    d = os.path.join(out, "images")
    os.makedirs(d, exist_ok=True)
    table = pa.table({
        "id": pa.array(np.arange(n, dtype=np.uint64)),
        "label": pa.array([CLASSES[labels[i % len(labels)]] for i in range(n)]),
        "image": pa.array(pngs, type=pa.binary()),
    })
    pq.write_table(table, os.path.join(d, "images.parquet"), row_group_size=1000)


if __name__ == "__main__":
    out, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    embeddings(out, n)
    images(out, m)
    print(f"wrote {n} embeddings and {m} images under {out}")
