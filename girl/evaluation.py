"""What a generator is measured by (generate.py --eval, and train_ppo.py before and after): J′ sampled
for held-out CVs with its KL to a reference policy, U's score of J′, and the diversity of J′.

    s = sample_jds(G, tok, prompts, max_new_tokens=128, temperature=0.7, generator=g, ref=G_sft)
    u = u_scores(U, tok_u, cvs, s.texts, lang)            # U(C, J′) for each J′
    distinct_n(s.tokens, 2)                                # share of distinct bigrams over all J′
"""

import contextlib
from dataclasses import dataclass

import torch

from girl.data import right_pad, sft_example
from girl.ppo import response_logprobs, rollout
from girl.sampling import generate, response_tokens


@torch.no_grad()
def u_scores(U, tok_u, cvs: list[str], jds: list[str], lang: str, autocast=contextlib.nullcontext,
             batch_size: int = 64) -> torch.Tensor:
    """U(C, J) [N] as U was trained to read it: template(C, J) + EOS in U's own tokenizer (U may use
    another tokenizer than G: it reads the text)."""
    device = next(U.parameters()).device
    pad_id = tok_u.pad_id if tok_u.pad_id is not None else tok_u.eos_id
    seqs = [sft_example(tok_u, c, j, lang, U.config.max_seq_len)[0]["input_ids"] for c, j in zip(cvs, jds, strict=True)]
    out = []
    for i in range(0, len(seqs), batch_size):
        ids, mask = right_pad(seqs[i : i + batch_size], pad_id)
        with autocast():
            out.append(U(ids.to(device), attention_mask=mask.to(device)).float())
    return torch.cat(out)


@dataclass
class Samples:
    texts: list[str]  # J′ as text, without the EOS
    tokens: list[list[int]]  # J′ as G's tokens, without the EOS
    ended: list[bool]  # whether J′ ended with EOS (not cut by max_new_tokens)
    kl: list[float] | None  # Σ_t log π(a_t|s_t) − log π_ref(a_t|s_t) per J′, when a reference is given

    @property
    def lengths(self) -> list[int]:
        """Tokens generated per J′, counting the EOS: what the policy chose to write."""
        return [len(t) + e for t, e in zip(self.tokens, self.ended)]


def decoded(tok, response: torch.Tensor, mask: torch.Tensor) -> tuple[list, list, list]:
    """Tokens (without EOS), texts and whether each ended with EOS, of a batch of generated J′."""
    tokens = response_tokens(tok, response, mask)
    return tokens, [tok.decode(t) for t in tokens], ((response == tok.eos_id) & mask).any(-1).tolist()


@torch.no_grad()
def sample_jds(G, tok, prompts: list[list[int]], max_new_tokens: int, temperature: float,
               generator: torch.Generator, ref=None, autocast=contextlib.nullcontext,
               batch_size: int = 64) -> Samples:
    """One J′ per prompt from the plain tempered softmax of G, batch by batch from one generator.

    With ref, each J′ also gets its KL term: k1 summed over the J′'s tokens, log π − log π_ref under the
    same temperature. Its mean over J′ sampled from π is an unbiased estimate of KL(π ‖ π_ref) per J′."""
    pad_id = tok.pad_id if tok.pad_id is not None else tok.eos_id
    out = Samples([], [], [], [] if ref is not None else None)
    for i in range(0, len(prompts), batch_size):
        batch = rollout(G, prompts[i : i + batch_size], max_new_tokens, tok.eos_id, pad_id, temperature, generator)
        tokens, texts, ended = decoded(tok, batch.response, batch.mask)
        out.tokens += tokens
        out.texts += texts
        out.ended += ended
        if ref is not None:
            with autocast():
                lp, _ = response_logprobs(G, batch.ids, batch.attention_mask, batch.prompt_len, temperature)
                lp_ref, _ = response_logprobs(ref, batch.ids, batch.attention_mask, batch.prompt_len, temperature)
            out.kl += ((lp - lp_ref) * batch.mask).sum(-1).tolist()
    return out


@torch.no_grad()
def greedy_jds(G, tok, prompts: list[list[int]], max_new_tokens: int, autocast=contextlib.nullcontext,
               batch_size: int = 64) -> Samples:
    """The most likely token at every step: the J′ G writes when it is not sampled (no KL: not a
    distribution to compare)."""
    pad_id = tok.pad_id if tok.pad_id is not None else tok.eos_id
    out = Samples([], [], [], None)
    for i in range(0, len(prompts), batch_size):
        with autocast():
            g = generate(G, prompts[i : i + batch_size], max_new_tokens, eos_id=tok.eos_id, pad_id=pad_id, greedy=True)
        tokens, texts, ended = decoded(tok, g.tokens, g.mask)
        out.tokens += tokens
        out.texts += texts
        out.ended += ended
    return out


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / all n-grams, over every sequence together.
    1 when no n-gram repeats anywhere; low when G writes the same J′ for everyone."""
    grams = [tuple(t[i : i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
