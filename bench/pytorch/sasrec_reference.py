#!/usr/bin/python3
"""PyTorch reference implementation of SASRec for the distillrec benchmarks.

What this is
------------
distillrec (C++) implements SASRec (Kang & McAuley, ICDM 2018). This script implements the
*same* model, loss, optimiser, negative sampling, data split and evaluation in plain, idiomatic
PyTorch (padded batches, vectorised ops, ``torch.inference_mode()`` for evaluation; no
torch.compile, no custom kernels), so that quality and speed of both implementations can be
compared side by side on the same machine. Specification: ``docs/methods.md`` section 4
(kang205/SASRec, pmixer/SASRec.pytorch) in the shared documentation.

How it corresponds to the C++ side
----------------------------------
* Data: ``user item`` per line (1-based, chronological per user). Item ids are used as-is when
  the distinct raw ids are exactly 1..N, otherwise remapped ascending -> 1..N. Users: distinct
  raw ids ascending -> dense 0..U-1; each user's items keep file order. ``--max-users N`` keeps
  the N smallest raw user ids and then applies the same rules (items may get remapped).
* Split (kang205 leave-one-out): < 3 interactions -> everything to train, never evaluated;
  otherwise train = all but the last two, valid = second last, test = last.
* Model: item table E [(N+1), d] with padding row 0 (zero, kept zero: padding_idx=0), learned
  position table P [L, d]; column j of the LEFT-padded window of length L uses position row j.
  The C++ side skips padded rows (ragged batches) instead of masking them; the non-padding rows
  are mathematically identical to this padded computation with causal + key-padding masks.
* Block styles: ``original`` (kang205: q = LN(x); x = q + Attn(q, x, x); r = LN(x);
  x = r + FFN(r)), ``pre-ln`` and ``post-ln`` (pmixer HEAD). Output projection of attention only
  with ``--attention-projection`` (default: off for original, on for pre-ln / post-ln).
* Loss: BCE with ``--negatives`` uniform negatives per non-padding position (excluding the user's
  training items), or full-softmax CE over items 1..N. Adam(lr, betas=(0.9, beta2), eps=1e-8),
  dense updates of every parameter (incl. the whole item table) every step.
* Evaluation: full ranking over items 1..N with history masking and pessimistic ties, and the
  legacy sampled 1+100 protocol (optionally on candidate files written by the C++ side).
* Speed: single-user latency (1 thread) and batch throughput (``--threads``) of
  forward -> scores over all items -> mask history -> top-10.

Conventions chosen here (the C++ side must use the same ones to be comparable)
-----------------------------------------------------------------------------
* Epoch loss = mean of the per-batch losses (each batch loss is the mean over its non-padding
  positions).
* Full-ranking history mask (``--history-mask``, default ``full``): all items of the user's
  history (train for valid, train + valid for test), not only the last L fed to the model.
  ``window`` masks only the L input items. A target that is in the masked history is a miss.
* Rank = number of OTHER candidates with score >= target score (pessimistic ties).
* Sampled candidates drawn here (no files): one draw per split, seeded, reused at every
  evaluation so that the numbers of different epochs are comparable.
* Latency users: a seeded random sample of evaluable users whose test history has >= L items;
  if there are not enough such users (Amazon Games: ~300), the remainder is filled with a seeded
  random sample of the other evaluable users, whose windows are left-padded to L. The model cost
  does not depend on padding (the full L x L window is always computed), only the number of
  masked items does. Speed measurements mask the L input-window items.

Example
-------
    /usr/bin/python3 bench/pytorch/sasrec_reference.py \\
        --data ../shared/data/amazon-games.txt --epochs 20 --json /tmp/ref.json
"""

import argparse
import os
import struct
import json
import math
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-8
FULL_KS = (1, 5, 10, 20)
FULL_NDCG_KS = (5, 10, 20)
SAMPLED_KS = (1, 5, 10)
SAMPLED_NDCG_KS = (5, 10)
NUM_SAMPLED_NEGATIVES = 100


def log(msg=""):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

