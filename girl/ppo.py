"""The numerics of PPO from recruiter feedback (GIRL §3.3), each a pure function of tensors.

Shapes: [B, T] over the response tokens of a batch of rollouts; `mask` is True on real response tokens
(up to and including EOS) and False on padding, which must change nothing.

    r_t   = −β · KL_t  (+ s at the last response token)         per_token_rewards
    A_t   = Σ_l (γλ)^l δ_{t+l},  δ_t = r_t + γ V_{t+1} − V_t       gae
    L_π   = −E[min(ρ_t A_t, clip(ρ_t, 1 ± ε) A_t)],  ρ_t = π/π_old  policy_loss
    L_V   = ½ E[max((V − R)², (clip(V, V_old ± ε_v) − R)²)]        value_loss

The training loop (rollout, scoring, epochs over minibatches) is not written yet (issue 5).
"""

import math

import torch


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
