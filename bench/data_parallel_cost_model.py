#!/usr/bin/env python3
"""Cost model of data-parallel training (README "Training on several processes"): compute per
step against the time of the gradient exchange, dense and by item rows, for P processes on a
network, from figures measured on this machine.

  python3 bench/data_parallel_cost_model.py --log ../shared/data/amazon-games.txt \
      --bench bench/results/data_parallel_exchange.json --step-ms 6.2 --adam-ns 1.4 \
      --train-dense-ms 2.55 --train-rows-ms 0.91

Model (per step, every process; weak scaling: each process keeps its batch of `--batch`
examples, the global batch is P x batch):
  compute   = batch x (per-example time) + every parameter's Adam update (replicated, so it does
              not shrink with P): --step-ms is the measured compute of one step of `--batch`
              examples including Adam over the measured model, --adam-ns its Adam cost per value
  allreduce = ring: 2 (P-1) alpha + 2 (P-1)/P x bytes / bandwidth
  dense     = allreduce(all gradients)
  rows      = allreduce(row bits, rows/8 bytes) + allreduce(other gradients + union rows x dim,
              or the whole table when the union covers more than half of it),
              plus the scan of the table for touched rows (one read at the measured speed)
The union of rows a global batch touches is counted on the real log (the model's inputs,
positives and one uniform negative per position, SASRec's BCE) for amazon-games; for a
10-million-item catalogue every draw is taken as a new row (uniform draws over 10M items: the
worst case for the row exchange). The communication does not overlap the backward pass (the
trainer sums once after it), so a step takes compute + exchange.

The network (bandwidth, latency) is assumed, not measured here. With --bench
(data_parallel_exchange's JSON from this machine) the same model is first checked against this
machine: a per-call cost and a cost per byte are fitted to its dense exchanges over shared
memory, and the model's predictions of its row exchanges (and, with --train-*-ms, of the
training run's sums) are printed beside the measured ones.
"""
import argparse
import json
import random
from collections import defaultdict


def ring_allreduce_seconds(nbytes, processes, alpha, bandwidth):
    if processes <= 1:
        return 0.0
    return 2 * (processes - 1) * alpha + 2 * (processes - 1) / processes * nbytes / bandwidth


def read_training_sequences(path):
    users = defaultdict(list)
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                users[int(parts[0])].append(int(parts[1]))
    sequences, num_items = [], 0
    for items in users.values():
        num_items = max(num_items, max(items))
        train = items[:-2] if len(items) >= 3 else items  # leave-one-out
        if len(train) >= 2:
            sequences.append(train)
    return sequences, num_items


