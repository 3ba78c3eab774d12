#!/usr/bin/env python3
"""Compares SLMRec variants: one row per run of examples/distill_slmrec (--json), with the
validation score each student was selected on and its test metrics.

    /usr/bin/python3 bench/distill_variants.py bench/results/distill_variants/*.json

The validation score is read from the JSON ("validation_selection_metric"); JSON written before
that field existed is matched with the "restored the best epoch" lines of the log beside it
(same name, .log), in the order the models were trained.
"""
import json
import os
import re
import sys


def validation_scores(path, runs):
    if all("validation_selection_metric" in r for r in runs):
        return [r["validation_selection_metric"] for r in runs]
    log = os.path.splitext(path)[0] + ".log"
    scores = [float(v) for v in re.findall(r"restored the best epoch \d+ \(valid \S+ ([0-9.eE+-]+)\)", open(log).read())]
    trained = [r for r in runs if r.get("best_epoch", 0) > 0]
    if len(scores) != len(trained):
        sys.exit(f"{log}: {len(scores)} validation lines for {len(trained)} trained models")
    by_run = dict(zip((id(r) for r in trained), scores))
    return [by_run.get(id(r), float("nan")) for r in runs]


def main(paths):
    print("| variant | plain student valid NDCG@10 | distilled valid NDCG@10 | distilled test NDCG@10 | test HR@10 | effect on test NDCG@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in paths:
        out = json.load(open(path))
        runs = out["runs"]
        valid = validation_scores(path, runs)
        by_name = {r["name"]: (r, v) for r, v in zip(runs, valid)}
        plain, plain_valid = by_name["student"]
        dist, dist_valid = by_name["student + SLMRec"]
        name = os.path.splitext(os.path.basename(path))[0]
        t = dist["test"]["metrics"]
        effect = t["NDCG@10"] - plain["test"]["metrics"]["NDCG@10"]
        print(f"| {name} | {plain_valid:.4f} | {dist_valid:.4f} | {t['NDCG@10']:.4f} | {t['HR@10']:.4f} | {effect:+.4f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
