"""PPO's numerics against numbers computed by hand, and padding that changes nothing."""

import copy
import math

import pytest
import torch

from girl import ppo
from girl.lm.model import Config, RewardModel, Transformer
from girl.lm.sampling import generate, response_logprobs, rollout
from girl.losses import masked_mean, masked_var, masked_whiten, policy_loss, value_loss
from girl.ppo import KLController, explained_variance, gae, kl_penalty, per_token_rewards, shaped_scores


def test_kl_estimators_by_hand():
    logp, logp_ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_penalty(logp, logp_ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    # k3 = ρ − 1 − log ρ with ρ = π_ref / π = exp(−0.5), exp(1)
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    assert kl_penalty(logp, logp_ref, "k3").tolist() == pytest.approx(k3, rel=1e-6)
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="'k1' or 'k3'"):
        kl_penalty(logp, logp_ref, "k2")


def test_masked_statistics_by_hand_and_blind_to_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx(2.5)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 4.0])
    assert masked_var(x, mask).item() == pytest.approx(5 / 3)  # (1.5² + 0.5² + 0.5² + 1.5²) / 3
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(5 / 4)
    white = masked_whiten(x, mask)
    expected = [[(v - 2.5) / math.sqrt(5 / 3) for v in (1, 2, 3)], [(4 - 2.5) / math.sqrt(5 / 3), 0, 0]]
    assert white.tolist()[0] == pytest.approx(expected[0], rel=1e-6)
    assert white.tolist()[1] == pytest.approx(expected[1], rel=1e-6)
    assert masked_whiten(x, mask, shift_mean=False)[0, 0].item() == pytest.approx(expected[0][0] + 2.5, rel=1e-6)
    other = x.clone()
    other[~mask] = 7.0  # what sits under the padding changes nothing
    for f in (masked_mean, masked_var, masked_whiten):
        assert torch.equal(f(x, mask), f(other, mask))


def test_per_token_rewards_by_hand():
    score = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    r = per_token_rewards(score, kl, mask, beta=0.5)
    assert r.tolist()[0] == pytest.approx([-0.05, -0.1, -0.15 + 2.0])
    assert r.tolist()[1] == pytest.approx([-0.2, -0.25 - 1.0, 0.0])  # the score lands on the last real token


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # δ = (0, 0, 0.5); A_2 = 0.5, A_1 = 0 + 0.5·0.5, A_0 = 0 + 0.5·0.25
    assert adv.tolist()[0] == pytest.approx([0.125, 0.25, 0.5])
    assert ret.tolist()[0] == pytest.approx([0.625, 0.75, 1.0])


def test_gae_equals_a_naive_loop_on_random_masked_batches():
    g = torch.Generator().manual_seed(0)
    B, T, gamma, lam = 6, 12, 0.99, 0.95
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [12, 1, 5, 9, 3, 12]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        a, expected = 0.0, [0.0] * T
        for t in reversed(range(n)):
            next_v = values[i, t + 1].item() if t + 1 < n else 0.0
            a = rewards[i, t].item() + gamma * next_v - values[i, t].item() + gamma * lam * a
            expected[t] = a
        assert adv[i].tolist() == pytest.approx(expected, abs=1e-12)
        assert ret[i, :n].tolist() == pytest.approx([e + v for e, v in zip(expected, values[i, :n].tolist())], abs=1e-12)
        assert (ret[i, n:] == 0).all()


def test_policy_loss_by_hand():
    logp_old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = policy_loss(logp, logp_old, adv, mask, clip=0.2)
    # token 0: max(−1.5, −1.2) = −1.2 (clipped); token 1: max(−0.5, −0.8) = −0.5; token 2: max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3, rel=1e-6)
    assert stats["clip_frac"] == pytest.approx(1 / 3)
    assert stats["approx_kl"] == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in (1.5, 0.5, 1.1)) / 3, rel=1e-5)
    same, stats = policy_loss(logp_old, logp_old, adv, mask)  # ratio 1: the plain policy gradient
    assert same.item() == pytest.approx(-(1 + 1 - 1) / 3) and stats == {"clip_frac": 0.0, "approx_kl": 0.0}


