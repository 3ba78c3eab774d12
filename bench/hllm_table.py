#!/usr/bin/env python3
"""Tables of examples/train_hllm runs (their --json files): warm-item test metrics as mean ± std
over the runs (seeds), parameters, seconds per epoch and top-10 latency; and, for runs with
--cold-items, the cold-start metrics.

    /usr/bin/python3 bench/hllm_table.py bench/results/hllm_scientific/warm_seed{42,43,44}.json \
        --seconds-from bench/results/hllm_scientific/warm_seed42.json
    /usr/bin/python3 bench/hllm_table.py --part cold bench/results/hllm_scientific/cold_seed42.json
"""
import argparse
import json
import statistics
import sys


def fmt(values, digits=4):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="train_hllm --json files (one per seed)")
    parser.add_argument("--part", choices=["warm", "cold"], default="warm")
    parser.add_argument("--seconds-from", help="take seconds per epoch from this run only (one that had the machine to itself)")
    args = parser.parse_args()
    runs = [json.load(open(path)) for path in args.runs]
    timed = [json.load(open(args.seconds_from))] if args.seconds_from else runs
    names = []
    for run in runs:
        for name in run["results"].get(args.part, {}):
            if name not in names:
                names.append(name)
    if not names:
        sys.exit(f"no '{args.part}' results in {args.runs}")
    machine = runs[0].get("machine", {})
    print(f"{len(runs)} run(s), seeds {', '.join(str(r['training']['seed']) for r in runs)}; "
          f"machine: {machine.get('cpu', '?')}, CPU flags {' '.join(machine.get('cpu_flags', []))}\n")
    header = "| model | HR@10 | NDCG@10 | MRR | parameters | s/epoch | top-10 ms/user (1 thread) |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        rows = [r["results"][args.part][name] for r in runs if name in r["results"].get(args.part, {})]
        metric = {m: [row[m] for row in rows] for m in ("HR@10", "NDCG@10", "MRR")}
        latency = [r["results"]["warm"][name]["top10_ms_one_thread"] for r in runs
                   if "top10_ms_one_thread" in r["results"].get("warm", {}).get(name, {})]
        if name == "HLLM":
            seconds = [r["throughput"]["seconds_per_epoch"] for r in timed]
        else:
            seconds = [r["baselines"][name]["seconds_per_epoch"] for r in timed if name in r.get("baselines", {})]
        params = runs[0].get("parameters", {}).get(name, 0)
        print(f"| {name} | {fmt(metric['HR@10'])} | {fmt(metric['NDCG@10'])} | {fmt(metric['MRR'])} | "
              f"{params:,} | {fmt(seconds, 2)} | {fmt(latency, 3)} |")


if __name__ == "__main__":
    main()