class Dataset:
    """Interactions, leave-one-out split and the padded matrices used for training/evaluation."""

    def __init__(self, path, max_length, max_users=None):
        raw = np.loadtxt(path, dtype=np.int64, ndmin=2)
        if raw.shape[1] != 2:
            raise ValueError(f"{path}: expected 2 columns 'user item', got {raw.shape[1]}")
        raw_users, raw_items = raw[:, 0], raw[:, 1]
        distinct_users, user_index = np.unique(raw_users, return_inverse=True)
        if max_users is not None and max_users < len(distinct_users):
            keep = user_index < max_users
            raw_items, user_index = raw_items[keep], user_index[keep]
            distinct_users = distinct_users[:max_users]
        distinct_items, item_index = np.unique(raw_items, return_inverse=True)
        self.remapped_items = not np.array_equal(distinct_items,
                                                 np.arange(1, len(distinct_items) + 1))
        items = (item_index + 1) if self.remapped_items else raw_items
        self.num_users = len(distinct_users)
        self.num_items = len(distinct_items)
        self.num_interactions = len(items)
        self.max_length = L = max_length

        order = np.argsort(user_index, kind="stable")  # group by user, keep file order
        items = items[order].astype(np.int64)
        counts = np.bincount(user_index, minlength=self.num_users)
        starts = np.concatenate([[0], np.cumsum(counts)])
        seqs = [items[starts[u]:starts[u + 1]] for u in range(self.num_users)]

        # kang205 leave-one-out.
        self.train = []
        self.valid = np.zeros(self.num_users, np.int64)  # 0 = not evaluated
        self.test = np.zeros(self.num_users, np.int64)
        for u, s in enumerate(seqs):
            if len(s) < 3:
                self.train.append(s)
            else:
                self.train.append(s[:-2])
                self.valid[u], self.test[u] = s[-2], s[-1]
        self.eval_users = np.flatnonzero(counts >= 3)
        self.train_users = np.array([u for u in range(self.num_users) if len(self.train[u]) >= 2],
                                    dtype=np.int64)

        # Training matrices: input = last L of train[:-1], target = train[1:], left-padded.
        self.train_inputs = np.zeros((self.num_users, L), np.int64)
        self.train_targets = np.zeros((self.num_users, L), np.int64)
        for u in self.train_users:
            t = self.train[u]
            inp, tgt = t[:-1][-L:], t[1:][-L:]
            self.train_inputs[u, L - len(inp):] = inp
            self.train_targets[u, L - len(tgt):] = tgt

        # Sorted keys user*(N+1)+item for vectorised membership tests.
        stride = self.num_items + 1
        self.key_stride = stride
        self.train_keys = np.unique(np.concatenate(
            [u * stride + self.train[u] for u in range(self.num_users)]))
        self.all_keys = np.unique(np.concatenate(
            [u * stride + seqs[u] for u in range(self.num_users)]))
        self.max_user_items = int(counts.max())

        # Evaluation inputs: valid -> history = train; test -> history = train + [valid].
        self.eval = {}
        for split in ("valid", "test"):
            hists = [self.train[u] if split == "valid" else
                     np.append(self.train[u], self.valid[u]) for u in self.eval_users]
            windows = np.zeros((len(hists), L), np.int64)
            for r, h in enumerate(hists):
                w = h[-L:]
                windows[r, L - len(w):] = w
            lengths = np.array([len(h) for h in hists], np.int64)
            self.eval[split] = {
                "windows": windows,
                "targets": (self.valid if split == "valid" else self.test)[self.eval_users],
                "hist_indptr": np.concatenate([[0], np.cumsum(lengths)]),
                "hist_items": np.concatenate(hists) if hists else np.zeros(0, np.int64),
                "hist_lengths": lengths,
            }

    def is_member(self, keys, users, items):
        """Vectorised test whether (users, items) pairs (broadcast) are in the sorted key array."""
        q = users * self.key_stride + items
        pos = np.searchsorted(keys, q)
        pos = np.minimum(pos, len(keys) - 1)
        return keys[pos] == q


