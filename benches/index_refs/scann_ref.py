"""ScaNN: tree (num_leaves = round(sqrt(n))) + AH scoring (2 dims/block,
anisotropic threshold 0.2) + exact reorder of 100; squared L2.
Sweep leaves_to_search, pre_reorder_num_neighbors=100. Saved with serialize()
(the serialized directory includes the float dataset kept for reordering)."""
import math
import os
import sys

import scann

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

LEAVES = [2, 5, 10, 20, 50, 100]
REORDER = 100


def build(base, meta, path):
    n = base.shape[0]
    num_leaves = max(1, int(round(math.sqrt(n))))
    common.log(f"[scann] num_leaves={num_leaves}")
    searcher = (
        scann.scann_ops_pybind.builder(base, common.K, "squared_l2")
        .set_n_training_threads(os.cpu_count() or 1)
        .tree(num_leaves=num_leaves, num_leaves_to_search=min(100, num_leaves),
              training_sample_size=min(n, 250000))
        .score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(REORDER)
        .build()
    )
    os.makedirs(path, exist_ok=True)
    searcher.serialize(path)


def load(path, meta, sweep):
    s = scann.scann_ops_pybind.load_searcher(path)
    s.set_num_threads(1)  # only used by *_parallel calls; single-query search is single-threaded
    s._num_leaves = max(1, int(round(math.sqrt(meta["n"]))))
    return s


def search_one(s, q, leaves):
    ids, _ = s.search(q, final_num_neighbors=common.K, pre_reorder_num_neighbors=REORDER,
                      leaves_to_search=min(leaves, s._num_leaves))
    return ids


if __name__ == "__main__":
    args = common.parse_args()
    common.run("scann", args, build, load,
               [(f"leaves_to_search={v}", v) for v in LEAVES], search_one, "scann")
