"""The losses of GIRL, each a pure function of tensors with its equation, and the masked statistics
PPO's are built from.

    L_sft = −(1/|J|) Σ_{t ∈ J} log p_θ(x_t | x_<t)                     sft_loss     (stage 1, §3.1)
    L_rmt = −log σ(U(C, J+) − U(C, J−))                               rm_loss      (stage 2, §3.2)
    L_π   = −E[min(ρ_t A_t, clip(ρ_t, 1 ± ε) A_t)],  ρ_t = π/π_old     policy_loss  (stage 3, §3.3)
    L_V   = ½ E[max((V − R)², (clip(V, V_old ± ε_v) − R)²)]           value_loss   (stage 3, §3.3)
    L_M   = −E[y log σ(M) + (1 − y) log(1 − σ(M))]                     match_loss   (stage 4, §3.4)

PPO's tensors are [B, T] over the response tokens of a batch of rollouts; `mask` is True on real
response tokens (up to and including EOS) and False on padding, which must change nothing.
"""

import torch
import torch.nn.functional as F

from girl.data import IGNORE


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """L_sft = −(1/|J|) Σ_{t ∈ J} log p_θ(x_t | x_<t)   (GIRL §3.1)

    J: the positions whose label is not IGNORE (the JD's tokens and its EOS). logits [B, T, V] at
    position t predict token t+1, so they are compared with labels shifted by one.
    reduction="sum" gives Σ instead of the mean, for averaging over several micro-batches.
    """
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE, reduction=reduction)


def rm_loss(r_pos: torch.Tensor, r_neg: torch.Tensor, margin: float = 0.0, center_coef: float = 0.0) -> torch.Tensor:
    """L_rmt = −log σ(U(C, J+) − U(C, J−) − m) + η · (U(C, J+) + U(C, J−))²   (GIRL §3.2), batch mean.

    The first term is the paper's pairwise loss (m = 0): the accepted JD should score above the rejected
    one. A margin m > 0 asks for a gap of at least m (as in Llama 2's reward model). The centering term
    with coefficient η keeps rewards near zero mean, since the pairwise term sees only differences.
    """
    return -F.logsigmoid(r_pos - r_neg - margin).mean() + center_coef * ((r_pos + r_neg) ** 2).mean()


def match_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_M = −E[y·log σ(M(C, J, J′)) + (1 − y)·log(1 − σ(M(C, J, J′)))]   (GIRL §3.4), batch mean.

    Binary cross-entropy of the matcher's logits against the recruiter's decisions (y = 1 accepted),
    computed from the logits (log σ(x) = −softplus(−x)), which stays finite however large they grow.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


# ----------------------------------------------------------------------------- PPO's

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