def sample_train_negatives(rng, data, users, k):
    """Uniform negatives over 1..N excluding each user's training items; users: [M] -> [M, k]."""
    users = users[:, None]
    neg = rng.integers(1, data.num_items + 1, size=(users.shape[0], k))
    bad = data.is_member(data.train_keys, users, neg)
    while bad.any():  # rejection: redraw only the rejected entries
        rows, cols = np.nonzero(bad)
        neg[rows, cols] = rng.integers(1, data.num_items + 1, size=len(rows))
        bad[rows, cols] = data.is_member(data.train_keys, users[rows, 0], neg[rows, cols])
    return neg


def sample_eval_candidates(rng, data, split, n=NUM_SAMPLED_NEGATIVES, chunk=4096):
    """[num_eval_users, 2 + n]: user, target, n distinct negatives excluding all user items."""
    if data.num_items - data.max_user_items < n:
        raise ValueError("not enough items to draw distinct sampled-evaluation negatives")
    users = data.eval_users
    out = np.zeros((len(users), n), np.int64)
    width = n + n // 2 + 16
    for c0 in range(0, len(users), chunk):  # chunks keep the temporaries small
        _sample_distinct(rng, data, users, out, np.arange(c0, min(c0 + chunk, len(users))),
                         n, width)
    return np.concatenate([users[:, None], data.eval[split]["targets"][:, None], out], axis=1)


def _sample_distinct(rng, data, users, out, todo, n, width):
    while todo.size:
        cand = rng.integers(1, data.num_items + 1, size=(todo.size, width))
        bad = data.is_member(data.all_keys, users[todo, None], cand)
        order = np.argsort(cand, axis=1, kind="stable")
        srt = np.take_along_axis(cand, order, axis=1)
        dup_sorted = np.zeros_like(bad)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]  # later occurrences of a repeated value
        dup = np.zeros_like(bad)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        ok = ~bad & ~dup
        enough = ok.sum(axis=1) >= n
        ok_rows = ok[enough]
        take = ok_rows & (np.cumsum(ok_rows, axis=1) <= n)  # first n valid draws of each row
        out[todo[enough]] = cand[enough][take].reshape(-1, n)
        todo = todo[~enough]


def load_eval_candidates(path, data, split):
    cands = np.load(path)
    n_eval = len(data.eval_users)
    if cands.ndim != 2 or cands.shape != (n_eval, 2 + NUM_SAMPLED_NEGATIVES):
        raise SystemExit(f"{path}: expected shape ({n_eval}, {2 + NUM_SAMPLED_NEGATIVES}), "
                         f"got {cands.shape}")
    if not np.issubdtype(cands.dtype, np.integer):
        raise SystemExit(f"{path}: expected an integer array, got {cands.dtype}")
    cands = cands.astype(np.int64)[np.argsort(cands[:, 0], kind="stable")]
    if not np.array_equal(cands[:, 0], data.eval_users):
        raise SystemExit(f"{path}: users (column 0) do not match the evaluable users of the split")
    targets = data.eval[split]["targets"]
    if not np.array_equal(cands[:, 1], targets):
        bad = np.flatnonzero(cands[:, 1] != targets)
        raise SystemExit(f"{path}: {len(bad)} targets (column 1) differ from the {split} items, "
                         f"first at user {cands[bad[0], 0]}: file {cands[bad[0], 1]}, "
                         f"split {targets[bad[0]]}")
    negs = cands[:, 2:]
    if negs.min() < 1 or negs.max() > data.num_items:
        raise SystemExit(f"{path}: negatives outside 1..{data.num_items}")
    return cands


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with separate q / k,v inputs (kang205 style)."""

    def __init__(self, d, heads, dropout, projection):
        super().__init__()
        if d % heads:
            raise ValueError("hidden size must be divisible by the number of heads")
        self.heads, self.head_dim = heads, d // heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d) if projection else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, q_in, kv_in, allowed):
        """q_in, kv_in: [B, L, d]; allowed: bool [B, 1, L, L] (causal AND key not padding)."""
        b, length, d = q_in.shape
        h, hd = self.heads, self.head_dim
        q = self.q_proj(q_in).view(b, length, h, hd).transpose(1, 2)
        k = self.k_proj(kv_in).view(b, length, h, hd).transpose(1, 2)
        v = self.v_proj(kv_in).view(b, length, h, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(hd)
        # Large finite fill: fully masked (padding) query rows stay finite instead of NaN.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        y = torch.matmul(probs, v).transpose(1, 2).reshape(b, length, d)
        return self.out_proj(y) if self.out_proj is not None else y


class FeedForward(nn.Module):
    """Dropout(Linear2(Dropout(ReLU(Linear1(r))))) == kang205's two kernel-1 convolutions."""

    def __init__(self, d, dropout):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d, d), nn.Linear(d, d)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x)))))


