"""faiss-cpu IndexIVFPQ (squared L2), no refine/re-ranking step.

nlist = round(4*sqrt(n)); PQ with 8-bit codes and m subquantizers, m = the largest
divisor of dim that is <= min(64, dim/4): 128-d -> m=32 (32 B/vector), 1280-d -> m=64
(64 B/vector), 64-d -> m=16. Residual encoding (faiss default). Sweep nprobe.
Training sample: min(n, max(100000, 50*nlist)) random base vectors.
"""
import math
import os
import sys

import faiss
import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NPROBE = [1, 4, 16, 64, 128]


def pq_m(dim):
    cap = max(1, min(64, dim // 4))
    return max(m for m in range(1, cap + 1) if dim % m == 0)


def build(base, meta, path):
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    n, dim = base.shape
    nlist = max(1, int(round(4 * math.sqrt(n))))
    m = pq_m(dim)
    common.log(f"[faiss-ivfpq] nlist={nlist} m={m} nbits=8")
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_L2)
    ntrain = min(n, max(100000, 50 * nlist))
    rng = np.random.default_rng(0)
    train = base if ntrain == n else base[np.sort(rng.choice(n, ntrain, replace=False))]
    index.train(train)
    index.add(base)
    faiss.write_index(index, path)


def load(path, meta, sweep):
    faiss.omp_set_num_threads(1)
    return faiss.read_index(path)


def search_one(index, q, nprobe):
    index.nprobe = min(nprobe, index.nlist)
    _, ids = index.search(q.reshape(1, -1), common.K)
    return ids[0]


if __name__ == "__main__":
    args = common.parse_args()
    common.run("faiss-ivfpq", args, build, load,
               [(f"nprobe={p}", p) for p in NPROBE], search_one, "ivfpq.faiss")
