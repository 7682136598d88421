"""Draws the evaluation plots from target/eval/results.json (written by
`engram eval`): accuracy against k per rule, and against label noise."""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results_path, out_dir):
    with open(results_path) as f:
        r = json.load(f)
    os.makedirs(out_dir, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for rule in r["rules"]:
        ks = range(1, len(rule["test_by_k"]) + 1)
        ax.plot(ks, [100 * a for a in rule["test_by_k"]], label=f"{rule['rule']} (k*={rule['k_chosen']})")
    ax.set_xlabel("k (neighbours that vote)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, memory {r['memory']}, test {r['test']} ({r['date']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "eval_accuracy_vs_k.png"), dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    levels = [100 * x for x in r["noise_levels"]]
    names = [rule["rule"] for rule in r["rules"]]
    names += [n for n in r["label_noise"] if n not in names]
    for name in names:
        ax.plot(levels, [100 * a for a in r["label_noise"][name]], marker="o", label=name)
    ax.set_xlabel("memory labels replaced by random ones (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Label noise in memory")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "eval_label_noise.png"), dpi=110)
    print(f"plots written to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
