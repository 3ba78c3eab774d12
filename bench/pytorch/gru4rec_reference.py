#!/usr/bin/python3
"""PyTorch reference implementation of GRU4Rec for the distillrec benchmarks.

What this is
------------
distillrec (C++) implements GRU4Rec as DLLM2Rec's GRU student (``docs/methods.md`` section 2.3
in the shared documentation: item table initialised N(0, 0.01^2), packed GRU, separate output
layer with bias). This script implements the *same* model in plain, idiomatic PyTorch
(``torch.nn.GRU`` over packed sequences, vectorised ops, ``torch.inference_mode()`` for
evaluation; no torch.compile, no custom kernels) and trains and evaluates it exactly as
``sasrec_reference.py`` trains and evaluates SASRec, so that quality and speed of both
implementations can be compared side by side on the same machine. Everything except the model
(data, split, sampling, candidates, training loop, metrics, evaluation, speed tests, command-line
options, report and JSON layout) is imported from ``sasrec_reference.py``; its documentation
applies here unchanged (only the default Adam beta2 differs: 0.999, PyTorch's default).

How it corresponds to the C++ side
----------------------------------
* Data and split: as ``sasrec_reference.py`` (``user item`` lines; kang205 leave-one-out: users
  with < 3 interactions train only, otherwise train = all but the last two, valid = second last,
  test = last).
* Model, per user window s_1..s_n (the last ``--max-length`` items, n <= L):
      e_t = Dropout(E[s_t])               E [(N+1), d], row 0 = padding (zero, kept zero:
                                          padding_idx=0), rows 1..N initialised N(0, 0.01^2)
      h_t = GRU(e_t, h_{t-1}), h_0 = 0    torch.nn.GRU(d, H, num_layers, batch_first=True), PyTorch
                                          default init U(-1/sqrt(H), 1/sqrt(H)); no dropout between
                                          layers or after the GRU; gate order r, z, n
      score(t, i) = h_t . W[i-1] + b[i-1] head "untied" (default): nn.Linear(H, N) with bias,
                                          PyTorch default init; column j of the logits = item j+1
      score(t, i) = h_t . E[i]            head "tied" (requires H == d)
  The GRU runs over PACKED sequences (``pack_padded_sequence`` with the real lengths), so no step
  is ever computed on padding -- as on the C++ side, which runs each sequence over its real items
  only. The shared batch format is left-padded (real items last); each batch is right-aligned
  (real items first) for packing and the outputs are mapped back to the left-padded positions.
* Loss: at EVERY non-padding position t the target is the next training item: BCE with
  ``--negatives`` uniform negatives per position (excluding the user's training items), or
  full-softmax CE over items 1..N; mean over the non-padding positions of the batch.
  Adam(lr, betas=(0.9, beta2), eps=1e-8), dense updates of every parameter every step.
* User vector: h at the newest item of the window (the final hidden state of the top layer).
* Evaluation: full ranking over items 1..N with history masking and pessimistic ties, and the
  legacy sampled 1+100 protocol (optionally on candidate files written by the C++ side).
* Speed: single-user latency (1 thread) and batch throughput (``--threads``) of
  forward -> scores over all items -> mask history -> top-10.
* Checkpoint (``--export-checkpoint FILE``): safetensors, ``__metadata__`` {"format": "distillrec",
  "format_version": "1", "model": "gru4rec", "config": JSON} with config {"model": "gru4rec",
  "num_items", "embedding_dim", "hidden_size", "num_layers", "max_length", "dropout", "head"};
  F32 tensors "item_embedding.weight" [N+1, d]; per layer l "gru.{l}.weight_ih" [3H, in]
  (in = d for layer 0, H above), "gru.{l}.weight_hh" [3H, H], "gru.{l}.bias_ih" [1, 3H],
  "gru.{l}.bias_hh" [1, 3H] (PyTorch's weight_ih_l{l} etc., rows in gate order r, z, n); untied
  head only: "output.weight" [N, H], "output.bias" [1, N].

Conventions chosen here (the C++ side must use the same ones to be comparable)
-----------------------------------------------------------------------------
* All of ``sasrec_reference.py``'s (epoch loss = mean of the per-batch losses; full-ranking
  history mask ``--history-mask full`` by default; rank = number of OTHER candidates with score
  >= target score; sampled candidates drawn once per split, seeded; latency users with full
  windows of L history items; speed measurements mask the L input-window items).
* The GRU sees only the window of the last L items (training and evaluation), not the whole
  history; with packing its cost grows with the real window length (the latency users all have
  full windows).
* Column 0 of the all-item scores (padding) is -inf for the untied head (it has no padding row);
  it is masked in every use anyway.

Example
-------
    /usr/bin/python3 bench/pytorch/gru4rec_reference.py \\
        --data ../shared/data/amazon-games.txt --epochs 20 --json /tmp/gru.json
"""

