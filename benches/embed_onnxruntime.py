"""Reference: Python onnxruntime on the same ONNX file, batch 32.

Same protocol as crates/engram-ingest/benches/embed_throughput.rs: two warm-up
batches, then timed batches; `model` times session.run on a preprocessed
batch, `end_to_end` adds PIL decode of the same PNGs, bicubic resize,
normalisation and L2 normalisation. Prints one JSON line per (mode, size).
"""
import gzip
import io
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

BATCH = 32
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "models/efficientnet-lite0/efficientnet-lite0.onnx")
DATASET = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
MEAN = 127.0 / 255.0
STD = 128.0 / 255.0


def fashion_pngs(n):
    raw = gzip.open(DATASET).read()
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(pixels[i], mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def time_batches(batches, run):
    run()
    run()
    rates = []
    for _ in range(batches):
        started = time.perf_counter()
        run()
        rates.append(BATCH / (time.perf_counter() - started))
    return rates


def report(mode, size, rates):
    rates = sorted(rates)
    print(json.dumps({
        "impl": "python-onnxruntime-" + ort.__version__,
        "mode": mode,
        "size": size,
        "batch": BATCH,
        "batches": len(rates),
        "images_per_s_median": round(rates[len(rates) // 2], 1),
        "images_per_s_mean": round(sum(rates) / len(rates), 1),
    }), flush=True)


def main():
    sizes = [int(s) for s in os.environ.get("ENGRAM_BENCH_SIZES", "128,224").split(",")]
    batches = int(os.environ.get("ENGRAM_BENCH_BATCHES", "8"))
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    pngs = fashion_pngs(BATCH)
    for size in sizes:
        idx = np.arange(BATCH * 3 * size * size)
        tensor = (((idx * 7919) % 255).astype(np.float32) / 128.0 - 1.0).reshape(BATCH, 3, size, size)
        report("model", size, time_batches(batches, lambda: session.run(["embedding"], {"input": tensor})))

        def end_to_end():
            batch = np.empty((BATCH, 3, size, size), dtype=np.float32)
            for i, data in enumerate(pngs):
                img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)
                batch[i] = ((np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
            emb = session.run(["embedding"], {"input": batch})[0]
            return emb / np.linalg.norm(emb, axis=1, keepdims=True)

        report("end_to_end", size, time_batches(batches, end_to_end))


if __name__ == "__main__":
    sys.exit(main())
