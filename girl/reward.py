"""What the reward model U reads and what it gives (GIRL §3.2): the one place where U's input is built.

U(C, J) reads template(C, J), then a line of the tokens of J that C holds, then EOS, and gives one scalar at
that EOS (girl/lm/model.py's RewardModel):

    [BOS] role · instruction · input: CV · output: JD · shared: tokens of J in C [EOS]

The shared line states what a small U cannot learn to see from a few thousand comparisons: whether the
city in J is *this* CV's city, which of J's skills are the CV's. Read from G's embeddings, in which two
cities are nearly one vector, a 2-layer U without it orders a seeker's best job above a random one by
chance; with it, 0.955-0.985 of the time over three seeds (README, stage 2). U still learns, from L_rmt, which
shared tokens count.

    u = u_scores(U, tok_u, cvs, jds, lang)                 # U(C, J) of texts, in U's own tokenizer
    u = token_scores(U, tok, prompts, cvs, responses, lang)  # U(C, J′) of G's own tokens (same tokenizer)
    triples, cut = encode_triples(tok, rows, lang, max_len)
    r_pos, r_neg = pair_scores(U, triples, pad_id)         # U(C, J+), U(C, J−) in one forward pass
    picked = best_of_n(u, n)                               # best-of-N: the sample U scores highest, per CV
"""

import contextlib

import torch

from girl.data import IGNORE, right_pad, sft_example

SHARED = {"zh": "\n【共有】", "en": "\n### Shared:"}  # the heading of U's line of J's tokens that C holds


def shared_tokens(cv_ids: list[int], jd_ids: list[int]) -> list[int]:
    """The tokens of J that C holds, each once, in J's order."""
    cv = set(cv_ids)
    return list(dict.fromkeys(t for t in jd_ids if t in cv))


def u_tokens(tok, prompt: list[int], jd_ids: list[int], cv_ids: list[int], lang: str) -> list[int]:
    """U's input from token ids: the prompt (template(C)), J, the shared line of J's tokens in C, EOS."""
    return prompt + jd_ids + tok.encode(SHARED[lang]) + shared_tokens(cv_ids, jd_ids) + [tok.eos_id]


def u_input(tok, cv: str, jd: str, lang: str, max_len: int) -> tuple[list[int], bool]:
    """U's input for (C, J) as text, at most max_len tokens, and whether the CV or the JD was cut to fit. The
    shared line is of the whole C and J; template(C, J) makes room for it as for an SFT example of that length."""
    cv_ids, jd_ids = tok.encode(cv), tok.encode(jd)
    tail = len(tok.encode(SHARED[lang])) + len(shared_tokens(cv_ids, jd_ids))
    example, cv_cut, jd_cut = sft_example(tok, cv, jd, lang, max_len - tail)  # its EOS is U's EOS
    ids, n = example["input_ids"], example["labels"].count(IGNORE)  # n: the prompt's tokens
    jd_seen = ids[n:-1]  # without the example's EOS; a cut JD has none, and gives up its last token to U's
    return u_tokens(tok, ids[:n], jd_seen, cv_ids, lang), cv_cut or jd_cut


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
    """U(C, J) [N] of texts, as U was trained to read them: template(C, J), the shared line, EOS in U's own tokenizer
    (U may use another tokenizer than G: it reads the text)."""
    seqs = [u_input(tok_u, c, j, lang, U.config.max_seq_len)[0] for c, j in zip(cvs, jds, strict=True)]
    return torch.cat([scores_of(U, seqs[i : i + batch_size], tok_u.pad_or_eos_id, autocast)
                      for i in range(0, len(seqs), batch_size)])


@torch.no_grad()
def token_scores(U, tok, prompts: list[list[int]], cvs: list[str], responses: list[list[int]], lang: str,
                 autocast=contextlib.nullcontext, batch_size: int = 64) -> torch.Tensor:
    """U(C, J′) [N] read from G's own tokens, when U shares G's tokenizer (PPO's reward): the prompt G was
    given, J′ as G wrote it (without its EOS), the shared line of J′'s tokens that C holds, then EOS.

    Decoding J′ and encoding the text again need not give back G's tokens (a text has several BPE
    spellings, and special tokens are dropped by decoding): U then scores exactly what G wrote.
    """
    seqs = [u_tokens(tok, p, r, tok.encode(c), lang) for p, c, r in zip(prompts, cvs, responses, strict=True)]
    return torch.cat([scores_of(U, seqs[i : i + batch_size], tok.pad_or_eos_id, autocast)
                      for i in range(0, len(seqs), batch_size)])


def best_of_n(u, n: int) -> list[int]:
    """Best-of-N: u holds U's scores of n samples per CV, CV after CV; the index into u of each CV's highest-scored
    sample (the first of equal ones)."""
    u = torch.as_tensor(u).view(-1, n)
    return (torch.arange(len(u)) * n + u.argmax(1)).tolist()