import argparse
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sasrec_reference import add_common_arguments, log, run, write_safetensors  # noqa: E402

EMBEDDING_INIT_STD = 0.01


class GRU4Rec(nn.Module):
    """Embedding -> dropout -> packed multi-layer GRU -> untied linear head (or the item table).
    Interface of sasrec_reference.train_epoch / evaluate_split: encode, user_vectors, all_scores,
    item_scores, item_logits."""

    def __init__(self, num_items, d, hidden, layers, dropout, head):
        super().__init__()
        if head == "tied" and hidden != d:
            raise ValueError("the tied head needs hidden size == embedding dim")
        self.head = head
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(d, hidden, num_layers=layers, batch_first=True)  # PyTorch default init
        self.output = nn.Linear(hidden, num_items) if head == "untied" else None
        with torch.no_grad():
            nn.init.normal_(self.item_emb.weight, 0.0, EMBEDDING_INIT_STD)  # DLLM2Rec's init
            self.item_emb.weight[0].zero_()

    def _run_gru(self, seqs):
        """seqs [B, L] left-padded (every row has >= 1 item) -> (packed outputs, h_n [layers, B, H],
        lengths [B])."""
        length = seqs.shape[1]
        lengths = (seqs != 0).sum(1)                                   # [B], int64 on the CPU
        cols = torch.arange(length)
        src = cols[None, :] + (length - lengths)[:, None]              # right col j <- left col
        right = seqs.gather(1, src.clamp(max=length - 1)) * (cols[None, :] < lengths[:, None])
        x = self.emb_dropout(self.item_emb(right))                    # [B, L, d], real items first
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h_n = self.gru(packed)                                    # h_0 = 0
        return out, h_n, lengths

    def encode(self, seqs):
        """seqs [B, L] left-padded -> [B, L, H]: h_t at the left-padded position of item t, zero
        at padding positions."""
        out, _, lengths = self._run_gru(seqs)
        length = seqs.shape[1]
        right, _ = pad_packed_sequence(out, batch_first=True, total_length=length)  # [B, L, H]
        src = torch.arange(length)[None, :] - (length - lengths)[:, None]  # left col j <- right col
        valid = src >= 0
        idx = src.clamp(min=0).unsqueeze(-1).expand(-1, -1, right.shape[2])
        return right.gather(1, idx) * valid.unsqueeze(-1).to(right.dtype)

    def user_vectors(self, seqs):
        """[B, L] left-padded windows -> [B, H]: h at the newest item (top layer)."""
        return self._run_gru(seqs)[1][-1]

    def all_scores(self, user_vecs):
        """[B, H] -> [B, N+1] scores of every item (column i = item i; column 0 = padding)."""
        if self.output is None:
            return user_vecs @ self.item_emb.weight.t()
        return F.pad(self.output(user_vecs), (1, 0), value=-math.inf)

    def item_scores(self, vecs, items):
        """Scores of given items: vecs [M, H] with items [M] -> [M], or items [M, k] -> [M, k]."""
        if self.output is None:
            w, b = self.item_emb(items), None
        else:
            w, b = F.embedding(items - 1, self.output.weight), self.output.bias[items - 1]
        s = (vecs * w).sum(-1) if items.dim() == 1 else torch.einsum("mh,mkh->mk", vecs, w)
        return s if b is None else s + b

    def item_logits(self, feats):
        """[M, H] -> [M, N] logits over items 1..N (column j = item j+1), for the CE loss."""
        if self.output is None:
            return feats @ self.item_emb.weight[1:].t()
        return self.output(feats)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch GRU4Rec reference for the distillrec benchmarks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="'user item' file, 1-based, chronological")
    p.add_argument("--hidden", type=int, default=64,
                   help="GRU hidden size H")
    p.add_argument("--embedding-dim", type=int, default=64,
                   help="item embedding size d")
    p.add_argument("--layers", type=int, default=1,
                   help="number of stacked GRU layers")
    p.add_argument("--head", choices=("untied", "tied"), default="untied",
                   help="untied: Linear(H, N) with bias; tied: scores against the item table "
                        "(needs H == d)")
    add_common_arguments(p, dropout=0.1, dropout_help="dropout on the item embeddings",
                         beta2=0.999,
                         export_help="after training, write the model as a distillrec GRU4Rec "
                                     "checkpoint (safetensors, names in the module docstring)")
    args = p.parse_args(argv)
    if args.head == "tied" and args.hidden != args.embedding_dim:
        p.error("--head tied needs --hidden == --embedding-dim")
    return args


