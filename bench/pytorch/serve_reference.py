#!/usr/bin/python3
"""The PyTorch reference of serving a distillrec SASRec or LLMRec checkpoint, for bench/serve --torch.

The checkpoint (safetensors, the library's tensor names) is loaded into a PyTorch module (SASRec:
bench/pytorch/sasrec_reference.py's; LLMRec, e.g. a distilled student: LLMRecReference below,
LLaMA-style blocks as models/llm_rec.hpp defines them), and a top-10 is computed as a PyTorch
user would serve it: a padded window of the newest max_length items (SASRec left-padded, its
positions count from the newest item; LLMRec right-padded, its rotary positions count from the
oldest, the causal mask keeping padding out) -> user vector -> scores of every item -> window
items masked -> torch.topk. Two forms of the same module are timed side by side:

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
--expect: the library's fp32 top-10 of the first histories (one line each, best first, for the
newest max_length items of the history): the reference's agreement with it is printed and
written, so the two sides are known to compute the same model.
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


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class LLMRecReference(torch.nn.Module):
    """distillrec's LLMRec at inference (models/llm_rec.hpp): item table -> input adapter ->
    pre-norm LLaMA blocks (RMSNorm, rotary positions from the oldest item, grouped-query
    attention without biases, output projection, SwiGLU) -> final RMSNorm at the newest item ->
    output adapter -> scores against the (tied) item table."""

    def __init__(self, tensors, c):
        super().__init__()
        self.heads, self.kv_heads = c["num_heads"], c.get("num_kv_heads") or c["num_heads"]
        self.hidden, self.eps, self.layers = c["hidden_size"], c["rms_norm_eps"], c["num_layers"]
        self.dh = self.hidden // self.heads
        t = {name: torch.from_numpy(np.array(v, dtype=np.float32)) for name, v in tensors.items()}
        for name, value in t.items():
            self.register_buffer(name.replace(".", "_"), value.reshape(value.shape[0], -1) if value.dim() > 1 else value)
        L = c["max_length"]
        freqs = c["rope_theta"] ** (-torch.arange(0, self.dh // 2, dtype=torch.float64) * 2.0 / self.dh)
        angles = torch.arange(L, dtype=torch.float64)[:, None] * freqs[None, :]
        self.register_buffer("cos", angles.cos().float()[None, :, None, :])
        self.register_buffer("sin", angles.sin().float()[None, :, None, :])
        self.register_buffer("causal", torch.ones(L, L, dtype=torch.bool).tril())

    def w(self, name):
        return getattr(self, name.replace(".", "_"))

    def rotate(self, x):  # [B, L, heads, dh], HF LLaMA's rotate-half
        h = self.dh // 2
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * self.cos - x2 * self.sin, x2 * self.cos + x1 * self.sin], dim=-1)

    def user_vectors(self, windows, lengths):
        B, L = windows.shape
        x = self.w("item_embedding.weight")[windows] @ self.w("input_adapter.weight").T + self.w("input_adapter.bias").reshape(-1)
        group = self.heads // self.kv_heads
        for b in range(self.layers):
            p = f"blocks.{b}."
            a = rms_norm(x, self.w(p + "attention_norm.weight").reshape(-1), self.eps)
            q = self.rotate((a @ self.w(p + "attention.query.weight").T).view(B, L, self.heads, self.dh))
            k = self.rotate((a @ self.w(p + "attention.key.weight").T).view(B, L, self.kv_heads, self.dh))
            v = (a @ self.w(p + "attention.value.weight").T).view(B, L, self.kv_heads, self.dh)
            if group > 1:
                k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
            scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(self.dh)
            probs = scores.masked_fill(~self.causal, float("-inf")).softmax(-1)
            ctx = torch.einsum("bhij,bjhd->bihd", probs, v).reshape(B, L, self.hidden)
            h = x + ctx @ self.w(p + "attention.output.weight").T
            r = rms_norm(h, self.w(p + "ffn_norm.weight").reshape(-1), self.eps)
            gate, up = r @ self.w(p + "ffn.gate.weight").T, r @ self.w(p + "ffn.up.weight").T
            x = h + (torch.nn.functional.silu(gate) * up) @ self.w(p + "ffn.down.weight").T
        last = x[torch.arange(B), lengths - 1]
        return rms_norm(last, self.w("final_norm.weight").reshape(-1), self.eps) @ self.w("output_adapter.weight").T

    def all_scores(self, user_vecs):
        return user_vecs @ self.w("item_embedding.weight").T


def load_model(path):
    tensors, metadata = read_safetensors(path)
    kind = metadata.get("model")
    if kind == "llm_rec":
        c = json.loads(metadata["config"])
        return LLMRecReference(tensors, c).eval(), c, kind
    if kind != "sasrec":
        sys.exit(f"{path}: a {kind} checkpoint; the PyTorch serving reference implements SASRec and LLMRec")
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
    return model, c, kind


class TopK(torch.nn.Module):
    """(windows [B, L], lengths [B]) -> (scores, items) of the top k, window items masked."""

    def __init__(self, model, k, kind):
        super().__init__()
        self.model, self.k, self.llm = model, k, kind == "llm_rec"

    def forward(self, windows, lengths):
        users = self.model.user_vectors(windows, lengths) if self.llm else self.model.user_vectors(windows)
        scores = self.model.all_scores(users)
        scores = scores.scatter(1, windows, -math.inf)  # window items; padding hits column 0
        scores[:, 0] = -math.inf
        values, items = torch.topk(scores, self.k, dim=1)
        return values, items


def windows_of(histories, max_length, right_padded=False):
    """The newest max_length items of each history, padded with 0 to max_length, and their lengths."""
    out = np.zeros((len(histories), max_length), dtype=np.int64)
    lengths = np.zeros(len(histories), dtype=np.int64)
    for row, h in enumerate(histories):
        h = h[-max_length:]
        lengths[row] = len(h)
        if right_padded:
            out[row, :len(h)] = h
        else:
            out[row, max_length - len(h):] = h
    return torch.from_numpy(out), torch.from_numpy(lengths)


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
    p.add_argument("--expect", help="the library's fp32 top-k of the first histories, one line each")
    p.add_argument("--json")
    args = p.parse_args(argv)

    model, config, kind = load_model(args.checkpoint)
    L = config["max_length"]
    right = kind == "llm_rec"
    with open(args.histories) as f:
        histories = [[int(t) for t in line.split()] for line in f if line.strip()]
    if not histories:
        sys.exit(f"{args.histories}: no histories")
    eager = TopK(model, args.k, kind)
    with torch.inference_mode():
        example = windows_of(histories[:1], L, right)
        traced = torch.jit.freeze(torch.jit.trace(TopK(model, args.k, kind).eval(), example))
    forms = {"eager": eager, "torchscript": traced}
    blas = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")  # Debian's BLAS alternative
    print(f"PyTorch {torch.__version__}, BLAS {blas}, model {kind}", flush=True)
    result = {"torch": torch.__version__, "blas": blas, "model": kind, "latency_ms": {}, "users_per_second": {}}

    # Agreement of the two forms (and a warm-up).
    with torch.inference_mode():
        w = windows_of(histories[:64], L, right)
        if not torch.equal(eager(*w)[1], traced(*w)[1]):
            print("warning: eager and TorchScript top-k differ", flush=True)
        if args.expect:  # the same model as the library's: top-k agreement with its fp32 results
            with open(args.expect) as f:
                expected = [[int(t) for t in line.split()] for line in f if line.strip()]
            got = eager(*windows_of(histories[:len(expected)], L, right))[1].tolist()
            overlap = float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(expected, got)]))
            result["top_k_overlap_with_library"] = overlap
            print(f"top-{args.k} overlap with the library's fp32 results ({len(expected)} users): {overlap:.4f}", flush=True)

    torch.set_num_threads(1)
    print(f"\none user's top-{args.k}, 1 thread ({args.queries} queries per cell), ms:", flush=True)
    for length in (10, 50, 200):
        pool = [h[-length:] for h in histories if len(h) >= length]
        if not pool:
            continue
        times = {name: [] for name in forms}
        with torch.inference_mode():
            prepared = [windows_of([h], L, right) for h in pool]
            for q in range(-50, args.queries):
                window = prepared[(q + 50) % len(prepared)]
                for name, form in forms.items():
                    t0 = time.perf_counter()
                    form(*window)
                    ms = (time.perf_counter() - t0) * 1e3
                    if q >= 0:
                        times[name].append(ms)
        cells = {name: {"p50": percentile(t, 50), "p99": percentile(t, 99), "users": len(pool)} for name, t in times.items()}
        for name, cell in cells.items():
            result["latency_ms"].setdefault(name, {})[str(length)] = cell
        print(f"{length:<8} " + "  ".join(f"{name} p50 {c['p50']:.4f} p99 {c['p99']:.4f}" for name, c in cells.items()), flush=True)

    print(f"\nbatch top-{args.k} ({len(histories)} users, batches of {args.batch}), users/s:", flush=True)
    all_windows, all_lengths = windows_of(histories, L, right)
    n = all_windows.shape[0]
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        line = []
        for name, form in forms.items():
            with torch.inference_mode():
                form(all_windows[:args.batch], all_lengths[:args.batch])
                rates = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    for b0 in range(0, n, args.batch):
                        form(all_windows[b0:b0 + args.batch], all_lengths[b0:b0 + args.batch])
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
