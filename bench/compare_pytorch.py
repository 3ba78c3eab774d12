#!/usr/bin/env python3
"""Runs the C++ benchmark and the PyTorch reference of SASRec or GRU4Rec on the same data, machine
and thread count, one after the other, and prints quality side by side and speed as ratios.

    /usr/bin/python3 bench/compare_pytorch.py --data ../shared/data/amazon-games.txt --epochs 20
    /usr/bin/python3 bench/compare_pytorch.py --model gru4rec --loss ce --data ../shared/data/amazon-games.txt

The C++ side (build/bench/model_bench) writes the sampled-100 candidates first; the reference
(bench/pytorch/sasrec_reference.py or gru4rec_reference.py) loads them, so both are judged on the
same candidates. Both train the same model (same sizes, loss, optimiser, sampling) for the same
number of epochs. The machine's speed can drift on a shared host, so the C++ side is timed again
after the reference and its seconds per epoch are the median over both of its runs. Results are
printed as a table (and as
Markdown with --markdown FILE); the raw JSON of both runs is kept in --out.
Both sides run with OMP_WAIT_POLICY=passive unless the caller sets it: PyTorch's OpenMP threads
otherwise spin while OpenBLAS's own threads work, which slowed PyTorch's GRU4Rec full-softmax
epoch on a 2-core AVX2 EPYC by far more than it changed this library's (set
OMP_WAIT_POLICY=active to see it on yours). The policy is recorded in --out/environment.json
and printed with the table ("unrecorded" for results from before it was recorded). Only the Python standard library is needed here; the reference itself needs Debian's
python3-torch.
"""
import argparse
import json
import statistics
import os
import platform
import subprocess
import sys
import time


