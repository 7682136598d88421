"""hnswlib (space 'l2' = squared L2): M=32, ef_construction=200; sweep ef."""
import os
import sys

import hnswlib
import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

M, EF_CONSTRUCTION = 32, 200
EF = [16, 32, 64, 128, 256, 512]


def build(base, meta, path):
    n, dim = base.shape
    index = hnswlib.Index(space="l2", dim=dim)
    index.init_index(max_elements=n, ef_construction=EF_CONSTRUCTION, M=M, random_seed=100)
    index.set_num_threads(os.cpu_count() or 1)
    index.add_items(base, np.arange(n))
    index.save_index(path)


def load(path, meta, sweep):
    index = hnswlib.Index(space="l2", dim=meta["dim"])
    index.load_index(path, max_elements=meta["n"])
    index.set_num_threads(1)
    return index


def search_one(index, q, ef):
    index.set_ef(ef)
    ids, _ = index.knn_query(q.reshape(1, -1), k=common.K, num_threads=1)
    return ids[0]


if __name__ == "__main__":
    args = common.parse_args()
    common.run("hnswlib", args, build, load,
               [(f"ef={e}", e) for e in EF], search_one, "hnsw.bin")
