"""Reference for image ingestion: a Python onnxruntime loop over the same
Parquet file and model: read row groups with pyarrow, decode PNG with PIL,
resize to the embedder's size, normalise ((x-127)/128), run the model in
batches of ENGRAM_BATCH (32) with ENGRAM_THREADS intra-op threads (0: onnxruntime's default), L2-normalise (run with
.venv/bin/python). Prints one summary line."""
import io
import os
import resource
import sys
import time

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../..")
MODEL = os.path.join(ROOT, "models/efficientnet-lite0/efficientnet-lite0.onnx")
SIZE = int(os.environ.get("ENGRAM_IMAGE_SIZE", "128"))
BATCH = int(os.environ.get("ENGRAM_BATCH", "32"))
THREADS = int(os.environ.get("ENGRAM_THREADS", "0"))
PREFIX = os.environ.get("ENGRAM_REF_PREFIX", "ingest-ref kind=images")

options = ort.SessionOptions()
options.intra_op_num_threads = THREADS
session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
started = time.perf_counter()
rows = 0
parquet = pq.ParquetFile(sys.argv[1])
for group in range(parquet.num_row_groups):
    images = parquet.read_row_group(group, columns=["image"]).column("image").to_pylist()
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        batch = np.empty((len(chunk), 3, SIZE, SIZE), dtype=np.float32)
        for i, data in enumerate(chunk):
            img = Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
            batch[i] = ((np.asarray(img, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)
        emb = session.run(["embedding"], {"input": batch})[0]
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        rows += len(chunk)
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{PREFIX} impl=python-onnxruntime-loop rows={rows} rows_per_s={rows / seconds:.1f} peak_rss_mb={rss:.0f} size={SIZE} batch={BATCH} threads={THREADS or 'default'}")
