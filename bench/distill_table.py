#!/usr/bin/env python3
"""Renders the JSON of examples/distill_slmrec (--json) as the Markdown tables of the README.

    /usr/bin/python3 bench/distill_table.py bench/results/distill_slmrec_amazon.json
"""
import json
import math
import statistics
import sys


def mean_std(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return m, s


def fmt(values, digits):
    r = mean_std(values)
    if r == "n/a":
        return r
    return f"{r[0]:.{digits}f} ± {r[1]:.{digits}f}"


def main(path):
    out = json.load(open(path))
    runs = out["runs"]
    names = []
    for r in runs:
        if r["name"] not in names:
            names.append(r["name"])
    print("| model | seeds | layers | block params | all params | trainable params | train s/epoch | ms/user (vector) | ms/user (top-10) | best epoch | HR@10 | NDCG@10 | MRR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        rs = [r for r in runs if r["name"] == name]
        print(f"| {name.strip()} | {len(rs)} | {rs[0]['layers']} | {rs[0]['block_parameters']:,} | {rs[0]['parameters']:,} | {format(rs[0]['trainable_parameters'], ',') if 'trainable_parameters' in rs[0] else '–'} | "
              f"{fmt([r['seconds_per_epoch'] for r in rs], 2)} | {fmt([r['encode_ms_per_user'] for r in rs], 3)} | "
              f"{fmt([r['top10_ms_per_user'] for r in rs], 3)} | {fmt([r['best_epoch'] for r in rs], 1)} | "
              f"{fmt([r['test']['metrics']['HR@10'] for r in rs], 4)} | {fmt([r['test']['metrics']['NDCG@10'] for r in rs], 4)} | "
              f"{fmt([r['test']['metrics']['MRR'] for r in rs], 4)} |")
    pop = out["popularity"]["metrics"]
    print(f"| popularity | | | | | | | | | | {pop['HR@10']:.4f} | {pop['NDCG@10']:.4f} | {pop['MRR']:.4f} |")
    # Paired differences against the plain student.
    plain = {r["seed"]: r for r in runs if r["name"] == "student"}
    print()
    print("| vs. plain student (paired by seed) | seeds | Δ HR@10 | Δ NDCG@10 | Δ MRR |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        if name in ("teacher", "student"):
            continue
        rs = [r for r in runs if r["name"] == name and r["seed"] in plain]
        d = {m: [r["test"]["metrics"][m] - plain[r["seed"]]["test"]["metrics"][m] for r in rs] for m in ("HR@10", "NDCG@10", "MRR")}
        print(f"| {name.strip()} | {len(rs)} | {fmt(d['HR@10'], 4)} | {fmt(d['NDCG@10'], 4)} | {fmt(d['MRR'], 4)} |")


if __name__ == "__main__":
    main(sys.argv[1])
