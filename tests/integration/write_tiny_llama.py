#!/usr/bin/env python3
"""Writes a tiny random LLaMA checkpoint in the Hugging Face layout and its hidden states.

    write_tiny_llama.py OUT_DIR [--dtype F32|F16|BF16] [--shards N] [--seed S]

OUT_DIR receives config.json, the weights (model.safetensors, or N shards with
model.safetensors.index.json), tokens.json (a few token sequences) and reference.safetensors
with, per sequence s, "states.{s}" [len, hidden]: the last layer after the final RMSNorm,
computed in float64 from the weights as stored (rounded to the dtype), by a LLaMA forward
written here after HF's LlamaModel (Debian has no transformers): RMSNorm, rotary embedding in
HF's rotate-half layout, grouped-query causal attention, SwiGLU. The checkpoint also carries
lm_head.weight, which a hidden-state reader must skip.

With --tokenizer-text FILE, a SentencePiece BPE tokenizer (python3-sentencepiece) trained on
FILE's lines is written as OUT_DIR/tokenizer.model (as LLaMA checkpoints ship theirs) and the
checkpoint's vocabulary is that tokenizer's size: a complete tiny checkpoint for programs that
start from one (train_hllm --from-llama).
"""
import argparse
import json
import math
import os
import struct

import torch

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--dtype", default="F32", choices=["F32", "F16", "BF16"])
p.add_argument("--shards", type=int, default=1)
p.add_argument("--seed", type=int, default=7)
p.add_argument("--tokenizer-text", help="train a tokenizer.model on this file's lines; the vocabulary follows it")
p.add_argument("--tokenizer-pieces", type=int, default=120, help="pieces of that tokenizer (at most)")
args = p.parse_args()

vocab_size = 97
if args.tokenizer_text:
    import sentencepiece as spm

    os.makedirs(args.out, exist_ok=True)
    spm.SentencePieceTrainer.train(input=args.tokenizer_text, model_prefix=os.path.join(args.out, "tokenizer"), model_type="bpe",
                                   vocab_size=args.tokenizer_pieces, hard_vocab_limit=False, character_coverage=1.0,
                                   minloglevel=2)
    os.remove(os.path.join(args.out, "tokenizer.vocab"))
    vocab_size = spm.SentencePieceProcessor(model_file=os.path.join(args.out, "tokenizer.model")).get_piece_size()

torch.manual_seed(args.seed)
config = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": vocab_size,
    "hidden_size": 32,
    "intermediate_size": 88,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[args.dtype],
}
V, H, F, L = config["vocab_size"], config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
NH, KV = config["num_attention_heads"], config["num_key_value_heads"]
D = H // NH
torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[args.dtype]

weights = {"model.embed_tokens.weight": torch.randn(V, H), "model.norm.weight": 1.0 + 0.1 * torch.randn(H),
           "lm_head.weight": torch.randn(V, H) * 0.05}
for i in range(L):
    pre = f"model.layers.{i}."
    weights[pre + "input_layernorm.weight"] = 1.0 + 0.1 * torch.randn(H)
    weights[pre + "post_attention_layernorm.weight"] = 1.0 + 0.1 * torch.randn(H)
    weights[pre + "self_attn.q_proj.weight"] = torch.randn(NH * D, H) / math.sqrt(H)
    weights[pre + "self_attn.k_proj.weight"] = torch.randn(KV * D, H) / math.sqrt(H)
    weights[pre + "self_attn.v_proj.weight"] = torch.randn(KV * D, H) / math.sqrt(H)
    weights[pre + "self_attn.o_proj.weight"] = torch.randn(H, NH * D) / math.sqrt(H)
    weights[pre + "mlp.gate_proj.weight"] = torch.randn(F, H) / math.sqrt(H)
    weights[pre + "mlp.up_proj.weight"] = torch.randn(F, H) / math.sqrt(H)
    weights[pre + "mlp.down_proj.weight"] = torch.randn(H, F) / math.sqrt(F)
# What the file holds, and what the reference computes with: the weights rounded to the dtype.
stored = {name: w.to(torch_dtype).contiguous() for name, w in weights.items()}
exact = {name: w.double() for name, w in stored.items()}


def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config["rms_norm_eps"]) * w


def rotary(x):  # x [len, heads, D], HF's rotate_half
    n = x.shape[0]
    inv = 1.0 / (config["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    rotated = torch.cat([-x[..., D // 2:], x[..., : D // 2]], dim=-1)
    return x * cos + rotated * sin


def forward(tokens):
    x = exact["model.embed_tokens.weight"][torch.tensor(tokens)]
    n = x.shape[0]
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(L):
        pre = f"model.layers.{i}."
        h = rms_norm(x, exact[pre + "input_layernorm.weight"])
        q = (h @ exact[pre + "self_attn.q_proj.weight"].T).view(n, NH, D)
        k = (h @ exact[pre + "self_attn.k_proj.weight"].T).view(n, KV, D)
        v = (h @ exact[pre + "self_attn.v_proj.weight"].T).view(n, KV, D)
        q, k = rotary(q), rotary(k)
        k = k.repeat_interleave(NH // KV, dim=1)
        v = v.repeat_interleave(NH // KV, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D) + mask
        a = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, H)
        x = x + a @ exact[pre + "self_attn.o_proj.weight"].T
        h = rms_norm(x, exact[pre + "post_attention_layernorm.weight"])
        g = h @ exact[pre + "mlp.gate_proj.weight"].T
        u = h @ exact[pre + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ exact[pre + "mlp.down_proj.weight"].T
    return rms_norm(x, exact["model.norm.weight"])


def tensor_bytes(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    names = sorted(tensors)
    header, offset, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = metadata
    codes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
    for name in names:
        t = tensors[name]
        blob = tensor_bytes(t)
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
names = sorted(stored)
if args.shards <= 1:
    write_safetensors(os.path.join(args.out, "model.safetensors"), stored, {"format": "pt"})
else:
    weight_map = {}
    for s in range(args.shards):
        shard = f"model-{s + 1:05d}-of-{args.shards:05d}.safetensors"
        part = {name: stored[name] for j, name in enumerate(names) if j % args.shards == s}
        write_safetensors(os.path.join(args.out, shard), part, {"format": "pt"})
        weight_map.update({name: shard for name in part})
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)

sequences = [[1, 5, 9, 13, 40, 96 % V], [1, 2], [1], [1] + [int(t) for t in torch.randint(3, V, (40,))]]
with open(os.path.join(args.out, "tokens.json"), "w") as f:
    json.dump(sequences, f)
write_safetensors(os.path.join(args.out, "reference.safetensors"),
                  {f"states.{s}": forward(seq).float() for s, seq in enumerate(sequences)})
