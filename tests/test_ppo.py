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


def test_rollout_logprobs_match_the_sampler_and_padding():
    actor, *_ = toy_models()
    g = torch.Generator().manual_seed(0)
    prompts = [[4, 5, 6, 7], [8], [9, 10]]  # ragged: left padding
    batch = rollout(actor, prompts, 8, EOS, 0, temperature=0.7, generator=g)
    g = torch.Generator().manual_seed(0)
    out = generate(actor, prompts, 8, eos_id=EOS, pad_id=0, temperature=0.7, generator=g)
    assert torch.equal(batch.response, out.tokens) and torch.equal(batch.mask, out.mask)
    logp, entropy = response_logprobs(actor, batch.ids, batch.attention_mask, batch.prompt_len, 0.7)
    # a full forward under the same temperature and positions gives the sampler's (cached) log-probs
    assert torch.allclose(logp[batch.mask], out.logprobs[out.mask], atol=1e-5)
    assert (entropy[batch.mask] > 0).all()
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
    before_actor, before_critic = copy.deepcopy(actor.state_dict()), copy.deepcopy(critic.state_dict())
    g = torch.Generator().manual_seed(0)
    cfg = ppo.PPOConfig(minibatch_size=16)
    rewards = []
    for _ in range(10):
        batch = rollout(actor, torch.randint(4, 14, (32, 4), generator=g).tolist(), 8, EOS, 0, generator=g)
        r = toy_reward(batch)
        rewards.append(r.mean().item())
        ppo.update(actor, critic, ref, batch, r, 0.01, cfg, opt_a, opt_c, generator=g)
    # a random 16-token policy puts the target in 1/16 of the slots; PPO should at least quadruple that
    assert rewards[0] < 0.1 and min(rewards[-2:]) > 0.25, rewards
    for model, before in ((actor, before_actor), (critic, before_critic)):
        assert any(not torch.equal(p, before[n]) for n, p in model.state_dict().items())
    assert torch.equal(ref.layers[0].attn.q.weight, before_actor["layers.0.attn.q.weight"])  # the reference is frozen


def test_shaped_scores_by_hand():
    """s = (U − μ)/σ for a J′ that ended with EOS, the fixed no-EOS score for one cut at max_new_tokens."""
    u = torch.tensor([3.0, 1.0, 5.0])
    ended = torch.tensor([True, True, False])
    assert shaped_scores(u, ended, mean=2.0, std=0.5, no_eos_score=-3.0).tolist() == [2.0, -2.0, -3.0]
