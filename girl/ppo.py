"""The numerics of PPO from recruiter feedback (GIRL §3.3), each a pure function of tensors.

Shapes: [B, T] over the response tokens of a batch of rollouts; `mask` is True on real response tokens
(up to and including EOS) and False on padding, which must change nothing.

    r_t   = −β · KL_t  (+ s at the last response token)         per_token_rewards
    A_t   = Σ_l (γλ)^l δ_{t+l},  δ_t = r_t + γ V_{t+1} − V_t       gae
    L_π   = −E[min(ρ_t A_t, clip(ρ_t, 1 ± ε) A_t)],  ρ_t = π/π_old  policy_loss
    L_V   = ½ E[max((V − R)², (clip(V, V_old ± ε_v) − R)²)]        value_loss

One PPO iteration, as train_ppo.py runs it:

    batch = rollout(actor, prompts, ...)              1. sample J′ for each CV with the KV-cache engine
    scores = U(C, J′)                                  2. score (the caller's job: U, or any function)
    stats = update(actor, critic, ref, batch, scores)  3-5. KL-penalised rewards, GAE, K epochs of clipped updates
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from girl.sampling import generate, left_pad


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of x over the positions where mask is True (along dim, or over everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked positions (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked positions; with shift_mean=False the mean is added back.
    Masked-out positions come back as 0, so whatever they held cannot leak anywhere."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    white = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return white * mask


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from the log-probs of the sampled tokens (Schulman's estimators).

    k1 = log π − log π_ref              unbiased, can be negative per token
    k3 = (ρ − 1) − log ρ, ρ = π_ref/π   unbiased, always ≥ 0, lower variance
    """
    log_ratio = logp - logp_ref
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kind must be 'k1' or 'k3', got {kind!r}")


