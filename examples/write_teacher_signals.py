#!/usr/bin/env python3
"""Writes a teacher's signals in distillrec's teacher-signal schema, from a PyTorch model: its
hidden states (SLMRec), its top-K rankings and its item embeddings (DLLM2Rec).

    /usr/bin/python3 examples/write_teacher_signals.py --checkpoint teacher.safetensors \
        --data ../shared/data/amazon-games.txt --layers 4,8 --out signals.safetensors
    distill_slmrec --data ../shared/data/amazon-games.txt --teacher-signals signals.safetensors \
        --teacher-layers 8 --student-layers 2 --blocks 2

    /usr/bin/python3 examples/write_teacher_signals.py --checkpoint teacher.safetensors \
        --data ../shared/data/amazon-games.txt --ranking 50 --item-embeddings --out ranking.safetensors
    distill_dllm2rec --data ../shared/data/amazon-games.txt --teacher-signals ranking.safetensors

The model here is a PyTorch port of distillrec's LLMRec (models/llm_rec.hpp: item table, input
adapter, pre-norm LLaMA blocks with RMSNorm, rotary positions, SwiGLU and grouped-query
attention, final RMSNorm, output adapter) that loads a distillrec llm_rec checkpoint; replace
it with your own teacher, keeping `hidden_states()`: for each window, the states at the hidden
indices asked for (0 = block input, k = after layer k, the last = after the final norm).

What the file must hold (distill/teacher.hpp documents it; distillrec validates all of it):
  example_ids    I64 [E]        the user id as written in the log file, one example per user
                                with at least 2 training items
  hidden_states  F32 [R, B, H]  B layers, hidden size H; "last": R = E, the state at the newest
                                item of the window; "all": every window position, oldest first
  lengths        I64 [E]        window lengths ("all" only)
  last_items     I64 [E]        the newest window item as written in the log (lets distillrec
                                catch rows that belong to other windows)
  __metadata__   format "distillrec-teacher-signals", version "1", positions, layers (JSON list)
With --ranking K (distill/ranking_signals.hpp documents it):
  topk_items     I64 [E, K]     the teacher's K best items for each example, best first, as ids of
                                the log file (the window's history is not masked)
  topk_scores    F32 [E, K]     their scores; __metadata__ "score_order": "higher-is-better"
With --item-embeddings:
  item_embeddings F32 [N, D]    the teacher's item table (what it scores items with)
  item_ids       I64 [N]        the log file's id of every row
A user's window is its training sequence without its last item, cut to the newest max_length
items; the training sequence is the user's log without its last two items (leave-one-out).

Needs numpy and torch (Debian: python3-torch); no other package.
"""
import argparse
import json
import math
import struct
import sys
from collections import defaultdict

import numpy as np
import torch

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors, meta


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[array.dtype]
        blob = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)
    import os
    os.replace(path + ".tmp", path)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x, positions, theta):
    """HF LLaMA's rotate-half rotary embedding; x [len, heads, d]."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2.0 / d)
    angles = positions[:, None].double() * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype)[:, None, :], angles.sin().to(x.dtype)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class LLMRec(torch.nn.Module):
    """distillrec's LLMRec at inference, weights from its checkpoint."""

    def __init__(self, tensors, config):
        super().__init__()
        self.c = config
        self.w = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()}

    def hidden_states(self, items):
        """items: LongTensor [len] (dense ids 1..N). Returns the list of L+1 states [len, hidden]."""
        c, w = self.c, self.w
        heads, kv_heads, eps = c["num_heads"], c["num_kv_heads"], c["rms_norm_eps"]
        hidden = c["hidden_size"]
        dh = hidden // heads
        n = items.shape[0]
        pos = torch.arange(n)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        x = w["item_embedding.weight"][items] @ w["input_adapter.weight"].T + w["input_adapter.bias"].reshape(-1)
        states = [x]
        for b in range(c["num_layers"]):
            p = f"blocks.{b}."
            q_in = rms_norm(x, w[p + "attention_norm.weight"].reshape(-1), eps)
            q = rotate((q_in @ w[p + "attention.query.weight"].T).view(n, heads, dh), pos, c["rope_theta"])
            k = rotate((q_in @ w[p + "attention.key.weight"].T).view(n, kv_heads, dh), pos, c["rope_theta"])
            v = (q_in @ w[p + "attention.value.weight"].T).view(n, kv_heads, dh)
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
            scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(dh)
            probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            ctx = torch.einsum("hij,jhd->ihd", probs, v).reshape(n, hidden)
            h = x + ctx @ w[p + "attention.output.weight"].T
            r = rms_norm(h, w[p + "ffn_norm.weight"].reshape(-1), eps)
            gate, up = r @ w[p + "ffn.gate.weight"].T, r @ w[p + "ffn.up.weight"].T
            x = h + (torch.nn.functional.silu(gate) * up) @ w[p + "ffn.down.weight"].T
            states.append(x)
        states[-1] = rms_norm(x, w["final_norm.weight"].reshape(-1), eps)
        return states