def run(cmd, log_path):
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write("  | " + line)
            log.write(line)
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}; log: {log_path}")
    return time.time() - start


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def torch_blas():
    try:
        out = subprocess.run(["/usr/bin/python3", "-c",
                              "import torch,os;print(torch.__version__);"
                              "print(os.path.realpath('/usr/lib/x86_64-linux-gnu/libblas.so.3'))"],
                             capture_output=True, text=True, timeout=120)
        lines = out.stdout.split()
        return lines[0], lines[1] if len(lines) > 1 else "?"
    except Exception:  # noqa: BLE001 - informational only
        return "?", "?"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("sasrec", "gru4rec"), default="sasrec")
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--loss", choices=("bce", "ce"), default="bce")
    p.add_argument("--block-style", choices=("sasrec", "pre-ln", "post-ln"), default="sasrec", help="SASRec only")
    p.add_argument("--head", choices=("untied", "tied"), default="untied", help="GRU4Rec only")
    p.add_argument("--hidden", type=int, help="hidden size (default: the model's, SASRec 50, GRU4Rec 64)")
    p.add_argument("--beta2", type=float, help="Adam beta2, passed to both sides (default: each side's default for "
                   "the model: 0.98 for SASRec; for GRU4Rec 0.999 is passed)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bench-binary", default=os.path.join("build", "bench", "model_bench"))
    p.add_argument("--reference", help="default: bench/pytorch/<model>_reference.py")
    p.add_argument("--out", default="bench-results", help="folder for logs, JSON and candidates")
    p.add_argument("--markdown", help="also write the table as Markdown here")
    p.add_argument("--reuse", action="store_true", help="re-render from the JSON files already in --out")
    args = p.parse_args()
    if args.reference is None:
        args.reference = os.path.join(os.path.dirname(__file__), "pytorch", f"{args.model}_reference.py")
    if args.beta2 is None and args.model == "gru4rec":
        args.beta2 = 0.999
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # PyTorch's faster setting (see above)

    os.makedirs(args.out, exist_ok=True)
    cpp_json = os.path.join(args.out, "distillrec.json")
    cpp_after_json = os.path.join(args.out, "distillrec_after.json")
    torch_json = os.path.join(args.out, "pytorch.json")
    candidates = os.path.join(args.out, "candidates")
    common = ["--data", args.data, "--epochs", str(args.epochs), "--threads", str(args.threads),
              "--seed", str(args.seed)]
    if args.hidden is not None:
        common += ["--hidden", str(args.hidden)]
    if args.beta2 is not None:
        common += ["--beta2", str(args.beta2)]
    environment_json = os.path.join(args.out, "environment.json")
    if not args.reuse:
        with open(environment_json, "w") as f:  # what the runs below ran under, for --reuse
            json.dump({"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}, f)
        if not os.path.exists(args.bench_binary):
            sys.exit(f"{args.bench_binary} not found: build it with cmake --build build --target model_bench")
        objective = "softmax" if args.loss == "ce" else "bce"
        if args.model == "sasrec":
            cpp_model = ["--block-style", args.block_style]
            style = "original" if args.block_style == "sasrec" else args.block_style
            ref_model = ["--block-style", style]
        else:
            cpp_model = ref_model = ["--head", args.head]
        run([args.bench_binary, "--model", args.model] + common + cpp_model +
            ["--objective", objective, "--candidates-dir", candidates, "--json", cpp_json],
            os.path.join(args.out, "distillrec.log"))
        run(["/usr/bin/python3", args.reference] + common + ref_model +
            ["--loss", args.loss,
             "--candidates-valid", os.path.join(candidates, "valid.npy"),
             "--candidates-test", os.path.join(candidates, "test.npy"), "--json", torch_json],
            os.path.join(args.out, "pytorch.log"))
        # The machine's speed drifts (shared hosts): the C++ side is timed again after the
        # reference, and its seconds per epoch are the median over both runs' epochs.
        run([args.bench_binary, "--model", args.model] + common + cpp_model +
            ["--objective", objective, "--no-speed", "--json", cpp_after_json],
            os.path.join(args.out, "distillrec_after.log"))

    with open(cpp_json) as f:
        cpp = json.load(f)
    if os.path.exists(cpp_after_json):
        with open(cpp_after_json) as f:
            after = json.load(f)
        before_median = cpp["seconds_per_epoch_median"]
        cpp["seconds_per_epoch_median"] = statistics.median(e["seconds"] for e in cpp["epochs"] + after["epochs"])
        print(f"distillrec s/epoch (median): {before_median:.3f} before the reference, "
              f"{after['seconds_per_epoch_median']:.3f} after it, {cpp['seconds_per_epoch_median']:.3f} over both")
    with open(torch_json) as f:
        ref = json.load(f)
    torch_version, blas = torch_blas()

    rows = []
    for split in ("test", "valid"):
        for protocol in ("full", "sampled-100"):
            for metric in ("HR@10", "NDCG@10"):
                a = cpp["metrics"][split][protocol][metric]
                b = ref["metrics"][split][protocol][metric]
                rows.append((f"{split} {protocol} {metric}", f"{a:.4f}", f"{b:.4f}", f"{(a - b) / b * 100:+.1f}%"))
    speed = [
        ("train s/epoch (median)", cpp["seconds_per_epoch_median"], ref["seconds_per_epoch_median"], "lower"),
        ("peak memory MiB", cpp["peak_rss_mib"], ref["peak_rss_mib"], "lower"),
    ]
    if cpp.get("latency_ms") and ref.get("latency_ms"):
        speed.append(("1-user top-10 p50 ms (1 thread)", cpp["latency_ms"]["p50"], ref["latency_ms"]["p50"], "lower"))
        speed.append(("1-user top-10 p90 ms (1 thread)", cpp["latency_ms"]["p90"], ref["latency_ms"]["p90"], "lower"))
        speed.append((f"batch top-10 users/s ({args.threads} threads)", cpp["batch_users_per_second"],
                      ref["batch_users_per_second"], "higher"))
    for name, a, b, better in speed:
        ratio = b / a if better == "lower" else a / b
        rows.append((name, f"{a:.4g}", f"{b:.4g}", f"{ratio:.1f}x better"))

    variant = f"block {args.block_style}" if args.model == "sasrec" else f"head {args.head}"
    machine = cpp.get("machine", {})
    flags = " ".join(machine.get("cpu_flags", [])) or "?"
    wait_policy = "unrecorded"
    if os.path.exists(environment_json):
        with open(environment_json) as f:
            wait_policy = json.load(f).get("OMP_WAIT_POLICY") or "unset"
    header = (f"{'SASRec' if args.model == 'sasrec' else 'GRU4Rec'} on {os.path.basename(args.data)}, {args.epochs} epochs, "
              f"loss {args.loss}, {variant}, {args.threads} threads, OMP_WAIT_POLICY={wait_policy}, seed {args.seed}; CPU: {cpu_model()} ({flags}; "
              f"kernels compiled for {machine.get('kernels_compiled_for', '?')}); torch {torch_version} (BLAS {blas})")
    width = max(len(r[0]) for r in rows)
    print("\n" + header)
    print(f"{'':{width}}  {'distillrec':>12}  {'PyTorch':>12}  {'distillrec vs PyTorch':>22}")
    for r in rows:
        print(f"{r[0]:{width}}  {r[1]:>12}  {r[2]:>12}  {r[3]:>22}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header + "\n\n| | distillrec | PyTorch | distillrec vs PyTorch |\n|---|---:|---:|---:|\n")
            for r in rows:
                f.write(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