def per_token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = −β·KL_t on every response token, plus U's score s at the last one (the EOS, when there is one)."""
    rewards = -beta * kl * mask
    last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
    return rewards.index_put((torch.arange(len(score), device=score.device), last), score, accumulate=True)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens; returns (advantages, returns).

    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1}, with V and A zero after the last real token
    (the episode ends at EOS). returns = A + V, the critic's regression target.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate, −E[min(ρA, clip(ρ, 1−ε, 1+ε)A)] over real tokens; and its diagnostics:
    clip_frac (share of tokens where clipping bound) and approx_kl (E[½(log ρ)²], the k2 estimator)."""
    log_ratio = logp - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask).item(),
             "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item()}
    return loss, stats


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """½·E[max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)]: the critic may not move its estimate by more
    than ε from the rollout's in one update, as the policy may not move its ratio."""
    clipped = values_old + torch.clamp(values - values_old, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


class KLController:
    """β of the KL penalty: fixed, or adapted toward a target KL per sequence (Ziegler et al., 2019):

        β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · n / horizon)
    """

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl_per_sequence: float, n_sequences: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, kl_per_sequence / self.target - 1))
            self.beta *= 1 + error * n_sequences / self.horizon
        return self.beta


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) over real tokens: 1 is a perfect critic, 0 no better than a constant."""
    var = masked_var(returns, mask)
    return (1 - masked_var(returns - values, mask) / var).item() if var > 0 else math.nan


# ----------------------------------------------------------------------------- one iteration

@dataclass
class PPOConfig:
    epochs: int = 4  # K passes over each batch of rollouts
    minibatch_size: int = 16
    clip: float = 0.2  # ε of the policy ratio
    value_clip: float = 0.2  # ε_v of the critic's move
    vf_coef: float = 0.1  # weight of L_V against L_π
    gamma: float = 1.0
    lam: float = 0.95
    kl_estimator: str = "k1"
    temperature: float = 1.0  # the rollout's: log-probs are always under softmax(logits / T)
    grad_clip: float = 1.0


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


def rollout(actor, prompts: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int,
            temperature: float = 1.0, generator: torch.Generator | None = None) -> Rollout:
    """Step 1: sample one response per prompt (no top-k/top-p: PPO's π is the plain tempered softmax)."""
    was_training = actor.training
    actor.eval()
    out = generate(actor, prompts, max_new_tokens, eos_id=eos_id, pad_id=pad_id, temperature=temperature,
                   generator=generator)
    actor.train(was_training)
    device = out.tokens.device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    ended = ((out.tokens == eos_id) & out.mask).any(-1)
    return Rollout(torch.cat([prompt_ids, out.tokens], 1), torch.cat([prompt_mask, out.mask.long()], 1),
                   prompt_ids.shape[1], out.mask, ended)


def response_logprobs(model, ids, attention_mask, prompt_len: int, temperature: float = 1.0):
    """log π(a_t | s_t) of each response token and the policy's entropy there, both [B, N].

    The logits at position P−1+t predict response token t; they are divided by the rollout's
    temperature, and positions come from the attention mask, exactly as when sampling."""
    logits = model(ids, attention_mask=attention_mask)[:, prompt_len - 1 : -1].float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def response_values(critic, ids, attention_mask, prompt_len: int) -> torch.Tensor:
    """V(s_t) [B, N]: the critic's head at the position just before response token t."""
    return critic.values(ids, attention_mask)[:, prompt_len - 1 : -1].float()


def update(actor, critic, ref, batch: Rollout, scores: torch.Tensor, kl_coef: float, cfg: PPOConfig,
           actor_opt, critic_opt, autocast=contextlib.nullcontext, generator: torch.Generator | None = None) -> dict:
    """Steps 3-5 on one batch of rollouts; returns the iteration's statistics.

    The old log-probs and values are computed minibatch by minibatch in the order of the first epoch,
    so that epoch's first minibatch sees identical inputs and weights: ρ = 1 exactly there (the
    model has no dropout). The reference model and U are never updated.
    """
    B, mask = len(batch.ids), batch.mask
    first_order = torch.arange(B, device=mask.device)
    chunks = lambda order: order.split(cfg.minibatch_size)  # noqa: E731
    logp_old, values_old, logp_ref = (torch.zeros(mask.shape, device=mask.device) for _ in range(3))
    with torch.no_grad(), autocast():
        for idx in chunks(first_order):
            args = (batch.ids[idx], batch.attention_mask[idx], batch.prompt_len)
            logp_old[idx] = response_logprobs(actor, *args, cfg.temperature)[0]
            logp_ref[idx] = response_logprobs(ref, *args, cfg.temperature)[0]
            values_old[idx] = response_values(critic, *args)
    kl = kl_penalty(logp_old, logp_ref, cfg.kl_estimator) * mask
    rewards = per_token_rewards(scores, kl, mask, kl_coef)
    advantages, returns = gae(rewards, values_old, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)  # over the whole batch, real tokens only

    sums: dict[str, float] = {}
    n = 0
    first_ratio_error = None
    for epoch in range(cfg.epochs):
        # the permutation is drawn where the generator lives (a CUDA generator cannot draw on the CPU)
        where = generator.device if generator is not None else mask.device
        order = first_order if epoch == 0 else torch.randperm(B, generator=generator, device=where).to(mask.device)
        for idx in chunks(order):
            args = (batch.ids[idx], batch.attention_mask[idx], batch.prompt_len)
            with autocast():
                logp, entropy = response_logprobs(actor, *args, cfg.temperature)
                values = response_values(critic, *args)
            m = mask[idx]
            if first_ratio_error is None:
                first_ratio_error = masked_mean((logp - logp_old[idx]).abs(), m).item()
            pg_loss, st = policy_loss(logp, logp_old[idx], advantages[idx], m, cfg.clip)
            vf_loss = value_loss(values, values_old[idx], returns[idx], m, cfg.value_clip)
            (pg_loss + cfg.vf_coef * vf_loss).backward()
            st["grad_norm_actor"] = torch.nn.utils.clip_grad_norm_(actor.parameters(), cfg.grad_clip).item()
            st["grad_norm_critic"] = torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip).item()
            actor_opt.step()
            critic_opt.step()
            actor_opt.zero_grad(set_to_none=True)
            critic_opt.zero_grad(set_to_none=True)
            st.update(policy_loss=pg_loss.item(), value_loss=vf_loss.item(), entropy=masked_mean(entropy, m).item())
            for k, v in st.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    stats = {k: v / n for k, v in sums.items()}
    lengths = mask.sum(-1).float()
    stats.update(
        score_mean=scores.mean().item(), score_std=scores.std().item() if B > 1 else 0.0,
        kl=(kl.sum(-1)).mean().item(),  # per sequence, under the rollout's actor
        kl_coef=kl_coef, response_length=lengths.mean().item(), eos_rate=batch.ended.float().mean().item(),
        explained_variance=explained_variance(values_old, returns, mask),
        first_minibatch_logratio=first_ratio_error)
    return stats
