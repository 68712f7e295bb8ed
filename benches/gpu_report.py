"""Turns what benches/gpu.sh measured into the tables of RESULTS.md and the JSON record file.

    python3 gpu_report.py OUT_DIR COMMIT GPU_NAME

reads OUT_DIR/rows.tsv (one line per step-benchmark command: who, workload, batch, setting,
RESULT line, peak GB) and OUT_DIR/conv-{sslab,torch}-{net}.txt (the RESULT lines of
`sslab bench conv` and its PyTorch twin), prints Markdown tables with sslab / PyTorch ratios and
writes OUT_DIR/gpu-YYYY-MM-DD.json: a list of records with the keys workload, batch, precision,
torch_setting, sslab, torch (images/s, or TFLOP/s for conv rows), sslab_peak_gb, torch_peak_gb,
gpu, commit. Standard library only: it runs on the GPU machine's Python.
"""

import datetime
import json
import os
import re
import sys


def fields(line):
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def step_records(out, gpu, commit):
    """Pairs each sslab step row with the PyTorch rows of the same workload and batch."""
    path = os.path.join(out, "rows.tsv")
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 6:
            continue
        who, workload, batch, setting, result, mem = parts
        f = fields(result)
        rows.append((who, workload, int(batch), setting, num(f.get("images_per_s")), num(mem)))
    recs = []
    for who, workload, batch, setting, ips, mem in rows:
        if who != "sslab":
            continue
        for twho, tw, tb, tset, tips, tmem in rows:
            if twho == "torch" and tw == workload and tb == batch:
                recs.append({
                    "workload": workload, "batch": batch, "precision": setting,
                    "torch_setting": tset, "sslab": ips, "torch": tips,
                    "sslab_peak_gb": mem, "torch_peak_gb": tmem, "gpu": gpu, "commit": commit,
                })
    return recs


def conv_results(path):
    res = {}
    if not os.path.exists(path):
        return res
    for line in open(path):
        if line.startswith("RESULT conv"):
            f = fields(line)
            res[f["shape"]] = f
    return res


def conv_records(out, gpu, commit):
    recs, tables = [], []
    for net, batch in (("resnet18", 256), ("resnet50", 128)):
        ours = conv_results(os.path.join(out, f"conv-sslab-{net}.txt"))
        theirs = conv_results(os.path.join(out, f"conv-torch-{net}.txt"))
        if not ours and not theirs:
            continue
        lines = [
            f"### {net} convolutions, batch {batch}, TFLOP/s (f32, TF32 allowed as PyTorch's default)",
            "",
            "| shape | count | fwd sslab / PyTorch | ratio | dX sslab / PyTorch | ratio | dW sslab / PyTorch | ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        worst = None
        for shape in list(ours) + [s for s in theirs if s not in ours]:
            a, b = ours.get(shape, {}), theirs.get(shape, {})
            cells = []
            for p in ("fwd", "dx", "dw"):
                x, y = num(a.get(f"{p}_tflops")), num(b.get(f"{p}_tflops"))
                r = x / y if x is not None and y else None
                if r is not None:
                    worst = r if worst is None else min(worst, r)
                cells += [f"{x} / {y}", f"{r:.2f}" if r is not None else "n/a"]
                recs.append({
                    "workload": f"conv {shape} {p}", "batch": batch, "precision": "f32",
                    "torch_setting": "fp32", "sslab": x, "torch": y,
                    "sslab_peak_gb": None, "torch_peak_gb": None, "gpu": gpu, "commit": commit,
                })
            count = a.get("count") or b.get("count") or "?"
            lines.append(f"| {shape} | {count} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"Lowest ratio: {worst:.2f}" if worst is not None else "No pair measured.")
        tables.append("\n".join(lines))
    return recs, tables


def main():
    out, commit, gpu = sys.argv[1], sys.argv[2], sys.argv[3]
    steps = step_records(out, gpu, commit)
    convs, tables = conv_records(out, gpu, commit)
    if steps:
        print("### Training steps: sslab (f32, TF32 convolutions) vs PyTorch on the same card\n")
        print("| workload | batch | PyTorch setting | sslab images/s | PyTorch images/s | ratio | peak GB sslab / PyTorch |")
        print("|---|---|---|---|---|---|---|")
        for r in steps:
            ratio = r["sslab"] / r["torch"] if r["sslab"] and r["torch"] else None
            print(f"| {r['workload']} | {r['batch']} | {r['torch_setting']} | {r['sslab']} | {r['torch']} | "
                  f"{f'{ratio:.3f}' if ratio else 'n/a'} | {r['sslab_peak_gb']} / {r['torch_peak_gb']} |")
        print()
    for t in tables:
        print(t + "\n")
    name = f"gpu-{datetime.date.today().isoformat()}.json"
    with open(os.path.join(out, name), "w") as f:
        json.dump(steps + convs, f, indent=1)
    print(f"{len(steps) + len(convs)} records in {name}")


if __name__ == "__main__":
    main()
