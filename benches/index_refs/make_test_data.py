"""Write a small synthetic dataset in the benchmark format.

usage: make_test_data.py D N NQ DIM [--unit] [--clusters C] [--seed S]

Clustered Gaussian data (C centres, per-point noise), queries drawn from the same
distribution, exact top-100 ground truth by squared L2 computed with numpy.
--unit normalises base and queries to unit length (the cosine-style dataset).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_fbin, write_ibin  # noqa: E402

GT_K = 100


def exact_gt(base, queries, k, block=256):
    b64 = base.astype(np.float64)
    bn = (b64 ** 2).sum(1)
    out = np.empty((queries.shape[0], k), dtype=np.uint32)
    for s in range(0, queries.shape[0], block):
        q = queries[s:s + block].astype(np.float64)
        d = bn[None, :] - 2.0 * (q @ b64.T) + (q ** 2).sum(1)[:, None]
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        pd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        out[s:s + block] = np.take_along_axis(part, order, axis=1)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p.add_argument("nq", type=int)
    p.add_argument("dim", type=int)
    p.add_argument("--unit", action="store_true")
    p.add_argument("--clusters", type=int, default=0, help="default: ~sqrt(n)/2")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--name", default=None)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    c = a.clusters or max(4, int(np.sqrt(a.n) / 2))
    centres = rng.standard_normal((c, a.dim)).astype(np.float32)
    scales = rng.uniform(0.3, 0.8, size=c).astype(np.float32)

    def sample(m):
        lab = rng.integers(0, c, size=m)
        x = centres[lab] + scales[lab, None] * rng.standard_normal((m, a.dim)).astype(np.float32)
        if a.unit:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    base, queries = sample(a.n), sample(a.nq)
    k = min(GT_K, a.n)
    gt = exact_gt(base, queries, k)
    os.makedirs(a.dir, exist_ok=True)
    write_fbin(os.path.join(a.dir, "base.fbin"), base)
    write_fbin(os.path.join(a.dir, "query.fbin"), queries)
    write_ibin(os.path.join(a.dir, "gt.ibin"), gt)
    name = a.name or f"synth-{a.n}x{a.dim}" + ("-unit" if a.unit else "")
    with open(os.path.join(a.dir, "meta.json"), "w") as f:
        json.dump({"name": name, "n": a.n, "nq": a.nq, "dim": a.dim}, f)
    print(f"wrote {a.dir}: {name} n={a.n} nq={a.nq} dim={a.dim} gt k={k}", file=sys.stderr)


if __name__ == "__main__":
    main()