class Block(nn.Module):
    def __init__(self, style, d, heads, dropout, projection):
        super().__init__()
        self.style = style
        self.ln_attn = nn.LayerNorm(d, eps=LN_EPS)
        self.attn = CausalSelfAttention(d, heads, dropout, projection)
        self.ln_ffn = nn.LayerNorm(d, eps=LN_EPS)
        self.ffn = FeedForward(d, dropout)

    def forward(self, x, allowed, mask):
        if self.style == "original":
            q = self.ln_attn(x)
            x = q + self.attn(q, x, allowed)
            r = self.ln_ffn(x)
            x = r + self.ffn(r)
        elif self.style == "pre-ln":
            a = self.ln_attn(x)
            x = x + self.attn(a, a, allowed)
            x = x + self.ffn(self.ln_ffn(x))
        else:  # post-ln
            x = self.ln_attn(x + self.attn(x, x, allowed))
            x = self.ln_ffn(x + self.ffn(x))
        return x * mask


class SASRec(nn.Module):
    def __init__(self, num_items, max_length, d, blocks, heads, dropout, style, projection):
        super().__init__()
        self.d = d
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_length, d)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(style, d, heads, dropout, projection) for _ in range(blocks))
        self.final_ln = nn.LayerNorm(d, eps=LN_EPS)
        self.register_buffer(
            "causal", torch.ones(max_length, max_length, dtype=torch.bool).tril(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.xavier_normal_(module.weight)  # every weight matrix, incl. E and P
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seqs):
        """seqs: [B, L] left-padded item ids -> F: [B, L, d] (final LayerNorm output)."""
        valid = seqs != 0
        mask = valid.unsqueeze(-1).to(self.item_emb.weight.dtype)
        x = self.item_emb(seqs) * math.sqrt(self.d) + self.pos_emb.weight
        x = self.emb_dropout(x) * mask
        allowed = self.causal & valid[:, None, None, :]  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, allowed, mask)
        return self.final_ln(x)

    def user_vectors(self, seqs):
        return self.encode(seqs)[:, -1, :]

    def all_scores(self, user_vecs):
        """[B, d] -> [B, N+1] scores against the whole table (column 0 = padding row)."""
        return user_vecs @ self.item_emb.weight.t()

    def item_scores(self, vecs, items):
        """Scores of given items: vecs [M, d] with items [M] -> [M], or items [M, k] -> [M, k]."""
        if items.dim() == 1:
            return (vecs * self.item_emb(items)).sum(-1)
        return torch.einsum("md,mkd->mk", vecs, self.item_emb(items))

    def item_logits(self, feats):
        """[M, d] -> [M, N] logits over items 1..N (column j = item j+1), for the CE loss."""
        return feats @ self.item_emb.weight[1:].t()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def train_epoch(model, opt, data, args, rng):
    """One shuffled pass over the training users. The model interface used here and in the
    evaluation: encode(seqs [B, L] left-padded) -> [B, L, d] features at the left-padded positions,
    item_scores, item_logits, user_vectors and all_scores (see SASRec)."""
    model.train()
    users = rng.permutation(data.train_users)
    losses = []
    for start in range(0, len(users), args.batch_size):
        idx = users[start:start + args.batch_size]
        seqs = torch.from_numpy(data.train_inputs[idx])
        targets_np = data.train_targets[idx]
        rows, cols = np.nonzero(targets_np)
        pos = torch.from_numpy(targets_np[rows, cols])
        valid = torch.from_numpy(targets_np != 0)

        feats = model.encode(seqs)[valid]                       # [M, d], non-padding positions
        if args.loss == "bce":
            neg = torch.from_numpy(sample_train_negatives(rng, data, idx[rows], args.negatives))
            pos_logits = model.item_scores(feats, pos)                          # [M]
            neg_logits = model.item_scores(feats, neg)                          # [M, k]
            loss = (F.softplus(-pos_logits) + F.softplus(neg_logits).sum(-1)).mean()
        else:
            logits = model.item_logits(feats)                                    # [M, N]
            loss = F.cross_entropy(logits, pos - 1)

        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def metrics_from_ranks(ranks, hr_ks, ndcg_ks):
    """ranks: float array, 0-based, +inf = miss."""
    out = {}
    for k in hr_ks:
        out[f"HR@{k}"] = float(np.mean(ranks < k))
    for k in ndcg_ks:
        out[f"NDCG@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
    out["MRR"] = float(np.mean(1.0 / (ranks + 1.0)))
    out["users"] = int(len(ranks))
    return out


@torch.inference_mode()
def evaluate_split(model, data, split, candidates, batch_size, history_mask):
    """Both protocols for one split; each user's vector is computed once per evaluation."""
    model.eval()
    ev = data.eval[split]
    n = len(data.eval_users)
    full_ranks = np.empty(n, np.float64)
    sampled_ranks = np.empty(n, np.float64)
    for b0 in range(0, n, batch_size):
        b1 = min(b0 + batch_size, n)
        windows = torch.from_numpy(ev["windows"][b0:b1])
        targets = torch.from_numpy(ev["targets"][b0:b1])
        user_vecs = model.user_vectors(windows)                              # [B, d]

        # Full ranking over items 1..N.
        scores = model.all_scores(user_vecs)                                 # [B, N+1]
        target_scores = scores.gather(1, targets[:, None])                   # [B, 1]
        scores[:, 0] = -math.inf                                              # padding row
        if history_mask == "full":
            lo, hi = ev["hist_indptr"][b0], ev["hist_indptr"][b1]
            rows = np.repeat(np.arange(b1 - b0), ev["hist_lengths"][b0:b1])
            scores[torch.from_numpy(rows), torch.from_numpy(ev["hist_items"][lo:hi])] = -math.inf
        else:
            scores.scatter_(1, windows, -math.inf)
        target_masked = torch.isinf(scores.gather(1, targets[:, None])).squeeze(1)
        # Other unmasked items with score >= target (the target itself counts once, remove it).
        r = (scores >= target_scores).sum(1).double() - 1.0
        r[target_masked] = math.inf
        full_ranks[b0:b1] = r.numpy()

        # Sampled: target (column 0) against its 100 negatives.
        cand = torch.from_numpy(candidates[b0:b1, 1:])                       # [B, 101]
        cs = model.item_scores(user_vecs, cand)
        sampled_ranks[b0:b1] = (cs[:, 1:] >= cs[:, :1]).sum(1).double().numpy()
    return {"full": metrics_from_ranks(full_ranks, FULL_KS, FULL_NDCG_KS),
            "sampled-100": metrics_from_ranks(sampled_ranks, SAMPLED_KS, SAMPLED_NDCG_KS)}


def evaluate_all(model, data, args, candidates):
    return {split: evaluate_split(model, data, split, candidates[split], args.eval_batch,
                                  args.history_mask)
            for split in ("valid", "test")}


def format_metrics(metrics):
    lines = []
    for split in ("valid", "test"):
        for proto in ("full", "sampled-100"):
            m = metrics[split][proto]
            vals = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "users")
            lines.append(f"  {split:5s} [{proto:11s}] {vals}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------

def topk_recommend(model, windows, k=10):
    """forward -> scores over all items -> mask the input-window items -> top-k item ids."""
    scores = model.all_scores(model.user_vectors(windows))   # [B, N+1]
    scores.scatter_(1, windows, -math.inf)                     # window items (pads hit column 0)
    scores[:, 0] = -math.inf
    return torch.topk(scores[:, 1:], k, dim=1).indices + 1


def choose_latency_users(data, count, rng):
    """Users for the single-user latency test: every timed call gets a full window of exactly L
    history items, as the C++ benchmark does. The calls cycle through the users whose test
    history has at least L items (306 on the Amazon Games log, in a seeded random order); only
    if there are none are shorter (padded) windows used."""
    lengths = data.eval["test"]["hist_lengths"]
    L = data.max_length
    long_rows = np.flatnonzero(lengths >= L)
    if len(long_rows) > 0:
        rows = np.resize(rng.permutation(long_rows), count)
        return rows, 0
    rows = rng.choice(len(lengths), size=count, replace=True)
    return rows, count


@torch.inference_mode()
def measure_latency(model, data, rows, warmup=50):
    model.eval()
    torch.set_num_threads(1)
    windows = torch.from_numpy(data.eval["test"]["windows"][rows])
    for i in range(min(warmup, len(rows))):
        topk_recommend(model, windows[i:i + 1])
    times = np.empty(len(rows))
    for i in range(len(rows)):
        w = windows[i:i + 1]
        t0 = time.perf_counter()
        topk_recommend(model, w)
        times[i] = time.perf_counter() - t0
    times *= 1e3
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)),
            "mean": float(times.mean()), "users": int(len(rows))}


