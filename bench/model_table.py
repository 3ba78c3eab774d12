#!/usr/bin/env python3
"""Trains several models on the same log with build/examples/train, one after the other, and
renders their test metrics side by side (full ranking: HR@10, NDCG@10, MRR), with the best
epoch, the median seconds per epoch and the popularity baseline.

    /usr/bin/python3 bench/model_table.py --data ../shared/data/amazon-games.txt \\
        --out bench/results/models_games --run sasrec:bce sasrec:softmax gru4rec:bce gru4rec:softmax

Each run is MODEL:OBJECTIVE[:extra flags separated by commas], for example
gru4rec:softmax:--head,tied. Every run validates every 5 epochs with patience 5 (the schedule of
the SASRec results in the README), keeps the best validation epoch and tests it
once. Logs and JSON of every run stay in --out; --reuse re-renders from them. Only the Python
standard library is needed.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def run(cmd, log_path):
    print("$ " + " ".join(cmd), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if line.startswith("epoch") or line.startswith("results") or "test" in line:
                sys.stdout.write("  | " + line)
            log.write(line)
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}; log: {log_path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--run", nargs="+", required=True, help="MODEL:OBJECTIVE[:flag,flag...]")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--binary", default=os.path.join("build", "examples", "train"))
    p.add_argument("--out", default="bench-results/models")
    p.add_argument("--markdown", help="also write the table as Markdown here")
    p.add_argument("--reuse", action="store_true", help="re-render from the JSON files already in --out")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    rows, popularity = [], None
    for spec in args.run:
        parts = spec.split(":")
        model, objective = parts[0], parts[1]
        extra = parts[2].split(",") if len(parts) > 2 and parts[2] else []
        name = "_".join([model, objective] + [e.strip("-").replace(" ", "") for e in extra])
        json_path = os.path.join(args.out, name + ".json")
        if not args.reuse:
            schedule = ["--eval-every", "5", "--patience", "5"]
            start = time.time()
            run([args.binary, "--model", model, "--objective", objective, "--data", args.data, "--epochs", str(args.epochs),
                 "--threads", str(args.threads), "--no-sampled", "--checkpoint", "", "--json", json_path] + schedule + extra,
                os.path.join(args.out, name + ".log"))
            print(f"  ({time.time() - start:.0f} s)")
        with open(json_path) as f:
            result = json.load(f)
        test = next(r for r in result["results"] if r["split"] == "test" and r["protocol"] == "full" and "baseline" not in r["model"])
        pop = next(r for r in result["results"] if "baseline" in r["model"])
        popularity = pop["metrics"]
        training = result["training"]
        rows.append((spec, training["best_epoch"], len(training["epochs"]), training["median_epoch_seconds"], test["metrics"]))

    header = f"test split of {os.path.basename(args.data)}, full ranking (all items, history masked), model of the best validation epoch"
    lines = [header, "", "| model | objective | best epoch | s/epoch | HR@10 | NDCG@10 | MRR |", "|---|---|---:|---:|---:|---:|---:|"]
    for spec, best, ran, seconds, m in rows:
        parts = spec.split(":")
        label = parts[0] + (" " + parts[2].replace(",", " ") if len(parts) > 2 else "")
        lines.append(f"| {label} | {parts[1]} | {best} of {ran} | {seconds:.2f} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} | {m['MRR']:.4f} |")
    lines.append(f"| popularity | | | | {popularity['HR@10']:.4f} | {popularity['NDCG@10']:.4f} | {popularity['MRR']:.4f} |")
    print("\n" + "\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
