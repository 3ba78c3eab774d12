#!/usr/bin/env python3
"""Median seconds per epoch over several model_bench runs per setting, and the ratio of each
setting to the first: for settings timed in turns (the host's speed drifts, so single runs mislead).

    python3 bench/epoch_medians.py dense='bench/results/lazy_adam_games_speed/sasrec_lazy0_run*.json' \\
        lazy='bench/results/lazy_adam_games_speed/sasrec_lazy1000_run*.json'

Each argument is NAME=GLOB over `model_bench --json` files; every epoch of every run counts.
Only the Python standard library is needed.
"""
import glob
import json
import statistics
import sys


def main(argv):
    if not argv or any("=" not in a for a in argv):
        sys.exit(__doc__)
    first = None
    for arg in argv:
        name, pattern = arg.split("=", 1)
        files = sorted(glob.glob(pattern))
        if not files:
            sys.exit(f"{name}: no file matches {pattern}")
        seconds, last_loss = [], []
        for path in files:
            with open(path) as f:
                run = json.load(f)
            seconds += [e["seconds"] for e in run["epochs"]]
            last_loss.append(run["epochs"][-1]["loss"])
        median = statistics.median(seconds)
        first = first or median
        print(f"{name}: {len(files)} runs, {len(seconds)} epochs, median {median:.3f} s/epoch (x{median / first:.2f}); "
              f"last-epoch loss {statistics.mean(last_loss):.4f}; epochs: {', '.join(f'{s:.2f}' for s in seconds)}")


if __name__ == "__main__":
    main(sys.argv[1:])
