"""Read Karpathy's llama2.c stories260K checkpoint and tokenizer into girl, for the known-answer test.

The .bin is llama2.c's "legacy" format: a header of 7 int32, then float32 arrays in a fixed order.
"""

import re
import struct
from pathlib import Path

import numpy as np
import torch

from girl.lm.model import Config, Transformer

BOS = 1


def load_llama2c(path: Path) -> Transformer:
    data = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28])
    tied = vocab > 0  # llama2.c's convention: a negative vocab_size means a separate classifier follows
    vocab = abs(vocab)
    hs = dim // n_heads
    floats = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=28).copy())
    offset = 0

    def take(*shape):
        nonlocal offset
        n = int(np.prod(shape))
        t = floats[offset : offset + n].view(*shape)
        offset += n
        return t

    def to_rotate_half(w, heads):
        # llama2.c rotates adjacent pairs (2i, 2i+1); girl (like HF) rotates (i, i + hs/2). Reorder each
        # head's output rows so that row 2i+j moves to j·hs/2 + i: then both compute the same attention.
        return w.view(heads, hs // 2, 2, dim).transpose(1, 2).reshape(heads * hs, dim)

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, n_heads * hs, dim)
    wk = take(n_layers, n_kv_heads * hs, dim)
    wv = take(n_layers, n_kv_heads * hs, dim)
    wo = take(n_layers, dim, n_heads * hs)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len * hs // 2)  # legacy RoPE tables (cos, sin): girl computes its own
    take(seq_len * hs // 2)
    lm_head = emb if tied else take(vocab, dim)

    config = Config(model_type="llama", vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads,
                    n_kv_heads=n_kv_heads, hidden_dim=hidden, max_seq_len=seq_len, norm_eps=1e-5,
                    rope_theta=10000.0, tie_embeddings=tied, bos_token_id=BOS, eos_token_id=2)
    state = {"tok_emb.weight": emb, "norm.weight": rms_final, "lm_head.weight": lm_head}
    for i in range(n_layers):
        state |= {
            f"layers.{i}.attn_norm.weight": rms_att[i],
            f"layers.{i}.attn.q.weight": to_rotate_half(wq[i], n_heads),
            f"layers.{i}.attn.k.weight": to_rotate_half(wk[i], n_kv_heads),
            f"layers.{i}.attn.v.weight": wv[i],
            f"layers.{i}.attn.o.weight": wo[i],
            f"layers.{i}.mlp_norm.weight": rms_ffn[i],
            f"layers.{i}.mlp.gate.weight": w1[i],  # llama2.c: w2(silu(w1 x) * w3 x)
            f"layers.{i}.mlp.up.weight": w3[i],
            f"layers.{i}.mlp.down.weight": w2[i],
        }
    model = Transformer(config)
    model.load_state_dict(state)
    return model.eval()


def load_pieces(path: Path) -> list[bytes]:
    """tok512.bin: int32 max_token_length, then per id: float32 score, int32 length, the bytes."""
    data = path.read_bytes()
    pieces, at = [], 4
    while at < len(data):
        _score, n = struct.unpack_from("<fi", data, at)
        pieces.append(data[at + 8 : at + 8 + n])
        at += 8 + n
    return pieces


def decode(pieces: list[bytes], tokens: list[int]) -> bytes:
    """What llama2.c's run.c prints for `tokens` following BOS (its decode() and safe_printf())."""
    out, prev = b"", BOS
    for t in tokens:
        piece = pieces[t]
        if prev == BOS and piece.startswith(b" "):
            piece = piece[1:]
        if m := re.fullmatch(rb"<0x([0-9A-Fa-f]{2})>", piece):
            piece = bytes([int(m.group(1), 16)])
        # a lone unprintable byte is not printed
        if not (len(piece) == 1 and not (0x20 <= piece[0] < 0x7F or piece[0] in b"\t\n\v\f\r")):
            out += piece
        prev = t
    return out
