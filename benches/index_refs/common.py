"""Shared helpers for the reference ANN index benchmarks (benches/index_refs).

Data directory D (written by the Rust side or make_test_data.py):
  base.fbin, query.fbin : u32 n, u32 dim, then n*dim float32 (little-endian, row-major)
  gt.ibin               : u32 nq, u32 k, then nq*k uint32 ids (exact squared-L2 NN, nearest first)
  meta.json             : {"name": str, "n": int, "nq": int, "dim": int}

Every system script is run twice, in separate processes:
  --phase build : build with all cores, save under W/<index>/, write W/<index>/build.json
  --phase serve : load the saved index, search one query at a time on ONE thread for
                  each sweep point, print one JSON result line per point on stdout.
Only result lines go to stdout; progress goes to stderr.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np

K = 10
WARMUP_QUERIES = 50  # untimed queries run before each sweep point


def read_fbin(path, mmap=False):
    with open(path, "rb") as f:
        n, dim = np.fromfile(f, dtype="<u4", count=2)
    n, dim = int(n), int(dim)
    if mmap:
        return np.memmap(path, dtype="<f4", mode="r", offset=8, shape=(n, dim))
    a = np.fromfile(path, dtype="<f4", offset=8, count=n * dim)
    if a.size != n * dim:
        raise ValueError(f"{path}: truncated ({a.size} of {n * dim} floats)")
    return np.ascontiguousarray(a.reshape(n, dim), dtype=np.float32)


def read_ibin(path):
    with open(path, "rb") as f:
        n, k = np.fromfile(f, dtype="<u4", count=2)
    n, k = int(n), int(k)
    a = np.fromfile(path, dtype="<u4", offset=8, count=n * k)
    if a.size != n * k:
        raise ValueError(f"{path}: truncated")
    return a.reshape(n, k).astype(np.int64)


def write_fbin(path, a):
    a = np.ascontiguousarray(a, dtype="<f4")
    with open(path, "wb") as f:
        np.array(a.shape, dtype="<u4").tofile(f)
        a.tofile(f)


def write_ibin(path, a):
    a = np.ascontiguousarray(a, dtype="<u4")
    with open(path, "wb") as f:
        np.array(a.shape, dtype="<u4").tofile(f)
        a.tofile(f)


def read_meta(data_dir):
    with open(os.path.join(data_dir, "meta.json")) as f:
        return json.load(f)


def recall_at_10(ids, gt):
    """mean over queries of |returned top10 ∩ gt[:10]| / 10."""
    ids = np.asarray(ids, dtype=np.int64)[:, :K]
    g = gt[:, :K]
    hits = (ids[:, :, None] == g[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / K)


def peak_rss_mb():
    # Linux: ru_maxrss is in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # MiB


def path_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    return total


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj), flush=True)


def parse_args(extra=None):
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="dataset directory (base.fbin, query.fbin, gt.ibin, meta.json)")
    p.add_argument("--work", required=True, help="scratch directory for index files")
    p.add_argument("--phase", required=True, choices=["build", "serve"])
    if extra:
        extra(p)
    return p.parse_args()


def run(index_name, args, build, load, sweep, search_one, index_path="index"):
    """Drive one phase.

    build(base, meta, path) -> None     : build with all cores and save to `path`
    load(path, meta, sweep) -> handle   : load the saved index; restrict itself to one thread
    sweep: list of (label, value)       : e.g. [("efSearch=16", 16), ...]
    search_one(handle, q, value) -> ids : top-K ids for one query vector q (1-D float32)
    index_path: file/dir name under W/<index_name>/ that holds the saved index
    """
    meta = read_meta(args.data)
    # Absolute: scann records artifact paths relative to the cwd at save time.
    wdir = os.path.join(os.path.abspath(args.work), index_name)
    os.makedirs(wdir, exist_ok=True)
    ipath = os.path.join(wdir, index_path)
    info_path = os.path.join(wdir, "build.json")

    if args.phase == "build":
        base = read_fbin(os.path.join(args.data, "base.fbin"))
        if base.shape != (meta["n"], meta["dim"]):
            raise ValueError(f"base.fbin shape {base.shape} != meta n/dim")
        if os.path.exists(info_path):
            os.remove(info_path)
        log(f"[{index_name}] building on {base.shape} ...")
        t0 = time.perf_counter()
        build(base, meta, ipath)
        build_s = time.perf_counter() - t0
        info = {"index": index_name, "data": meta["name"], "build_s": build_s,
                "disk_bytes": path_bytes(ipath), "build_rss_mb": peak_rss_mb()}
        with open(info_path, "w") as f:
            json.dump(info, f)
        log(f"[{index_name}] build done: {json.dumps(info)}")
        return

    # serve
    with open(info_path) as f:
        info = json.load(f)
    queries = read_fbin(os.path.join(args.data, "query.fbin"))
    gt = read_ibin(os.path.join(args.data, "gt.ibin"))
    nq = queries.shape[0]
    if gt.shape[0] != nq:
        raise ValueError("gt.ibin and query.fbin disagree on nq")
    qrows = [np.ascontiguousarray(queries[i]) for i in range(nq)]
    t0 = time.perf_counter()
    handle = load(ipath, meta, sweep)
    log(f"[{index_name}] loaded in {time.perf_counter() - t0:.2f}s, rss {peak_rss_mb():.0f} MB")
    for label, value in sweep:
        for q in qrows[:WARMUP_QUERIES]:
            search_one(handle, q, value)
        out = np.full((nq, K), -1, dtype=np.int64)
        t0 = time.perf_counter()
        for i, q in enumerate(qrows):
            r = np.asarray(search_one(handle, q, value)).reshape(-1)[:K]
            out[i, :r.size] = r
        dt = time.perf_counter() - t0
        emit({"index": index_name, "data": meta["name"], "param": label,
              "recall10": round(recall_at_10(out, gt), 5), "qps": round(nq / dt, 1),
              "build_s": round(info["build_s"], 2), "rss_mb": round(peak_rss_mb(), 1),
              "disk_mb": round(info["disk_bytes"] / 2**20, 2)})
