"""Batched autoregressive sampling with a KV cache: how G writes J′ for a batch of CVs, and the log-probs
of what it wrote.

    out = generate(model, prompts, max_new_tokens=128, eos_id=tok.eos_id, temperature=0.7)
    out.tokens, out.logprobs, out.mask     # each [B, N]
    batch = rollout(model, prompts, ...)   # prompts and responses as one sequence, for PPO and KL
    logp, entropy = response_logprobs(model, batch.ids, batch.attention_mask, batch.prompt_len)

Prompts are left-padded so that every sequence's next token is sampled at the same column; positions
count real tokens only, so a padded prompt sees exactly what it would see alone. `logprobs` are
log softmax(logits / temperature) at the chosen tokens, before top-k/top-p filtering: the policy
π(a|s) that PPO differentiates (the filters only decide which actions get explored).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from girl.lm.model import KVCache, Transformer


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, N] new tokens; pad_id after a sequence's EOS
    logprobs: torch.Tensor  # [B, N] log π(token) under the sampling temperature; 0 where mask is False
    mask: torch.Tensor  # [B, N] True for generated tokens, up to and including EOS
    prompt: torch.Tensor  # [B, P] the left-padded prompts the tokens continue
    prompt_mask: torch.Tensor  # [B, P] 1 on real prompt tokens


def response_tokens(tok, tokens: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's generated tokens: the real ones, without the EOS that ended it."""
    return [[t for t, m in zip(row, keep) if m and t != tok.eos_id] for row, keep in zip(tokens.tolist(), mask.tolist())]


def decoded(tok, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[list, list, list]:
    """Tokens (without EOS), texts and whether each ended with EOS, of a batch of generated J′."""
    kept = response_tokens(tok, tokens, mask)
    return kept, [tok.decode(t) for t in kept], ((tokens == tok.eos_id) & mask).any(-1).tolist()


def left_pad(prompts: list[list[int]], pad_id: int, device=None):
    """input_ids and attention_mask [B, max_len] with each prompt flush right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, greedy=False, generator=None):
    """Pick one token per row of logits [B, V]; return it and its log-prob under softmax(logits / T).

    generator: one torch.Generator for the whole batch, or a list of them, one per row: then a row's draw
    depends on its own generator alone, not on which other rows share the batch (PPO's rollouts, which
    must be the same whichever process of a torchrun job samples them)."""
    logits = logits.float() / temperature
    logprobs = F.log_softmax(logits, dim=-1)
    if greedy:
        token = logits.argmax(dim=-1)
    else:
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            # keep the smallest set of most likely tokens whose probability reaches top_p
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already suffices
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(dim=-1)
        if isinstance(generator, list):
            token = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generator, strict=True)])
        else:
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return token, logprobs.gather(-1, token[:, None]).squeeze(-1)


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_id: int | None = None,
    pad_id: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> Generation:
    """Continue each prompt until it emits eos_id or max_new_tokens are written.

    pad_id fills `tokens` after a sequence's EOS. logprobs are under softmax(logits / temperature)
    (temperature 1 when greedy).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (start with BOS if there is no text)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if temperature <= 0 and not greedy:
        raise ValueError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
    if top_k is not None and top_k < 1 or top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_k must be >= 1 and top_p in (0, 1] (got {top_k}, {top_p})")
    temperature = temperature if temperature > 0 else 1.0
    weight = next(model.parameters())
    device = weight.device
    ids, attention_mask = left_pad(prompts, 0, device)  # any valid id: padding is masked out
    B, P = ids.shape
    if P + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceed the model's "
                         f"max_seq_len {model.config.max_seq_len}; shorten the prompt or ask for fewer tokens")
    cache = KVCache(model.config, B, P + max_new_tokens, device, weight.dtype)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, max_new_tokens), device=device)
    mask = torch.zeros((B, max_new_tokens), dtype=torch.bool, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    logits = model(ids, attention_mask=attention_mask, cache=cache)[:, -1]
    for t in range(max_new_tokens):
        token, logprob = sample_next(logits, temperature, top_k, top_p, greedy, generator)
        alive = ~done
        tokens[:, t] = torch.where(alive, token, pad_id)
        logprobs[:, t] = torch.where(alive, logprob, 0.0)
        mask[:, t] = alive
        if eos_id is not None:
            done = done | (token == eos_id)
        if done.all() or t == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        # finished rows go on with their sampled token (pad_id need not be a valid id); nobody reads them
        logits = model(token[:, None], attention_mask=attention_mask, cache=cache)[:, -1]
    n = t + 1
    return Generation(tokens[:, :n], logprobs[:, :n], mask[:, :n], ids, attention_mask[:, :P])


# ----------------------------------------------------------------------------- rollouts, for PPO and KL

@dataclass
class Rollout:
    ids: torch.Tensor  # [B, P + N] left-padded prompts, then the responses (padding after EOS)
    attention_mask: torch.Tensor  # [B, P + N]
    prompt_len: int  # P
    mask: torch.Tensor  # [B, N] True on response tokens up to and including EOS
    ended: torch.Tensor  # [B] whether the response ended with EOS

    @property
    def response(self) -> torch.Tensor:
        return self.ids[:, self.prompt_len:]


def rollout(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int,
            temperature: float = 1.0, generator: torch.Generator | list[torch.Generator] | None = None) -> Rollout:
    """One response per prompt from the plain tempered softmax (no top-k/top-p: the policy PPO trains
    and KL is measured for), returned as whole sequences that response_logprobs can replay.
    generator: one for the batch, or one per prompt (see sample_next)."""
    out = generate(model, prompts, max_new_tokens, eos_id=eos_id, pad_id=pad_id, temperature=temperature,
                   generator=generator)
    ended = ((out.tokens == eos_id) & out.mask).any(-1)
    return Rollout(torch.cat([out.prompt, out.tokens], 1), torch.cat([out.prompt_mask, out.mask.long()], 1),
                   out.prompt.shape[1], out.mask, ended)


def response_logprobs(model, ids, attention_mask, prompt_len: int, temperature: float = 1.0):
    """log π(a_t | s_t) of each response token and the policy's entropy there, both [B, N].

    The logits at position P−1+t predict response token t; they are divided by the rollout's
    temperature, and positions come from the attention mask, exactly as when sampling."""
    logits = model(ids, attention_mask=attention_mask)[:, prompt_len - 1 : -1].float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