@torch.inference_mode()
def measure_throughput(model, data, threads, serve_batch, repeats=3):
    model.eval()
    torch.set_num_threads(threads)
    windows = torch.from_numpy(data.eval["test"]["windows"])
    n = windows.shape[0]
    topk_recommend(model, windows[:serve_batch])  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b0 in range(0, n, serve_batch):
            topk_recommend(model, windows[b0:b0 + serve_batch])
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def add_common_arguments(p, *, dropout, dropout_help, beta2, export_help):
    """The options shared by the references (window, training, evaluation, speed, output), in
    this order after the model-specific ones; only the defaults and help texts given differ."""
    p.add_argument("--max-length", type=int, default=50,
                   help="window length L")
    p.add_argument("--dropout", type=float, default=dropout,
                   help=dropout_help)
    p.add_argument("--loss", choices=("bce", "ce"), default="bce",
                   help="sampled BCE or full-softmax CE")
    p.add_argument("--negatives", type=int, default=1, help="BCE negatives per position")
    p.add_argument("--batch-size", type=int, default=128,
                   help="users per training batch")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate")
    p.add_argument("--beta2", type=float, default=beta2,
                   help="Adam beta2")
    p.add_argument("--epochs", type=int, default=20,
                   help="training epochs (0: evaluate the untrained model)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of init, dropout and all sampling")
    p.add_argument("--threads", type=int, default=2,
                   help="intra-op threads for training, evaluation, batch serving")
    p.add_argument("--max-users", type=int, default=None,
                   help="keep only the first N users (ascending raw id), for smoke tests")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate valid and test every k epochs (None: only at the end)")
    p.add_argument("--eval-batch", type=int, default=1024, help="users per evaluation batch")
    p.add_argument("--history-mask", choices=("full", "window"), default="full",
                   help="full ranking: mask the whole history or only the L input items")
    p.add_argument("--candidates-valid", help="sampled-100 candidates .npy [users, 102]")
    p.add_argument("--candidates-test", help="sampled-100 candidates .npy [users, 102]")
    p.add_argument("--latency-users", type=int, default=2000,
                   help="users timed in the single-user latency test")
    p.add_argument("--serve-batch", type=int, default=1024,
                   help="users per chunk in the batch-throughput test")
    p.add_argument("--no-speed", action="store_true",
                   help="skip the latency / throughput measurements (quality-only runs)")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--export-checkpoint", help=export_help)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch SASRec reference for the distillrec benchmarks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="'user item' file, 1-based, chronological")
    p.add_argument("--block-style", choices=("original", "pre-ln", "post-ln"), default="original",
                   help="transformer block layout")
    p.add_argument("--attention-projection", action=argparse.BooleanOptionalAction, default=None,
                   help="output projection after attention (None: off for original, "
                        "on for pre-ln/post-ln)")
    p.add_argument("--hidden", type=int, default=50,
                   help="embedding / hidden size d")
    p.add_argument("--blocks", type=int, default=2,
                   help="number of transformer blocks")
    p.add_argument("--heads", type=int, default=1,
                   help="attention heads")
    add_common_arguments(p, dropout=0.5, dropout_help="dropout rate", beta2=0.98,
                         export_help="after training, write the model as a distillrec SASRec "
                                     "checkpoint (safetensors, parameter names of "
                                     "distillrec/models/sasrec.hpp)")
    args = p.parse_args(argv)
    if args.attention_projection is None:
        args.attention_projection = args.block_style != "original"
    return args


