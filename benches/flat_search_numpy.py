"""Reference for crates/engram-index/benches/flat_search.rs: exact top-50 by
cosine over 20,000 random unit vectors of 1280-d with numpy (BLAS matmul +
argpartition), one query at a time and 64 queries per batch."""
import json
import time

import numpy as np

N, DIM, K, BATCH = 20_000, 1280, 50, 64
rng = np.random.default_rng(1)
data = rng.random((N, DIM), dtype=np.float32) - 0.5
data /= np.linalg.norm(data, axis=1, keepdims=True)
queries = rng.random((BATCH, DIM), dtype=np.float32) - 0.5
queries /= np.linalg.norm(queries, axis=1, keepdims=True)


def top_k(q):
    d = 1.0 - q @ data.T
    idx = np.argpartition(d, K, axis=-1)[..., :K]
    part = np.take_along_axis(d, idx, axis=-1)
    return np.take_along_axis(idx, np.argsort(part, axis=-1), axis=-1)


def rate(fn, per_call, reps):
    fn()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return per_call * reps / (time.perf_counter() - started)


print(json.dumps({"impl": "numpy-" + np.__version__, "case": "search_k50", "queries_per_s": round(rate(lambda: top_k(queries[0]), 1, 50), 1)}))
print(json.dumps({"impl": "numpy-" + np.__version__, "case": "search_batch64_k50", "queries_per_s": round(rate(lambda: top_k(queries), BATCH, 10), 1)}))
