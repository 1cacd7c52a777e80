"""PPO from recruiter feedback (GIRL §3.3): the reward it optimises, its advantages, and one update.

Shapes: [B, T] over the response tokens of a batch of rollouts; `mask` is True on real response tokens
(up to and including EOS) and False on padding, which must change nothing.

    s     = (U(C, J′) − μ) / σ, or a fixed low score for a J′ without EOS   shaped_scores
    r_t   = −β · KL_t  (+ s at the last response token)                     per_token_rewards
    A_t   = Σ_l (γλ)^l δ_{t+l},  δ_t = r_t + γ V_{t+1} − V_t                   gae
    L_π, L_V                                                                girl/losses.py

One PPO iteration, as train_ppo.py runs it:

    batch = rollout(actor, prompts, ...)              1. sample J′ for each CV (girl/lm/sampling.py)
    scores = shaped_scores(U(C, J′), ...)              2. score (the caller's job: U, or any function)
    stats = update(actor, critic, ref, batch, scores)  3-5. KL-penalised rewards, GAE, K epochs of clipped updates

Under torchrun each of the `world` processes samples and scores its share of the CVs (rows rank::world),
and gather_rollout gives every process the whole batch; update() then computes rewards, GAE, whitening and
every statistic on the whole batch, and splits only the forward and backward passes (see update).
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from girl.lm.sampling import Rollout, response_logprobs
from girl.losses import masked_mean, masked_var, masked_whiten, policy_loss, value_loss
from girl.training import clip_grad_norm, global_sum


def shaped_scores(u: torch.Tensor, ended: torch.Tensor, mean: float, std: float, no_eos_score: float) -> torch.Tensor:
    """The score s PPO adds at a J′'s last token: s = (U(C, J′) − μ) / σ, and s = no_eos_score for a J′ cut
    at max_new_tokens before its EOS.

    U's raw scale is arbitrary (only differences were trained): μ and σ are U's mean and std on G's
    first rollouts, fixed from then on, so β, the no-EOS score and the learning rates mean the same for
    any U. A J′ without EOS is not a JD as U was trained to read one (template + JD + EOS); scoring it
    low, rather than trusting U on it, teaches G to finish what it writes.
    """
    s = (u - mean) / std
    return torch.where(ended, s, torch.full_like(s, no_eos_score))


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


def response_values(critic, ids, attention_mask, prompt_len: int) -> torch.Tensor:
    """V(s_t) [B, N]: the critic's head at the position just before response token t."""
    return critic(ids, attention_mask, every_position=True)[:, prompt_len - 1 : -1].float()


def update(actor, critic, ref, batch: Rollout, scores: torch.Tensor, kl_coef: float, cfg: PPOConfig,
           actor_opt, critic_opt, autocast=contextlib.nullcontext, generator: torch.Generator | None = None,
           rank: int = 0, world: int = 1) -> dict:
    """Steps 3-5 on one batch of rollouts; returns the iteration's statistics.

    The old log-probs and values are computed minibatch by minibatch in the order of the first epoch,
    so that epoch's first minibatch sees identical inputs and weights: ρ = 1 exactly there (the
    model has no dropout). The reference model and U are never updated.

    Under torchrun (world > 1) every process holds the whole batch and draws the same minibatches; process
    `rank` runs the forward and backward passes of rows rank::world of each, with its loss weighted by its
    share of the minibatch's tokens, so that DDP's average of the gradients (the caller wraps actor and
    critic in DistributedDataParallel) is the gradient of the whole minibatch's loss. The minibatch size must
    be a multiple of world.
    """
    B, mask = len(batch.ids), batch.mask
    first_order = torch.arange(B, device=mask.device)
    chunks = lambda order: order.split(cfg.minibatch_size)  # noqa: E731
    logp_old, values_old, logp_ref = (torch.zeros(mask.shape, device=mask.device) for _ in range(3))
    with torch.no_grad(), autocast():
        for idx in chunks(first_order):
            mine = idx[rank::world]
            args = (batch.ids[mine], batch.attention_mask[mine], batch.prompt_len)
            logp_old[idx] = gather_rows(response_logprobs(actor, *args, cfg.temperature)[0], world)
            logp_ref[idx] = gather_rows(response_logprobs(ref, *args, cfg.temperature)[0], world)
            values_old[idx] = gather_rows(response_values(critic, *args), world)
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
            mine = idx[rank::world]
            args = (batch.ids[mine], batch.attention_mask[mine], batch.prompt_len)
            with autocast():
                logp, entropy = response_logprobs(actor, *args, cfg.temperature)
                values = response_values(critic, *args)
            m = mask[mine]
            share = (m.sum() / mask[idx].sum()).item()  # this process's part of the minibatch's tokens (1 alone)
            pg_loss, st = policy_loss(logp, logp_old[mine], advantages[mine], m, cfg.clip)
            vf_loss = value_loss(values, values_old[mine], returns[mine], m, cfg.value_clip)
            ((pg_loss + cfg.vf_coef * vf_loss) * (share * world)).backward()
            st.update(policy_loss=pg_loss.item(), value_loss=vf_loss.item(), entropy=masked_mean(entropy, m).item())
            if first_ratio_error is None:
                st["first_minibatch_logratio"] = masked_mean((logp - logp_old[mine]).abs(), m).item()
            if world > 1:  # each process's means, weighted by its share of the tokens, summed: the minibatch's means
                st = global_sum({k: v * share for k, v in st.items()}, world, mask.device)
            first_ratio_error = st.pop("first_minibatch_logratio", first_ratio_error)
            st["grad_norm_actor"] = clip_grad_norm(actor, cfg.grad_clip)
            st["grad_norm_critic"] = clip_grad_norm(critic, cfg.grad_clip)
            actor_opt.step()
            critic_opt.step()
            actor_opt.zero_grad(set_to_none=True)
            critic_opt.zero_grad(set_to_none=True)
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


# ----------------------------------------------------------------------------- several processes (torchrun)

def gather_rows(x: torch.Tensor, world: int) -> torch.Tensor:
    """Every process's rows, back in the batch's order: process r holds rows r, r + world, r + 2·world, ...
    All shares must have the same shape."""
    if world == 1:
        return x
    rows = x.to(torch.uint8) if x.dtype == torch.bool else x.contiguous()  # gloo does not carry bool
    parts = [torch.empty_like(rows) for _ in range(world)]
    torch.distributed.all_gather(parts, rows)
    return torch.stack(parts, 1).flatten(0, 1).to(x.dtype)


def gather_rollout(batch: Rollout, prompt_len: int, pad_id: int, world: int) -> Rollout:
    """The whole batch of rollouts on every process, laid out as one process would have sampled it: prompts
    left-padded to prompt_len (the batch's longest), responses right-padded to the longest of any process."""
    if world == 1:
        return batch
    n = torch.tensor([batch.mask.shape[1]], device=batch.ids.device)
    torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MAX)
    left, right = prompt_len - batch.prompt_len, int(n) - batch.mask.shape[1]
    prompt, response = batch.ids[:, : batch.prompt_len], batch.response
    ids = torch.cat([F.pad(prompt, (left, 0), value=0), F.pad(response, (0, right), value=pad_id)], 1)
    return Rollout(gather_rows(ids, world), gather_rows(F.pad(batch.attention_mask, (left, right)), world), prompt_len,
                   gather_rows(F.pad(batch.mask, (0, right)), world), gather_rows(batch.ended, world))
