#!/usr/bin/python3
"""The PyTorch reference of serving a distillrec SASRec checkpoint, for bench/serve --torch.

The checkpoint (safetensors, the library's tensor names) is loaded into bench/pytorch/
sasrec_reference.py's SASRec, and a top-10 is computed as a PyTorch user would serve it:
left-padded window of the newest max_length items -> user vector -> scores of every item ->
history items masked -> torch.topk. Two forms of the same module are timed side by side:

    eager        the nn.Module under torch.inference_mode()
    torchscript  torch.jit.trace of the same top-k module, frozen (torch.jit.freeze), the form a
                 service would deploy without Python

Measured, as bench/serve measures the library: one user's top-10 on one thread, p50 and p99,
for histories cut to 10, 50 and 200 items (users with at least that many, their newest items,
cycled over --queries calls; the two forms take turns on every query), and batched top-10
throughput over every history in batches of --batch users on 1 and --threads threads.

    /usr/bin/python3 bench/pytorch/serve_reference.py --checkpoint sasrec.safetensors \\
        --histories histories.txt --json torch.json

--histories: one history per line, item ids separated by spaces, oldest first.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sasrec_reference import DISTILLREC_NAMES, SASRec  # noqa: E402

DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}


def read_safetensors(path):
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            sys.exit(f"{path}: tensor {name} has dtype {info['dtype']}, expected F32, F64 or F16")
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors, metadata


def load_model(path):
    tensors, metadata = read_safetensors(path)
    if metadata.get("model") != "sasrec":
        sys.exit(f"{path}: a {metadata.get('model')} checkpoint; the PyTorch serving reference implements SASRec")
    c = json.loads(metadata["config"])
    if c.get("activation", "relu") != "relu" or c.get("ffn_size", c["hidden_size"]) != c["hidden_size"] \
            or c.get("head", "tied") != "tied":
        sys.exit(f"{path}: the reference implements SASRec with ReLU, ffn_size = hidden_size and a tied head")
    style = "original" if c["block_style"] == "sasrec" else c["block_style"]
    model = SASRec(c["num_items"], c["max_length"], c["hidden_size"], c["num_blocks"], c["num_heads"], 0.0, style,
                   bool(c["attention_projection"]))
    state = {}
    for key, value in model.state_dict().items():
        name = key
        for a, b in DISTILLREC_NAMES:
            name = name.replace(a, b)
        if name not in tensors:
            sys.exit(f"{path}: no tensor {name}")
        state[key] = torch.from_numpy(tensors[name].astype(np.float32)).reshape(value.shape)
    model.load_state_dict(state)
    model.eval()
    return model, c


class TopK(torch.nn.Module):
    """windows [B, L] left-padded -> (scores, items) of the top k, window items masked."""

    def __init__(self, model, k):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, windows):
        scores = self.model.all_scores(self.model.user_vectors(windows))
        scores = scores.scatter(1, windows, -math.inf)  # window items; padding hits column 0
        scores[:, 0] = -math.inf
        values, items = torch.topk(scores, self.k, dim=1)
        return values, items


def windows_of(histories, max_length):
    out = np.zeros((len(histories), max_length), dtype=np.int64)
    for row, h in enumerate(histories):
        h = h[-max_length:]
        out[row, max_length - len(h):] = h
    return torch.from_numpy(out)


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--histories", required=True, help="one history per line, item ids, oldest first")
    p.add_argument("--queries", type=int, default=2000, help="single-user queries per history length")
    p.add_argument("--batch", type=int, default=128, help="users per batch in the throughput runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json")
    args = p.parse_args(argv)

    model, config = load_model(args.checkpoint)
    L = config["max_length"]
    with open(args.histories) as f:
        histories = [[int(t) for t in line.split()] for line in f if line.strip()]
    if not histories:
        sys.exit(f"{args.histories}: no histories")
    eager = TopK(model, args.k)
    with torch.inference_mode():
        example = windows_of(histories[:1], L)
        traced = torch.jit.freeze(torch.jit.trace(TopK(model, args.k).eval(), example))
    forms = {"eager": eager, "torchscript": traced}
    blas = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")  # Debian's BLAS alternative
    print(f"PyTorch {torch.__version__}, BLAS {blas}", flush=True)
    result = {"torch": torch.__version__, "blas": blas, "latency_ms": {}, "users_per_second": {}}

    # Agreement of the two forms (and a warm-up).
    with torch.inference_mode():
        w = windows_of(histories[:64], L)
        if not torch.equal(eager(w)[1], traced(w)[1]):
            print("warning: eager and TorchScript top-k differ", flush=True)

    torch.set_num_threads(1)
    print(f"\none user's top-{args.k}, 1 thread ({args.queries} queries per cell), ms:", flush=True)
    for length in (10, 50, 200):
        pool = [h[-length:] for h in histories if len(h) >= length]
        if not pool:
            continue
        times = {name: [] for name in forms}
        with torch.inference_mode():
            prepared = [windows_of([h], L) for h in pool]
            for q in range(-50, args.queries):
                window = prepared[(q + 50) % len(prepared)]
                for name, form in forms.items():
                    t0 = time.perf_counter()
                    form(window)
                    ms = (time.perf_counter() - t0) * 1e3
                    if q >= 0:
                        times[name].append(ms)
        cells = {name: {"p50": percentile(t, 50), "p99": percentile(t, 99), "users": len(pool)} for name, t in times.items()}
        for name, cell in cells.items():
            result["latency_ms"].setdefault(name, {})[str(length)] = cell
        print(f"{length:<8} " + "  ".join(f"{name} p50 {c['p50']:.4f} p99 {c['p99']:.4f}" for name, c in cells.items()), flush=True)

    print(f"\nbatch top-{args.k} ({len(histories)} users, batches of {args.batch}), users/s:", flush=True)
    all_windows = windows_of(histories, L)
    n = all_windows.shape[0]
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        line = []
        for name, form in forms.items():
            with torch.inference_mode():
                form(all_windows[:args.batch])
                rates = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    for b0 in range(0, n, args.batch):
                        form(all_windows[b0:b0 + args.batch])
                    rates.append(n / (time.perf_counter() - t0))
            rate = float(np.median(rates))
            result["users_per_second"].setdefault(name, {})[str(threads)] = rate
            line.append(f"{name} {rate:.0f}")
        print(f"{threads} thread(s): " + "  ".join(line), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