# distillrec parameter names for this module's state_dict keys (models/sasrec.hpp documents them).
DISTILLREC_NAMES = [("item_emb.", "item_embedding."), ("pos_emb.", "position_embedding."),
                    (".ln_attn.", ".attention_norm."), (".attn.q_proj.", ".attention.query."),
                    (".attn.k_proj.", ".attention.key."), (".attn.v_proj.", ".attention.value."),
                    (".attn.out_proj.", ".attention.output."), (".ln_ffn.", ".ffn_norm."),
                    (".ffn.linear1.", ".ffn.fc1."), (".ffn.linear2.", ".ffn.fc2."),
                    ("final_ln.", "final_norm.")]


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer (the format of safetensors.torch.save_file), numpy only:
    8-byte little-endian header length, JSON header, then the little-endian data."""
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        blobs.append(array.tobytes())
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export_distillrec_checkpoint(model, args, num_items, path):
    tensors = {}
    for key, value in model.state_dict().items():
        name = key
        for a, b in DISTILLREC_NAMES:
            name = name.replace(a, b)
        tensors[name] = value.detach().cpu().numpy()
    config = {"model": "sasrec", "num_items": int(num_items), "hidden_size": args.hidden,
              "num_blocks": args.blocks, "num_heads": args.heads, "max_length": args.max_length,
              "ffn_size": args.hidden, "dropout": args.dropout,
              "block_style": "sasrec" if args.block_style == "original" else args.block_style,
              "attention_projection": bool(args.attention_projection), "activation": "relu",
              "layer_norm_eps": LN_EPS}
    write_safetensors(path, tensors, {"format": "distillrec", "format_version": "1", "model": "sasrec",
                                      "config": json.dumps(config), "source": "bench/pytorch/sasrec_reference.py"})
    log(f"wrote {path} (distillrec SASRec checkpoint)")


def run(args, build_model, describe_model, export_checkpoint, extra_config):
    """The benchmark driver shared by the references: data, sampled candidates, training,
    evaluation, speed, report, checkpoint export and JSON. build_model(data) -> the model (see
    train_epoch for its interface); describe_model(args) -> its part of the "model:" log line;
    export_checkpoint(model, args, num_items, path) writes --export-checkpoint; extra_config: keys
    added to the JSON config after num_parameters."""
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    train_rng = np.random.default_rng([args.seed, 0])
    eval_rng = np.random.default_rng([args.seed, 1])
    speed_rng = np.random.default_rng([args.seed, 2])

    t0 = time.perf_counter()
    data = Dataset(args.data, args.max_length, args.max_users)
    log(f"data: {data.num_users} users, {data.num_items} items"
        f"{' (remapped)' if data.remapped_items else ''}, {data.num_interactions} interactions; "
        f"{len(data.train_users)} training users, {len(data.eval_users)} evaluable users "
        f"({time.perf_counter() - t0:.1f}s)")
    if len(data.eval_users) == 0:
        raise SystemExit("no evaluable users (every user has < 3 interactions)")
    if args.loss == "bce" and data.num_items <= max(len(t) for t in data.train):
        raise SystemExit("a user has interacted with every item: cannot sample negatives")

    candidates = {}
    for split, path in (("valid", args.candidates_valid), ("test", args.candidates_test)):
        candidates[split] = (load_eval_candidates(path, data, split) if path
                             else sample_eval_candidates(eval_rng, data, split))
    cand_source = {s: (p or "drawn") for s, p in
                   (("valid", args.candidates_valid), ("test", args.candidates_test))}

    model = build_model(data)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, args.beta2), eps=1e-8,
                           weight_decay=0.0)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {describe_model(args)}, {n_params} parameters; loss {args.loss}; "
        f"torch {torch.__version__}, {args.threads} threads")

    epochs, evaluations, metrics = [], [], None
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(model, opt, data, args, train_rng)
        seconds = time.perf_counter() - t0
        epochs.append({"epoch": epoch, "loss": loss, "seconds": seconds})
        log(f"epoch {epoch:4d}  loss {loss:.5f}  {seconds:.2f}s")
        if args.eval_every and epoch % args.eval_every == 0:
            metrics = evaluate_all(model, data, args, candidates)
            evaluations.append({"epoch": epoch, "metrics": metrics})
            log(f"evaluation after epoch {epoch}:\n{format_metrics(metrics)}")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    if not (evaluations and evaluations[-1]["epoch"] == args.epochs):
        metrics = evaluate_all(model, data, args, candidates)

    latency, throughput = None, None
    if not args.no_speed:
        latency_rows, n_padded = choose_latency_users(data, args.latency_users, speed_rng)
        latency = measure_latency(model, data, latency_rows)
        latency["padded_users"] = int(n_padded)
        throughput = measure_throughput(model, data, args.threads, args.serve_batch)
        torch.set_num_threads(args.threads)

    sec_median = float(np.median([e["seconds"] for e in epochs])) if epochs else None
    log("")
    log(f"final metrics after {args.epochs} epochs "
        f"(full: all {data.num_items} items, history mask '{args.history_mask}', pessimistic "
        f"ties; sampled-100: candidates {cand_source['valid']} / {cand_source['test']}):")
    log(format_metrics(metrics))
    log(f"seconds/epoch (median): {sec_median:.2f}" if sec_median is not None
        else "seconds/epoch: n/a (no training)")
    if latency is not None:
        log(f"latency 1 user, 1 thread ({latency['users']} users, "
            f"{latency['padded_users']} padded windows): p50 {latency['p50']:.3f} ms  "
            f"p90 {latency['p90']:.3f} ms  mean {latency['mean']:.3f} ms")
        log(f"batch serving ({args.threads} threads, chunks of {args.serve_batch}): "
            f"{throughput:.0f} users/s")
    log(f"peak RSS after training: {peak_rss_mib:.1f} MiB")

    if args.export_checkpoint:
        export_checkpoint(model, args, data.num_items, args.export_checkpoint)

    if args.json:
        config = dict(vars(args))
        config.update({
            "num_users": data.num_users, "num_items": data.num_items,
            "num_interactions": data.num_interactions, "items_remapped": data.remapped_items,
            "num_train_users": int(len(data.train_users)),
            "num_eval_users": int(len(data.eval_users)), "num_parameters": n_params})
        config.update(extra_config)
        config.update({
            "adam": {"betas": [0.9, args.beta2], "eps": 1e-8},
            "tie_policy": "pessimistic (other items with score >= target)",
            "sampled_candidates": cand_source,
            "epoch_loss": "mean of per-batch losses",
        })
        result = {
            "implementation": "pytorch",
            "torch_version": torch.__version__,
            "threads": args.threads,
            "config": config,
            "epochs": epochs,
            "seconds_per_epoch_median": sec_median,
            "metrics": metrics,
            "evaluations": evaluations,
            "latency_ms": latency,
            "batch_users_per_second": throughput,
            "peak_rss_mib": peak_rss_mib,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        log(f"wrote {args.json}")


def main(argv=None):
    args = parse_args(argv)
    run(args,
        build_model=lambda data: SASRec(data.num_items, args.max_length, args.hidden, args.blocks,
                                        args.heads, args.dropout, args.block_style,
                                        args.attention_projection),
        describe_model=lambda a: (f"SASRec {a.block_style}, d={a.hidden}, blocks={a.blocks}, "
                                  f"heads={a.heads}, L={a.max_length}, dropout={a.dropout}, "
                                  f"attention projection "
                                  f"{'on' if a.attention_projection else 'off'}"),
        export_checkpoint=export_distillrec_checkpoint,
        extra_config={"layer_norm_eps": LN_EPS})


if __name__ == "__main__":
    main(sys.argv[1:])