def read_log(path):
    """SASRec text format: 'user item' per line, chronological per user. Dense ids as distillrec
    assigns them: ascending raw ids, items 1..N, users 0..U-1."""
    users, items = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                sys.exit(f"error: {path}:{number}: expected 'user item'")
            users.append(int(fields[0]))
            items.append(int(fields[1]))
    raw_users, raw_items = sorted(set(users)), sorted(set(items))
    item_index = {raw: i + 1 for i, raw in enumerate(raw_items)}
    sequences = defaultdict(list)
    for u, i in zip(users, items):
        sequences[u].append(item_index[i])
    return raw_users, [0] + raw_items, sequences


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="distillrec llm_rec checkpoint (safetensors)")
    p.add_argument("--data", required=True, help="interaction log, SASRec text format")
    p.add_argument("--layers", help="teacher hidden indices, comma-separated (e.g. 4,8): write hidden states")
    p.add_argument("--ranking", type=int, metavar="K", help="write each example's top-K items and scores")
    p.add_argument("--item-embeddings", action="store_true", help="write the teacher's item table")
    p.add_argument("--positions", choices=("last", "all"), default="last")
    p.add_argument("--max-length", type=int, default=None, help="window length (default: the checkpoint's max_length)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    tensors, meta = read_safetensors(args.checkpoint)
    if meta.get("model") != "llm_rec":
        sys.exit(f"error: {args.checkpoint}: not an llm_rec checkpoint (model {meta.get('model')!r})")
    config = json.loads(meta["config"])
    if not args.layers and not args.ranking and not args.item_embeddings:
        sys.exit("error: nothing to write: give --layers, --ranking K and/or --item-embeddings")
    if args.ranking is not None and not 1 <= args.ranking <= config["num_items"]:
        sys.exit(f"error: --ranking {args.ranking} must be in 1..{config['num_items']} (the items)")
    layers = [int(x) for x in args.layers.split(",")] if args.layers else []
    if any(k < 0 or k > config["num_layers"] for k in layers):
        sys.exit(f"error: layers {layers} outside 0..{config['num_layers']}")
    max_length = args.max_length or config["max_length"]
    model = LLMRec(tensors, config)
    raw_users, raw_items, sequences = read_log(args.data)

    ids, lengths, last_items, rows, top_items, top_scores = [], [], [], [], [], []
    table = model.w["item_embedding.weight"][1:]  # [N, item_dim]: row j scores item j + 1
    raw_item_ids = np.array(raw_items, dtype=np.int64)
    with torch.no_grad():
        for done, user in enumerate(raw_users):
            seq = sequences[user]
            train = seq[:-2] if len(seq) >= 3 else seq
            if len(train) < 2:
                continue
            window = train[:-1][-max_length:]
            states = model.hidden_states(torch.tensor(window, dtype=torch.long))
            if layers:
                stacked = torch.stack([states[k] for k in layers], dim=1)  # [len, B, H]
                rows.append((stacked[-1:] if args.positions == "last" else stacked).numpy())
            if args.ranking:
                user_vector = states[-1][-1] @ model.w["output_adapter.weight"].T  # [item_dim]
                best = torch.topk(table @ user_vector.reshape(-1), args.ranking)
                top_items.append(raw_item_ids[best.indices.numpy() + 1])
                top_scores.append(best.values.numpy())
            ids.append(user)
            lengths.append(len(window))
            last_items.append(raw_items[window[-1]])
            if (done + 1) % 5000 == 0:
                print(f"{done + 1}/{len(raw_users)} users", flush=True)
    out = {"example_ids": np.array(ids, dtype=np.int64)}
    metadata = {"format": "distillrec-teacher-signals", "version": "1"}
    if layers:
        out["hidden_states"] = np.concatenate(rows).astype(np.float32)
        out["last_items"] = np.array(last_items, dtype=np.int64)
        if args.positions == "all":
            out["lengths"] = np.array(lengths, dtype=np.int64)
        metadata.update({"positions": args.positions, "layers": json.dumps(layers)})
    if args.ranking:
        out["topk_items"] = np.stack(top_items).astype(np.int64)
        out["topk_scores"] = np.stack(top_scores).astype(np.float32)
        metadata["score_order"] = "higher-is-better"
    if args.item_embeddings:
        out["item_embeddings"] = table.numpy().astype(np.float32)
        out["item_ids"] = raw_item_ids[1:]
    write_safetensors(args.out, out, metadata)
    print(f"wrote {args.out}: {len(ids)} examples; " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()))


if __name__ == "__main__":
    main()