def checkpoint_config(args, num_items):
    return {"model": "gru4rec", "num_items": int(num_items), "embedding_dim": args.embedding_dim,
            "hidden_size": args.hidden, "num_layers": args.layers, "max_length": args.max_length,
            "dropout": args.dropout, "head": args.head}


def export_distillrec_checkpoint(model, args, num_items, path):
    def array(t):
        return t.detach().cpu().float().numpy()

    tensors = {"item_embedding.weight": array(model.item_emb.weight)}
    for layer in range(args.layers):
        for kind in ("ih", "hh"):
            tensors[f"gru.{layer}.weight_{kind}"] = array(getattr(model.gru, f"weight_{kind}_l{layer}"))
            tensors[f"gru.{layer}.bias_{kind}"] = array(
                getattr(model.gru, f"bias_{kind}_l{layer}")).reshape(1, -1)
    if model.output is not None:
        tensors["output.weight"] = array(model.output.weight)
        tensors["output.bias"] = array(model.output.bias).reshape(1, -1)
    write_safetensors(path, tensors, {"format": "distillrec", "format_version": "1",
                                      "model": "gru4rec",
                                      "config": json.dumps(checkpoint_config(args, num_items)),
                                      "source": "bench/pytorch/gru4rec_reference.py"})
    log(f"wrote {path} (distillrec GRU4Rec checkpoint)")


def main(argv=None):
    args = parse_args(argv)
    run(args,
        build_model=lambda data: GRU4Rec(data.num_items, args.embedding_dim, args.hidden,
                                         args.layers, args.dropout, args.head),
        describe_model=lambda a: (f"GRU4Rec, d={a.embedding_dim}, H={a.hidden}, "
                                  f"layers={a.layers}, head {a.head}, L={a.max_length}, "
                                  f"embedding dropout={a.dropout}"),
        export_checkpoint=export_distillrec_checkpoint,
        extra_config={"model": "gru4rec", "item_embedding_init": "N(0, 0.01^2), row 0 zero",
                      "gru_init": "PyTorch default U(-1/sqrt(H), 1/sqrt(H))",
                      "output_init": "PyTorch default (nn.Linear)" if args.head == "untied"
                      else None})


if __name__ == "__main__":
    main(sys.argv[1:])
