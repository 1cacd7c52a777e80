"""What the reward model U reads and what it gives (GIRL §3.2): the one place where U's input is built.

U(C, J) reads template(C, J) + EOS, the same tokens as the SFT example of (C, J), and gives one scalar
at that EOS (girl/lm/model.py's RewardModel).

    u = u_scores(U, tok_u, cvs, jds, lang)                 # U(C, J) of texts, in U's own tokenizer
    u = token_scores(U, prompts, responses, eos_id, pad_id)  # U(C, J′) of G's own tokens (same tokenizer)
    triples, cut = encode_triples(tok, rows, lang, max_len)
    r_pos, r_neg = pair_scores(U, triples, pad_id)         # U(C, J+), U(C, J−) in one forward pass
    picked = best_of_n(u, n)                               # best-of-N: the sample U scores highest, per CV
    idf = token_idf(tok, market_jds)                       # U's pretext: which of J's tokens C holds
    ids, mask, in_cv, weights = membership_batch([membership_example(tok, cv, jd, lang, max_len, idf)], pad_id)
"""

import contextlib
import math

import torch

from girl.data import IGNORE, right_pad, sft_example


def u_input(tok, cv: str, jd: str, lang: str, max_len: int) -> tuple[list[int], bool]:
    """The tokens of template(C, J) + EOS, and whether the CV or the JD was cut to fit max_len."""
    example, cv_cut, jd_cut = sft_example(tok, cv, jd, lang, max_len)
    return example["input_ids"], cv_cut or jd_cut


def encode_triples(tok, rows: list[dict], lang: str, max_len: int) -> tuple[list[tuple], int]:
    """Each {"cv", "jd_pos", "jd_neg"} row as U's two inputs (C, J+) and (C, J−); and how many were cut."""
    out, cut = [], 0
    for r in rows:
        (pos, a), (neg, b) = (u_input(tok, r["cv"], r[k], lang, max_len) for k in ("jd_pos", "jd_neg"))
        out.append((pos, neg))
        cut += a + b
    return out, cut


def scores_of(U, seqs: list[list[int]], pad_id: int, autocast=contextlib.nullcontext) -> torch.Tensor:
    """U's score [B] of each of a batch of encoded inputs, right-padded into one forward pass."""
    device = next(U.parameters()).device
    ids, mask = right_pad(seqs, pad_id)
    with autocast():
        return U(ids.to(device), attention_mask=mask.to(device)).float()


def pair_scores(U, triples: list[tuple], pad_id: int, autocast=contextlib.nullcontext):
    """U(C, J+) and U(C, J−) [B] each, of a batch of encode_triples' pairs, in one forward pass."""
    r = scores_of(U, [p for p, _ in triples] + [n for _, n in triples], pad_id, autocast)
    return r[: len(triples)], r[len(triples) :]


@torch.no_grad()
def u_scores(U, tok_u, cvs: list[str], jds: list[str], lang: str, autocast=contextlib.nullcontext,
             batch_size: int = 64) -> torch.Tensor:
    """U(C, J) [N] of texts, as U was trained to read them: template(C, J) + EOS in U's own tokenizer
    (U may use another tokenizer than G: it reads the text)."""
    seqs = [u_input(tok_u, c, j, lang, U.config.max_seq_len)[0] for c, j in zip(cvs, jds, strict=True)]
    return torch.cat([scores_of(U, seqs[i : i + batch_size], tok_u.pad_or_eos_id, autocast)
                      for i in range(0, len(seqs), batch_size)])


@torch.no_grad()
def token_scores(U, prompts: list[list[int]], responses: list[list[int]], eos_id: int, pad_id: int,
                 autocast=contextlib.nullcontext, batch_size: int = 64) -> torch.Tensor:
    """U(C, J′) [N] read from G's own tokens, when U shares G's tokenizer (PPO's reward): the prompt G was
    given, J′ as G wrote it (without its EOS), then EOS: template(C, J′) + EOS, as U was trained to read.

    Decoding J′ and encoding the text again need not give back G's tokens (a text has several BPE
    spellings, and special tokens are dropped by decoding): U then scores exactly what G wrote.
    """
    seqs = [p + r + [eos_id] for p, r in zip(prompts, responses, strict=True)]
    return torch.cat([scores_of(U, seqs[i : i + batch_size], pad_id, autocast) for i in range(0, len(seqs), batch_size)])


def best_of_n(u, n: int) -> list[int]:
    """Best-of-N: u holds U's scores of n samples per CV, CV after CV; the index into u of each CV's highest-scored
    sample (the first of equal ones)."""
    u = torch.as_tensor(u).view(-1, n)
    return (torch.arange(len(u)) * n + u.argmax(1)).tolist()


# ----------------------------------------------------------------------------- U's pretext

def token_idf(tok, jds: list[str]) -> dict[int, float]:
    """idf(t) = ln((1 + n) / (1 + df(t))) of each token id over n JDs, df(t) the JDs that hold t: 0 for a token
    every JD holds, ln(n) for one of a single JD. Tokens no JD holds have none."""
    df: dict[int, int] = {}
    for jd in jds:
        for t in set(tok.encode(jd)):
            df[t] = df.get(t, 0) + 1
    return {t: math.log((1 + len(jds)) / (1 + n)) for t, n in df.items()}


def membership_example(tok, cv: str, jd: str, lang: str, max_len: int, idf: dict[int, float], eos_weight: float = 0.0):
    """U's input for (C, J), as u_input builds it, with the pretext's targets: (ids, y, w), y_t = 1 where the
    token at t is one of C's tokens, w_t the token's idf at J's tokens (the prompt: 0). At the EOS, where U
    reads U(C, J): y = Σ w_t y_t / Σ w_t over J's tokens, how much of J C holds, with w = eos_weight · Σ w_t
    (0: the EOS has no target)."""
    example, _, _ = sft_example(tok, cv, jd, lang, max_len)
    ids, in_jd = example["input_ids"], [label != IGNORE for label in example["labels"]]
    cv_tokens = set(tok.encode(cv))
    y = [float(t in cv_tokens) for t in ids]
    w = [idf.get(t, 0.0) if j else 0.0 for t, j in zip(ids, in_jd)]  # the EOS: no JD holds it
    if eos_weight and sum(w):
        y[-1] = sum(a * b for a, b in zip(w, y)) / sum(w)
        w[-1] = eos_weight * sum(w)
    return ids, y, w


def membership_batch(examples: list[tuple], pad_id: int):
    """input_ids, attention_mask, y and w [B, T] of membership_example's, right-padded (w = 0 on padding)."""
    ids, mask = right_pad([x for x, _, _ in examples], pad_id)
    y, w = (torch.zeros(ids.shape) for _ in range(2))
    for i, (x, yy, ww) in enumerate(examples):
        y[i, : len(x)], w[i, : len(x)] = torch.tensor(yy), torch.tensor(ww)
    return ids, mask, y, w
