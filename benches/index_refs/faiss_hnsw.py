"""faiss-cpu IndexHNSWFlat (squared L2): M=32, efConstruction=200; sweep efSearch."""
import os
import sys

import faiss

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

M, EF_CONSTRUCTION = 32, 200
EF_SEARCH = [16, 32, 64, 128, 256, 512]


def build(base, meta, path):
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexHNSWFlat(meta["dim"], M, faiss.METRIC_L2)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(base)
    faiss.write_index(index, path)


def load(path, meta, sweep):
    faiss.omp_set_num_threads(1)
    return faiss.read_index(path)


def search_one(index, q, ef):
    index.hnsw.efSearch = ef
    _, ids = index.search(q.reshape(1, -1), common.K)
    return ids[0]


if __name__ == "__main__":
    args = common.parse_args()
    common.run("faiss-hnsw", args, build, load,
               [(f"efSearch={e}", e) for e in EF_SEARCH], search_one, "hnsw.faiss")