def test_value_loss_by_hand():
    values_old = torch.zeros(1, 2)
    values = torch.tensor([[0.5, -0.1]])
    returns = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # token 0: max((0.5−1)², (0.2−1)²) = 0.64 (the update is clipped to 0.2); token 1: (−0.1+1)² = 0.81
    assert value_loss(values, values_old, returns, mask, clip=0.2).item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)


def test_losses_unchanged_when_padding_is_stripped():
    g = torch.Generator().manual_seed(1)
    B, T = 4, 7
    lengths = torch.tensor([7, 2, 5, 1])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp, logp_old, adv, v, v_old, ret = (torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(6))
    flat = [t[mask][None, :] for t in (logp, logp_old, adv, v, v_old, ret)]
    ones = torch.ones_like(flat[0], dtype=torch.bool)
    loss, stats = policy_loss(logp, logp_old, adv, mask)
    loss_flat, stats_flat = policy_loss(*flat[:3], ones)
    assert loss.item() == pytest.approx(loss_flat.item(), abs=1e-12) and stats == pytest.approx(stats_flat)
    assert value_loss(v, v_old, ret, mask).item() == pytest.approx(value_loss(*flat[3:], ones).item(), abs=1e-12)
    assert explained_variance(v, ret, mask) == pytest.approx(explained_variance(flat[3], flat[5], ones), abs=1e-12)


def test_kl_controller():
    fixed = KLController(0.1)
    assert fixed.update(kl_per_sequence=50.0, n_sequences=64) == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=10000)
    assert adaptive.update(12.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))  # error clipped at +0.2
    # 5.4 / 6 − 1 = −0.1, inside the clip
    assert adaptive.update(5.4, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000) * (1 - 0.1 * 64 / 10000))


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- the iteration on tiny models

TINY = Config(vocab_size=16, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=64)
TARGET, EOS = 3, 15


def toy_models(seed=0):
    torch.manual_seed(seed)
    actor, critic = Transformer(TINY), RewardModel(TINY)
    ref = copy.deepcopy(actor).requires_grad_(False)
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0) for m in (actor, critic)]
    return actor, critic, ref, opts


def toy_reward(batch):
    """The share of the 8 response slots that hold the target token: a reward any policy can be measured on."""
    return ((batch.response == TARGET) & batch.mask).float().sum(-1) / 8


def test_rollout_is_the_prompt_then_the_sample_and_replays_its_logprobs():
    actor, *_ = toy_models()
    prompts = [[4, 5, 6, 7], [8], [9, 10]]  # ragged: left padding
    batch = rollout(actor, prompts, 8, EOS, 0, temperature=0.7, generator=torch.Generator().manual_seed(0))
    out = generate(actor, prompts, 8, eos_id=EOS, pad_id=0, temperature=0.7, generator=torch.Generator().manual_seed(0))
    P = batch.prompt_len
    assert P == 4 and batch.ids.shape == (3, 4 + out.tokens.shape[1])
    for i, p in enumerate(prompts):  # [padding | prompt | response], masks built by hand from the lengths
        n = int(out.mask[i].sum())
        response = out.tokens[i, :n].tolist()
        assert batch.ids[i, P - len(p) : P].tolist() == p and batch.response[i, :n].tolist() == response
        assert batch.attention_mask[i].tolist() == [0] * (P - len(p)) + [1] * (len(p) + n) + [0] * (len(out.mask[i]) - n)
        assert bool(batch.ended[i]) == (EOS in response) and EOS not in response[:-1]
    logp, entropy = response_logprobs(actor, batch.ids, batch.attention_mask, batch.prompt_len, 0.7)
    # a full forward under the same temperature and positions gives the sampler's (cached) log-probs
    assert torch.allclose(logp[batch.mask], out.logprobs[out.mask], atol=1e-5)
    # the entropy of softmax(logits / T), computed alone for each row in float64: −Σ p log p
    actor64 = copy.deepcopy(actor).double()
    for i, p in enumerate(prompts):
        n = int(batch.mask[i].sum())
        with torch.no_grad():
            logits = actor64(torch.tensor([p + batch.response[i, :n].tolist()]))[0, len(p) - 1 : -1] / 0.7
        probs = logits.softmax(-1)
        expected = -(probs * probs.log()).sum(-1)
        assert entropy[i, :n].tolist() == pytest.approx(expected.tolist(), rel=1e-5)  # float32 against float64
    alone = rollout(actor, [[8]], 8, EOS, 0)  # a row's log-probs do not depend on its neighbours' padding
    lp_alone, _ = response_logprobs(actor, alone.ids, alone.attention_mask, alone.prompt_len)
    ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), alone.ids], 1)
    attn = torch.cat([torch.zeros(1, 3, dtype=torch.long), alone.attention_mask], 1)
    lp_padded, _ = response_logprobs(actor, ids, attn, alone.prompt_len + 3)
    assert torch.allclose(lp_alone[alone.mask], lp_padded[alone.mask], atol=1e-6)


