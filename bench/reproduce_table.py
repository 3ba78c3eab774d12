#!/usr/bin/env python3
"""Compares `examples/train` runs of two builds (the previous commit and this one) on the same
command: every test metric, the best epoch, the per-epoch losses and the median seconds per
epoch, side by side. Pairs are given as OLD.json:NEW.json; speed runs repeated in alternation
(old, new, old, new, ...) are given with --speed OLD1.json,OLD2.json:NEW1.json,NEW2.json and
reported as the median over all their epochs.

    /usr/bin/python3 bench/reproduce_table.py bench/results/reproduce/sasrec_bce_old.json:bench/results/reproduce/sasrec_bce_new.json

Only the Python standard library is needed.
"""
import argparse
import json
import statistics


def load(path):
    with open(path) as f:
        return json.load(f)


def test_metrics(run):
    out = {}
    for r in run["results"]:
        if r["split"] == "test" and "baseline" not in r["model"] and "popularity" not in r["model"]:
            for k in ("HR@10", "NDCG@10", "MRR"):
                out[f"{r['protocol']} {k}"] = r["metrics"][k]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="*", help="OLD.json:NEW.json")
    p.add_argument("--speed", nargs="*", default=[], help="OLD1,OLD2,...:NEW1,NEW2,... (alternating runs)")
    args = p.parse_args()
    for pair in args.pairs:
        old_path, new_path = pair.split(":")
        old, new = load(old_path), load(new_path)
        mo, mn = test_metrics(old), test_metrics(new)
        losses_equal = [e["loss"] for e in old["training"]["epochs"]] == [e["loss"] for e in new["training"]["epochs"]]
        print(f"{new_path}")
        print(f"  best epoch {old['training']['best_epoch']} of {len(old['training']['epochs'])} (old), "
              f"{new['training']['best_epoch']} of {len(new['training']['epochs'])} (new); "
              f"per-epoch losses {'identical' if losses_equal else 'DIFFER'}")
        for k in mo:
            same = "identical" if mo[k] == mn.get(k) else f"differs by {mn.get(k, float('nan')) - mo[k]:+.2e}"
            print(f"  test {k:22s} old {mo[k]:.4f}  new {mn.get(k, float('nan')):.4f}  {same}")
        so, sn = old["training"]["median_epoch_seconds"], new["training"]["median_epoch_seconds"]
        print(f"  s/epoch (median) old {so:.3f}  new {sn:.3f}  new/old {sn / so:.3f}; "
              f"peak memory old {old.get('peak_memory_mib', float('nan')):.0f} MiB, new {new.get('peak_memory_mib', float('nan')):.0f} MiB")
    for spec in args.speed:
        olds, news = (side.split(",") for side in spec.split(":"))
        seconds, step_ms = {}, {}
        for name, paths in (("old", olds), ("new", news)):
            epochs = [e for path in paths for e in load(path)["training"]["epochs"]]
            seconds[name] = [e["seconds"] for e in epochs]
            step_ms[name] = [1000.0 / e["steps_per_second"] for e in epochs]
        mo, mn = statistics.median(seconds["old"]), statistics.median(seconds["new"])
        print(f"speed {news[0]} ... ({len(olds)} alternating runs each, {len(seconds['old'])} and {len(seconds['new'])} epochs)")
        print(f"  s/epoch median old {mo:.3f}  new {mn:.3f}  new/old {mn / mo:.3f}; ms/step median old "
              f"{statistics.median(step_ms['old']):.2f}  new {statistics.median(step_ms['new']):.2f}")


if __name__ == "__main__":
    main()
