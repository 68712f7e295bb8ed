"""Figures and table of benches/parity/runs.sh: per method, sslab's and lightly's kNN curves
(mean over seeds, band from the lowest to the highest seed) and the final numbers.

Usage: plot_runs.py OUT DATA METHOD [...]  → OUT/parity-METHOD.png, OUT/table.md (printed too)

DATA is the data spec the runs trained on (`shapes`, `cifar10:PATH`), named in the titles.
"""

import glob
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curves(out, method):
    sslab, lightly = [], []
    for path in sorted(glob.glob(f"{out}/sslab-{method}-seed*/summary.json")):
        s = json.load(open(path))
        sslab.append((s["knn_curve"], s["seconds"]))
    for path in sorted(glob.glob(f"{out}/lightly-{method}-seed*.json")):
        s = json.load(open(path))
        lightly.append((s["knn_curve"], s["seconds"]))
    return sslab, lightly


def band(runs):
    steps = [p[0] for p in runs[0][0]]
    vals = [[dict((int(a), b) for a, b in r[0]).get(s) for r in runs] for s in steps]
    return steps, [statistics.mean(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def main(out, data, methods):
    kind = data.split(":")[0]
    data_name = {"shapes": "built-in shapes", "cifar10": "CIFAR-10"}.get(kind, kind)
    rows = []
    for m in methods:
        sslab, lightly = curves(out, m)
        if not sslab or not lightly:
            print(f"{m}: runs missing ({len(sslab)} sslab, {len(lightly)} lightly)")
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, runs, color in [("sslab", sslab, "tab:blue"), ("lightly + torchvision", lightly, "tab:orange")]:
            steps, mean, lo, hi = band(runs)
            ax.plot(steps, mean, color=color, label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(steps, lo, hi, color=color, alpha=0.25)
        ax.set_xlabel("step")
        ax.set_ylabel("kNN top-1 (%)")
        ax.set_title(f"{m}, tiny preset, {data_name}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(f"{out}/parity-{m}.png", dpi=100)
        plt.close(fig)
        fs = [r[0][-1][1] for r in sslab]
        fl = [r[0][-1][1] for r in lightly]
        spread = max(fs + fl) - min(fs + fl)
        within = abs(statistics.mean(fs) - statistics.mean(fl)) <= max(spread, 2.0)
        rows.append(
            f"| {m} | {sslab[0][0][0][1]:.1f} / {lightly[0][0][0][1]:.1f} | "
            f"{', '.join(f'{v:.1f}' for v in fs)} | {', '.join(f'{v:.1f}' for v in fl)} | "
            f"{statistics.mean(fs) - statistics.mean(fl):+.1f} | {spread:.1f} | {'yes' if within else 'no'} | "
            f"{statistics.mean(r[1] for r in sslab) / 60:.1f} / {statistics.mean(r[1] for r in lightly) / 60:.1f} |"
        )
    table = [
        "| method | kNN at init, seed 0 (sslab / lightly) | sslab final kNN per seed | lightly final kNN per seed "
        "| difference of means | spread of all finals | within max(spread, 2) | wall minutes, evaluations included (sslab / lightly) |",
        "|---|---|---|---|---|---|---|---|",
    ] + rows
    text = "\n".join(table) + "\n"
    open(f"{out}/table.md", "w").write(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