def test_ratio_is_exactly_one_on_the_first_minibatch():
    actor, critic, ref, (opt_a, opt_c) = toy_models()
    g = torch.Generator().manual_seed(1)
    batch = rollout(actor, torch.randint(4, 14, (32, 4), generator=g).tolist(), 8, EOS, 0, generator=g)
    stats = ppo.update(actor, critic, ref, batch, toy_reward(batch), 0.05, ppo.PPOConfig(minibatch_size=8),
                       opt_a, opt_c, generator=g)
    assert stats["first_minibatch_logratio"] == 0.0
    assert stats["kl"] == 0.0  # the actor is the reference until the first update
    assert stats["approx_kl"] > 0  # ... and then it moved


def test_ppo_raises_a_programmatic_reward_and_trains_both_models():
    actor, critic, ref, (opt_a, opt_c) = toy_models()
    ref_weights = copy.deepcopy(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    cfg = ppo.PPOConfig(minibatch_size=16)
    rewards, stats = [], []
    for _ in range(10):
        batch = rollout(actor, torch.randint(4, 14, (32, 4), generator=g).tolist(), 8, EOS, 0, generator=g)
        r = toy_reward(batch)
        rewards.append(r.mean().item())
        stats.append(ppo.update(actor, critic, ref, batch, r, 0.01, cfg, opt_a, opt_c, generator=g))
    # a random 16-token policy puts the target in 1/16 of the slots; PPO should at least quadruple that
    assert rewards[0] < 0.1 and min(rewards[-2:]) > 0.25, rewards
    # the critic learns the returns: seen value loss 0.48 → 0.01 and explained variance −80 → 0.5
    assert stats[-1]["value_loss"] < 0.1 * stats[0]["value_loss"] and stats[-1]["explained_variance"] > 0.2
    assert all(torch.equal(p, ref_weights[k]) for k, p in ref.state_dict().items())  # the reference is frozen


def test_shaped_scores_by_hand():
    """s = (U − μ)/σ for a J′ that ended with EOS, the fixed no-EOS score for one cut at max_new_tokens."""
    u = torch.tensor([3.0, 1.0, 5.0])
    ended = torch.tensor([True, True, False])
    assert shaped_scores(u, ended, mean=2.0, std=0.5, no_eos_score=-3.0).tolist() == [2.0, -2.0, -3.0]


# ----------------------------------------------------------------------------- update() as a unit

def peaked(seed, scale=4.0):
    """A tiny random LM whose head is scaled up: its next-token distributions are far from uniform (entropy
    ~1.8 nats of 2.8), so log-probs, KL to another such model and clipping all take sizeable values."""
    torch.manual_seed(seed)
    model = Transformer(TINY)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def toy_iteration(vf_coef=0.25, epochs=2, minibatch_size=4, grad_clip=math.inf):
    """Actor, critic, a reference that is *another* model (so KL ≠ 0), ragged rollouts, random scores."""
    actor, ref = peaked(0), peaked(1).requires_grad_(False)
    torch.manual_seed(2)
    critic = RewardModel(TINY)
    g = torch.Generator().manual_seed(3)
    prompts = torch.randint(4, 14, (8, 4), generator=g).tolist()
    prompts[1] = prompts[1][:2]
    batch = rollout(actor, prompts, 10, EOS, 0, temperature=0.8, generator=g)
    assert 1 < len(set(batch.mask.sum(-1).tolist())) and batch.ended.any() and not batch.ended.all()
    cfg = ppo.PPOConfig(epochs=epochs, minibatch_size=minibatch_size, vf_coef=vf_coef, grad_clip=grad_clip,
                        clip=0.2, value_clip=0.1, temperature=0.8, gamma=0.99, lam=0.9)
    return actor, critic, ref, batch, torch.randn(8, generator=g), cfg


def reference_update(actor, critic, ref, batch, scores, beta, cfg, lr, seed):
    """PPO's update written out once more, from the equations and in float64, with plain SGD: per-sequence
    loops for the KL-penalised rewards and GAE, the clipped losses inline, the same minibatch order.
    Returns the updated copies of actor and critic and the statistics update() reports."""
    actor, critic, ref = (copy.deepcopy(m).double() for m in (actor, critic, ref))
    P, mask = batch.prompt_len, batch.mask
    B, N = mask.shape

    def logp_of(model, rows):  # log π(a_t | s_t) and the entropy at s_t, under softmax(logits / T)
        logits = model(batch.ids[rows], attention_mask=batch.attention_mask[rows])[:, P - 1 : -1] / cfg.temperature
        logp_all = logits.log_softmax(-1)
        return logp_all.gather(-1, batch.ids[rows, P:, None])[..., 0], -(logp_all.exp() * logp_all).sum(-1)

    def values_of(rows):  # V(s_t): the critic's head at the position before token t
        return critic(batch.ids[rows], batch.attention_mask[rows], every_position=True)[:, P - 1 : -1]

    everyone = torch.arange(B)
    with torch.no_grad():
        logp_old, logp_ref, v_old = logp_of(actor, everyone)[0], logp_of(ref, everyone)[0], values_of(everyone)
    adv, ret = torch.zeros(B, N, dtype=torch.float64), torch.zeros(B, N, dtype=torch.float64)
    kl_per_sequence = []
    for i in range(B):
        n = int(mask[i].sum())
        kl = logp_old[i, :n] - logp_ref[i, :n]  # log π/π_ref at the sampled tokens: KL(π ‖ π_ref), k1
        kl_per_sequence.append(kl.sum().item())
        r = -beta * kl  # divergence from the reference costs reward ...
        r[n - 1] += scores[i]  # ... and the score comes at the last token
        a = 0.0
        for t in reversed(range(n)):
            v_next = v_old[i, t + 1] if t + 1 < n else 0.0
            a = r[t] + cfg.gamma * v_next - v_old[i, t] + cfg.gamma * cfg.lam * a
            adv[i, t] = a
        ret[i, :n] = adv[i, :n] + v_old[i, :n]
    real = adv[mask]
    adv = (adv - real.mean()) / torch.sqrt(real.var() + 1e-8)  # whitened over the batch's real tokens

    g = torch.Generator().manual_seed(seed)
    seen = {k: [] for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl", "entropy",
                            "grad_norm_actor", "grad_norm_critic")}
    for epoch in range(cfg.epochs):
        order = everyone if epoch == 0 else torch.randperm(B, generator=g)
        for rows in order.split(cfg.minibatch_size):
            m, a, R, V_old = mask[rows], adv[rows], ret[rows], v_old[rows]
            logp, entropy = logp_of(actor, rows)
            v = values_of(rows)
            ratio = (logp - logp_old[rows]).exp()
            surrogate, clipped = ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a
            l_pi = -torch.min(surrogate, clipped)[m].mean()
            v_clipped = V_old + (v - V_old).clamp(-cfg.value_clip, cfg.value_clip)
            l_v = 0.5 * torch.max((v - R) ** 2, (v_clipped - R) ** 2)[m].mean()
            (l_pi + cfg.vf_coef * l_v).backward()
            with torch.no_grad():
                for name, model in (("actor", actor), ("critic", critic)):
                    seen[f"grad_norm_{name}"].append(math.sqrt(sum(p.grad.square().sum() for p in model.parameters())))
                    for p in model.parameters():
                        p -= lr * p.grad
                        p.grad = None
            seen["policy_loss"].append(l_pi.item())
            seen["value_loss"].append(l_v.item())
            seen["clip_frac"].append((clipped < surrogate)[m].double().mean().item())
            seen["approx_kl"].append((0.5 * (logp - logp_old[rows]) ** 2)[m].mean().item())
            seen["entropy"].append(entropy[m].mean().item())
    stats = {k: sum(v) / len(v) for k, v in seen.items()}
    R, V = ret[mask], v_old[mask]
    stats.update(kl=sum(kl_per_sequence) / B, explained_variance=1 - ((R - V).var() / R.var()).item(),
                 score_mean=scores.double().mean().item(), response_length=mask.sum() / B)
    return actor, critic, stats


