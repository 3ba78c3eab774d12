#!/usr/bin/env python3
"""Plots every model's validation curve from the JSON of examples/distill_dllm2rec (or any
program whose JSON has "runs", each with "name", "seed" and an epoch "history" carrying
"validation" results), one line per run, one panel per metric.

    /usr/bin/python3 bench/plot_curves.py bench/results/dllm2rec_scientific.json --out curves.png
    /usr/bin/python3 bench/plot_curves.py out.json --metrics NDCG@10 HR@10 --seeds 1

Needs Debian's python3-matplotlib (no other package).
"""
import argparse
import json
import sys


def curves(data, metric, seeds):
    """{run label: ([epochs], [values])} for the runs that have validation results."""
    out = {}
    for run in data.get("runs", []):
        if seeds and run.get("seed") not in seeds:
            continue
        points = [(e["epoch"], e["validation"]["metrics"][metric])
                  for e in (run.get("history") or []) if e.get("validation") and metric in e["validation"].get("metrics", {})]
        if points:
            label = f'{run["name"]} (seed {run.get("seed")})'
            out[label] = ([p[0] for p in points], [p[1] for p in points])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", help="results JSON (distill_dllm2rec --json)")
    p.add_argument("--metrics", nargs="+", default=["NDCG@10"], help="validation metrics to plot, one panel each")
    p.add_argument("--seeds", nargs="*", type=int, help="only these seeds (default: all)")
    p.add_argument("--out", default="curves.png", help="PNG file to write")
    args = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: matplotlib is missing (Debian: apt-get install python3-matplotlib)")
    with open(args.json) as f:
        data = json.load(f)
    fig, axes = plt.subplots(len(args.metrics), 1, figsize=(9, 4.5 * len(args.metrics)), squeeze=False)
    drawn = 0
    for ax, metric in zip(axes[:, 0], args.metrics):
        series = curves(data, metric, set(args.seeds or []))
        for label, (epochs, values) in sorted(series.items()):
            ax.plot(epochs, values, marker=".", label=label)
            drawn += 1
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize="small")
    if drawn == 0:
        sys.exit(f"error: {args.json}: no run has validation results for {args.metrics}")
    source = data.get("configuration", {}).get("data", "")
    fig.suptitle(f"validation curves: {source}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: {drawn} curves")


if __name__ == "__main__":
    main()
