#!/usr/bin/env python3
"""Encodes texts with python3-sentencepiece, for the C++ tokenizer test to compare against.

    sp_encode.py MODEL TEXTS_JSON OUT_JSON

TEXTS_JSON holds a list of strings; OUT_JSON receives {"plain": [[ids]...], "bos": [[ids]...],
"vocab_size": n, "bos_id": i, "eos_id": j, "unk_id": k, "pad_id": l}.
Exits with status 3 when the sentencepiece module is missing (the test then skips).
"""
import json
import sys

try:
    import sentencepiece as spm
except ImportError:
    sys.exit(3)

model, texts_path, out_path = sys.argv[1:4]
sp = spm.SentencePieceProcessor(model_file=model)
with open(texts_path, encoding="utf-8") as f:
    texts = json.load(f)
out = {
    "plain": [sp.encode(t) for t in texts],
    "bos": [sp.encode(t, add_bos=True) for t in texts],
    "decoded": [sp.decode(sp.encode(t)) for t in texts],
    "vocab_size": sp.get_piece_size(),
    "bos_id": sp.bos_id(),
    "eos_id": sp.eos_id(),
    "unk_id": sp.unk_id(),
    "pad_id": sp.pad_id(),
}
with open(out_path, "w", encoding="utf-8") as f:
    json.dump(out, f)