def steps(model, before, after) -> tuple[float, float]:
    """(largest |difference| between model's step and the reference's, largest |reference step|)."""
    pairs = list(zip(model.parameters(), before.parameters(), after.parameters()))
    diff = max((p.double() - q).abs().max().item() for p, _, q in pairs)
    step = max((q - p0.double()).abs().max().item() for _, p0, q in pairs)
    return diff, step


def test_update_lands_where_a_float64_reference_does():
    """Two epochs of two minibatches (so zero_grad, the permutation and the clipped terms all matter), γ, λ
    and T not 1, vf_coef 0.25, a reference model far from the actor: the statistics and the weights
    update() leaves must be the reference's. Tolerance: update() runs in float32 (~1e-7 per operation)
    and its gradients sum a few hundred tokens' terms, so it may miss the float64 step by 1e-5 of its size."""
    actor, critic, ref, batch, scores, cfg = toy_iteration()
    beta, lr = 0.3, 0.05
    actor64, critic64, expected = reference_update(actor, critic, ref, batch, scores, beta, cfg, lr, seed=7)
    actor0, critic0 = copy.deepcopy(actor), copy.deepcopy(critic)
    opts = [torch.optim.SGD(m.parameters(), lr=lr) for m in (actor, critic)]
    stats = ppo.update(actor, critic, ref, batch, scores, beta, cfg, *opts, generator=torch.Generator().manual_seed(7))
    assert expected["kl"] > 0.5 and expected["clip_frac"] > 0.05  # the test exercises both
    for key, value in expected.items():
        assert stats[key] == pytest.approx(float(value), rel=1e-5), key
    for name, model, before, after in (("actor", actor, actor0, actor64), ("critic", critic, critic0, critic64)):
        diff, step = steps(model, before, after)
        assert step > 1e-3 and diff <= 1e-5 * step, (name, diff, step)


