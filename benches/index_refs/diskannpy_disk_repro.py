"""Minimal reproduction of diskannpy's disk-index hang on this machine.

Run with .bench-venv-diskann/bin/python. Builds a 2,000 x 32 disk index, then
loads it in a child process with a timeout. On the machines this project runs
on, StaticDiskIndex never returns from loading: gdb shows the thread waiting
in PQFlashIndex::load -> use_medoids_data_as_centroids -> read_nodes ->
ScratchStoreManager (an empty per-thread scratch queue), and strace shows
io_setup succeeding and no io_submit at all. Seen with diskannpy 0.7.0 and
0.6.1. Exit code 0 if search works, 1 if it hangs.
"""
import multiprocessing as mp
import sys
import tempfile

import importlib.metadata

import diskannpy
import numpy as np

VERSION = importlib.metadata.version("diskannpy")


def load_and_search(path, out):
    index = diskannpy.StaticDiskIndex(path, num_threads=1, num_nodes_to_cache=0)
    ids, _ = index.search(np.zeros(32, dtype=np.float32), 10, 50, 4)
    out.put(len(ids))


def main():
    rng = np.random.default_rng(0)
    data = rng.random((2000, 32), dtype=np.float32)
    with tempfile.TemporaryDirectory() as path:
        diskannpy.build_disk_index(data, "l2", path, complexity=50, graph_degree=32,
                                   search_memory_maximum=0.001, build_memory_maximum=1,
                                   num_threads=1, pq_disk_bytes=0)
        out = mp.Queue()
        child = mp.Process(target=load_and_search, args=(path, out))
        child.start()
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
            print(f"diskannpy {VERSION}: disk index load/search hung (30 s)")
            return 1
        print(f"diskannpy {VERSION}: disk search returned {out.get()} ids")
        return 0


if __name__ == "__main__":
    sys.exit(main())
