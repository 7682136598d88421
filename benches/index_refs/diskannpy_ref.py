"""diskannpy 0.7.0 (run with .bench-venv-diskann/bin/python), squared L2 ("l2").

--variant mem  : build_memory_index (complexity L=100, graph_degree R=64, alpha=1.2,
                 all cores), served with StaticMemoryIndex; sweep search complexity.
--variant disk : build_disk_index (R=64, L=100, full-precision vectors on disk,
                 pq_disk_bytes=0); the in-memory PQ code size is set through
                 search_memory_maximum so that DiskANN picks PQ_BYTES chunks per vector
                 (same m as faiss_ivfpq: min(64, dim/4) rounded to a divisor of dim).
                 Served with StaticDiskIndex, beam_width=4, caching
                 min(n/100, 10000) nodes (sample-based); sweep search complexity.
"""
import math
import os
import shutil
import sys

import diskannpy
import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

R, L_BUILD, ALPHA = 64, 100, 1.2
COMPLEXITY = [10, 20, 30, 50, 75, 100, 150, 200]
BEAM_WIDTH = 4
BUILD_MEMORY_GB = 8.0


def pq_bytes(dim):
    cap = max(1, min(64, dim // 4))
    return max(m for m in range(1, cap + 1) if dim % m == 0)


def search_memory_gb(n, dim):
    # DiskANN: num_pq_chunks = floor(budget_bytes / n); above 1 GB it first subtracts
    # 0.25 GB reserved for the node cache. The python binding passes the value through
    # std::to_string (6 decimals), hence the +0.5 chunk margin.
    gb = (pq_bytes(dim) + 0.5) * n / 2**30
    if gb > 1.0:
        gb += 0.25
    return max(gb, 1e-6)


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def drop_input_copy(path):
    # diskannpy writes the numpy input to <prefix>_vectors.bin before building; the
    # static indexes do not need it, so it is removed and not counted in disk_mb.
    p = os.path.join(path, "ann_vectors.bin")
    if os.path.exists(p):
        os.remove(p)


def build_mem(base, meta, path):
    fresh_dir(path)
    diskannpy.build_memory_index(base, "l2", path, complexity=L_BUILD, graph_degree=R,
                                 num_threads=os.cpu_count() or 1, alpha=ALPHA)
    drop_input_copy(path)


def build_disk(base, meta, path):
    fresh_dir(path)
    n, dim = base.shape
    smem = search_memory_gb(n, dim)
    common.log(f"[diskannpy-disk] target pq bytes {pq_bytes(dim)}, search_memory_maximum={smem:.6f} GB")
    diskannpy.build_disk_index(base, "l2", path, complexity=L_BUILD, graph_degree=R,
                               search_memory_maximum=smem, build_memory_maximum=BUILD_MEMORY_GB,
                               num_threads=os.cpu_count() or 1, pq_disk_bytes=0)
    drop_input_copy(path)


def load_mem(path, meta, sweep):
    return diskannpy.StaticMemoryIndex(path, num_threads=1,
                                       initial_search_complexity=max(v for _, v in sweep))


def load_disk(path, meta, sweep):
    return diskannpy.StaticDiskIndex(path, num_threads=1,
                                     num_nodes_to_cache=min(meta["n"] // 100, 10000))


def search_mem(index, q, complexity):
    return index.search(q, k_neighbors=common.K, complexity=complexity).identifiers


def search_disk(index, q, complexity):
    return index.search(q, k_neighbors=common.K, complexity=complexity,
                        beam_width=BEAM_WIDTH).identifiers


if __name__ == "__main__":
    args = common.parse_args(lambda p: p.add_argument("--variant", choices=["mem", "disk"], default="mem"))
    sweep = [(f"complexity={c}", c) for c in COMPLEXITY]
    if args.variant == "mem":
        common.run("diskannpy-mem", args, build_mem, load_mem, sweep, search_mem, "index")
    else:
        common.run("diskannpy-disk", args, build_disk, load_disk, sweep, search_disk, "index")