def test_update_whitens_the_advantages_the_policy_loss_sees(monkeypatch):
    actor, critic, ref, batch, scores, cfg = toy_iteration(epochs=1)
    seen = []

    def recording_policy_loss(logp, logp_old, advantages, mask, clip):
        seen.append(advantages[mask])
        return policy_loss(logp, logp_old, advantages, mask, clip)

    monkeypatch.setattr(ppo, "policy_loss", recording_policy_loss)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in (actor, critic)]
    ppo.update(actor, critic, ref, batch, scores * 10 + 3, 0.3, cfg, *opts)
    advantages = torch.cat(seen).double()  # one epoch: every real token exactly once
    assert len(seen) == 2 and len(advantages) == int(batch.mask.sum())
    # float32 sums of ~70 values of size ~1: mean 0 and unbiased variance 1 to ~1e-6
    assert abs(advantages.mean().item()) < 1e-6 and abs(advantages.var().item() - 1) < 1e-5


def test_vf_coef_weights_the_critics_step():
    """vf_coef = 0: the critic gets a zero gradient and Adam leaves it bit for bit; otherwise its first SGD
    step (values = values_old, so the clip is not active) is linear in vf_coef."""
    actor, critic, ref, batch, scores, cfg = toy_iteration(vf_coef=0.0)
    before = copy.deepcopy(critic.state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0) for m in (actor, critic)]
    ppo.update(actor, critic, ref, batch, scores, 0.3, cfg, *opts)
    assert all(torch.equal(p, before[k]) for k, p in critic.state_dict().items())

    moves = {}
    for vf_coef in (0.5, 1.0):
        actor, critic, ref, batch, scores, cfg = toy_iteration(vf_coef=vf_coef, epochs=1, minibatch_size=8)
        head = critic.head.weight.detach().clone()
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (actor, critic)]
        ppo.update(actor, critic, ref, batch, scores, 0.3, cfg, *opts)
        moves[vf_coef] = critic.head.weight.detach() - head
    assert moves[1.0].abs().max() > 1e-3
    assert torch.allclose(moves[0.5], 0.5 * moves[1.0], rtol=1e-5, atol=1e-5 * moves[1.0].abs().max().item())