def union_rows(sequences, num_items, global_batch, max_length, rng, samples=10):
    """Mean number of distinct item rows one global batch's SASRec BCE step touches."""
    total = 0
    for _ in range(samples):
        batch = rng.sample(sequences, min(global_batch, len(sequences)))
        rows = set()
        for s in batch:
            window = s[-(max_length + 1):]
            rows.update(window[:-1])  # inputs
            rows.update(window[1:])   # positives
            rows.update(rng.randint(1, num_items) for _ in range(len(window) - 1))  # negatives
        total += len(rows)
    return total / samples


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", required=True, help="the interaction log (amazon-games.txt)")
    p.add_argument("--bench", help="data_parallel_exchange --json output from this machine")
    p.add_argument("--step-ms", type=float, required=True, help="measured compute per step and process (ms), Adam included")
    p.add_argument("--adam-ns", type=float, required=True, help="measured Adam update per parameter value (ns)")
    p.add_argument("--batch", type=int, default=64, help="examples per process and step")
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--max-length", type=int, default=50)
    p.add_argument("--other-values", type=int, default=28872, help="gradient values outside the item table")
    p.add_argument("--gbits", type=float, default=25.0, help="network bandwidth per process (Gbit/s)")
    p.add_argument("--alpha-us", type=float, default=10.0, help="network latency per message (us)")
    p.add_argument("--processes", default="2,8,64,256")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scan-gbs", type=float, help="the scan for touched rows, GB/s (default: --bench's measurement)")
    p.add_argument("--train-dense-ms", type=float, help="measured summing time per step, dense (train's JSON)")
    p.add_argument("--train-rows-ms", type=float, help="measured summing time per step, by rows")
    args = p.parse_args()
    rng = random.Random(args.seed)

    sequences, num_items = read_training_sequences(args.log)
    if args.bench:
        with open(args.bench) as f:
            bench = json.load(f)
        sizes = bench["sizes"]
        procs = bench["processes"]
        dim = bench["dim"]
        scan = bench["scan_gb_per_s"] * 1e9
        # dense exchange time = a + b x bytes, least squares of the relative error over the sizes
        # (the sizes up to 8 MB, which stay in this machine's caches like amazon-games' 4.9 MB; beyond,
        # the shared-memory copies run at memory speed and the line underestimates them)
        fitted = [s for s in sizes if s["dense"]["bytes"] <= 8e6]
        xs = [s["dense"]["bytes"] for s in fitted]
        ys = [s["dense"]["seconds"]["p50"] for s in fitted]
        # minimise sum ((a + b x - y) / y)^2: normal equations of the weighted problem
        w = [1 / y ** 2 for y in ys]
        sw, sx, sy = sum(w), sum(wi * x for wi, x in zip(w, xs)), sum(wi * y for wi, y in zip(w, ys))
        sxx, sxy = sum(wi * x * x for wi, x in zip(w, xs)), sum(wi * x * y for wi, x, y in zip(w, xs, ys))
        b = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
        a = (sy - b * sx) / sw
        print(f"this machine ({bench['machine']['cpu']}, {procs} processes over shared memory): a sum takes {a * 1e6:.0f} us + "
              f"{b * 1e9:.3f} ns per byte (fitted to the {len(xs)} dense exchanges up to 8 MB); the scan for touched rows reads "
              f"{bench['scan_gb_per_s']:.1f} GB/s")

        def rows_model(table_rows, rows_bytes):  # OR call + sum call + the scan of the table
            return 2 * a + b * rows_bytes + table_rows * dim * 4 / scan

        print(f"{'rows':>9} {'union':>8} {'dense ms':>9} {'model':>7} {'rows ms':>8} {'model':>7}")
        for s in sizes:
            print(f"{s['rows']:>9} {s['union_rows']:>8.0f} {s['dense']['seconds']['p50'] * 1e3:>9.3f} "
                  f"{(a + b * s['dense']['bytes']) * 1e3:>7.3f} {s['sparse']['seconds']['p50'] * 1e3:>8.3f} "
                  f"{rows_model(s['rows'], s['sparse']['bytes']) * 1e3:>7.3f}")
        if args.train_dense_ms and args.train_rows_ms:
            dense_bytes = 4 * (args.other_values + (num_items + 1) * args.dim + 2)
            union = union_rows(sequences, num_items, 2 * args.batch, args.max_length, rng, samples=50)
            rows_bytes = 4 * (args.other_values + union * args.dim + 2) + (num_items + 64) // 64 * 8
            print(f"training on amazon-games, 2 processes, per step: dense {args.train_dense_ms:.2f} ms measured, "
                  f"{(a + b * dense_bytes) * 1e3:.2f} ms modelled ({dense_bytes / 1e6:.2f} MB); rows {args.train_rows_ms:.2f} ms measured, "
                  f"{rows_model(num_items + 1, rows_bytes) * 1e3:.2f} ms modelled ({rows_bytes / 1e6:.2f} MB, {union:.0f} rows); "
                  f"the measured times include waiting for the slower process")
        print()

    alpha = args.alpha_us * 1e-6
    bandwidth = args.gbits * 1e9 / 8
    if args.scan_gbs is None:
        if not args.bench:
            p.error("--scan-gbs or --bench (which holds the measured scan speed) is needed")
        args.scan_gbs = bench["scan_gb_per_s"]
    scan_bw = args.scan_gbs * 1e9
    games_values = args.other_values + (num_items + 1) * args.dim
    # the measured step (summing excluded) holds the examples, Adam over every value and the scan
    # of the games table for touched rows
    per_example_ms = (args.step_ms - games_values * args.adam_ns * 1e-6 - (num_items + 1) * args.dim * 4 / scan_bw * 1e3) / args.batch
    print(f"model: {args.batch} examples per process and step, {per_example_ms:.4f} ms each; Adam {args.adam_ns} ns per value "
          f"and, for rows, the scan of the table at {args.scan_gbs:g} GB/s on every process; ring allreduce at {args.gbits:g} Gbit/s, "
          f"{args.alpha_us:g} us per message (assumed, not fitted)")
    print(f"{'catalogue':>10} {'P':>4} {'global':>7} {'steps/ep':>8} {'union rows':>10} {'dense MB':>9} {'rows MB':>8} "
          f"{'compute ms':>10} {'scan ms':>8} {'dense ms':>9} {'rows ms':>8} {'eff dense':>9} {'eff rows':>8} {'ex/s dense':>10} "
          f"{'ex/s rows':>10}")
    for name, items in (("games", num_items), ("10M", 10_000_000)):
        values = args.other_values + (items + 1) * args.dim
        compute = args.batch * per_example_ms * 1e-3 + values * args.adam_ns * 1e-9  # without any exchange
        scan = (items + 1) * args.dim * 4 / scan_bw  # the row exchange's scan for touched rows
        for processes in (int(x) for x in args.processes.split(",")):
            global_batch = processes * args.batch
            if name == "games":
                union = union_rows(sequences, num_items, global_batch, args.max_length, rng)
            else:
                mean_positions = sum(min(len(s) - 1, args.max_length) for s in sequences) / len(sequences)
                union = min(items, 3 * mean_positions * global_batch)  # every draw a new row
            dense_bytes = 4 * values
            sent_rows = items + 1 if 2 * union > items + 1 else union  # over half the table: it goes whole
            rows_bytes = 4 * (args.other_values + sent_rows * args.dim)
            dense_s = ring_allreduce_seconds(dense_bytes, processes, alpha, bandwidth)
            rows_s = ring_allreduce_seconds((items + 1) / 8, processes, alpha, bandwidth) + \
                ring_allreduce_seconds(rows_bytes, processes, alpha, bandwidth)
            steps = -(-len(sequences) // global_batch) if name == "games" else 0
            # efficiency: the step without any exchange over the step with it (and the scan)
            print(f"{name:>10} {processes:>4} {global_batch:>7} {steps if steps else '-':>8} {union:>10.0f} "
                  f"{dense_bytes / 1e6:>9.1f} {rows_bytes / 1e6:>8.2f} {compute * 1e3:>10.2f} {scan * 1e3:>8.2f} {dense_s * 1e3:>9.2f} "
                  f"{rows_s * 1e3:>8.2f} {compute / (compute + dense_s):>9.2f} {compute / (compute + scan + rows_s):>8.2f} "
                  f"{global_batch / (compute + dense_s):>10.0f} {global_batch / (compute + scan + rows_s):>10.0f}")

if __name__ == "__main__":
    main()
