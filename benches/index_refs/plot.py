"""Plot recall@10 vs QPS and print the best-at-0.95 summary.

usage: .bench-venv/bin/python benches/index_refs/plot.py IN.jsonl OUT_DIR

IN.jsonl: result lines from run_all.py and/or Engram's bench (same fields:
index, data, param, recall10, qps, build_s, rss_mb, disk_mb); other lines are ignored.
Writes OUT_DIR/recall_qps_<data>.png (one curve per index, QPS on a log scale) and prints,
per (index, data), the fastest sweep point with recall10 >= 0.95:
  index=<name> data=<name> recall10=<r> qps=<q> rss_mb=<m> disk_mb=<d> build_s=<b>
or `index=<name> data=<name> recall10<0.95`; a system that only reported an error prints
`index=<name> data=<name> error=<message>`.
"""
import json
import os
import re
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGET = 0.95


def load(path):
    points = OrderedDict()  # (index, data) -> [rows]
    errors = OrderedDict()
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "index" not in r or "data" not in r:
                continue
            key = (r["index"], r["data"])
            if "error" in r:
                errors[key] = r["error"]
            elif "recall10" in r and "qps" in r:
                points.setdefault(key, []).append(r)
    return points, errors


def safe(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    points, errors = load(sys.argv[1])
    out_dir = sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)

    datasets = list(OrderedDict.fromkeys(d for _, d in list(points) + list(errors)))
    for data in datasets:
        series = [(i, rows) for (i, d), rows in points.items() if d == data]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for index, rows in series:
            # file order = sweep order (increasing search effort)
            ax.plot([r["recall10"] for r in rows], [r["qps"] for r in rows],
                    marker="o", markersize=4, label=index)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second (1 thread, log scale)")
        ax.set_title(f"{data}: recall@10 vs QPS")
        ax.axvline(TARGET, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"recall_qps_{safe(data)}.png"), dpi=120)
        plt.close(fig)

    keys = list(OrderedDict.fromkeys(list(points) + list(errors)))
    for index, data in keys:
        rows = points.get((index, data), [])
        if not rows:
            print(f"index={index} data={data} error={errors[(index, data)]}")
            continue
        ok = [r for r in rows if r["recall10"] >= TARGET]
        if not ok:
            print(f"index={index} data={data} recall10<{TARGET}")
            continue
        b = max(ok, key=lambda r: r["qps"])
        print(f"index={index} data={data} recall10={b['recall10']:.4f} qps={b['qps']:.0f} "
              f"rss_mb={b['rss_mb']:.0f} disk_mb={b['disk_mb']:.1f} build_s={b['build_s']:.1f}")


if __name__ == "__main__":
    main()