def test_grad_clip_bounds_each_models_step():
    """One SGD step with grad_clip c moves each model by exactly lr·c in norm when its gradient is larger."""
    for clip in (1e-3, 2e-3):
        actor, critic, ref, batch, scores, cfg = toy_iteration(epochs=1, minibatch_size=8, grad_clip=clip)
        before = [[p.detach().clone() for p in m.parameters()] for m in (actor, critic)]
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (actor, critic)]
        stats = ppo.update(actor, critic, ref, batch, scores, 0.3, cfg, *opts)
        assert stats["grad_norm_actor"] > clip and stats["grad_norm_critic"] > clip  # norms before clipping
        for model, old in zip((actor, critic), before):
            norm = torch.cat([(p.detach() - o).flatten() for p, o in zip(model.parameters(), old)]).norm().item()
            assert norm == pytest.approx(0.1 * clip, rel=1e-4)  # float32 steps of ~1e-5 on weights of ~1e-2


def test_the_kl_penalty_pulls_the_actor_back_to_the_reference():
    """With no score at all, the only reward is −β·KL(π ‖ π_ref): eight PPO iterations on fresh rollouts must
    bring the actor closer to the reference, measured exactly (over the whole vocabulary, at the states the
    actor visits on a fixed set of prompts). Seen: 1.11 → 0.33 nats per J′; with the penalty's sign wrong
    the actor is rewarded for moving away and it grows to ~8."""
    actor, ref = peaked(0), peaked(1).requires_grad_(False)
    torch.manual_seed(2)
    critic = RewardModel(TINY)
    with torch.no_grad():
        critic.head.weight.zero_()  # V = 0 at first: the advantages are the KL penalties alone, not critic noise
    g = torch.Generator().manual_seed(3)
    cfg = ppo.PPOConfig(epochs=2, minibatch_size=16, temperature=0.8)
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0) for m in (actor, critic)]

    def exact_kl():
        seen = torch.Generator().manual_seed(99)
        batch = rollout(actor, torch.randint(4, 14, (64, 4), generator=seen).tolist(), 10, EOS, 0, 0.8, seen)
        with torch.no_grad():
            logp, logp_ref = response_logprobs_all(actor, batch), response_logprobs_all(ref, batch)
        return ((logp.exp() * (logp - logp_ref)).sum(-1) * batch.mask).sum().item() / 64

    before = exact_kl()
    for _ in range(8):
        batch = rollout(actor, torch.randint(4, 14, (32, 4), generator=g).tolist(), 10, EOS, 0, 0.8, g)
        ppo.update(actor, critic, ref, batch, torch.zeros(32), 1.0, cfg, *opts, generator=g)
    after = exact_kl()
    assert before > 1 and after < 0.5 * before, (before, after)


def response_logprobs_all(model, batch, temperature=0.8):
    """log softmax(logits / T) over the whole vocabulary at each response position, [B, N, V]."""
    logits = model(batch.ids, attention_mask=batch.attention_mask)[:, batch.prompt_len - 1 : -1]
    return (logits / temperature).log_softmax(-1)
