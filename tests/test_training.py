"""The pieces every training script shares: decay groups, the schedule, and resumable optimizer state."""

import math

import pytest
import torch

from girl.lm.checkpoint import load_model, load_optimizer, save_model
from girl.lm.model import Config, Transformer
from girl.training import lr_at, param_groups


def tiny(model_type="qwen2", tie=True):
    torch.manual_seed(0)
    return Transformer(Config(model_type=model_type, vocab_size=50, dim=16, n_layers=2, n_heads=2, n_kv_heads=1,
                              hidden_dim=32, max_seq_len=32, tie_embeddings=tie))


@pytest.mark.parametrize("model_type, tie", [("qwen2", True), ("llama", False), ("gpt2", True)])
def test_weight_decay_skips_norms_biases_and_embeddings(model_type, tie):
    model = tiny(model_type, tie)
    decay, rest = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert all(n.endswith(".weight") and "norm" not in n and "emb" not in n for n in decayed)
    assert "layers.0.attn.q.weight" in decayed and "layers.1.mlp.down.weight" in decayed
    assert ("lm_head.weight" in decayed) == (not tie)  # a head tied to the embedding is the embedding
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_lr_schedule_by_hand():
    lr, warmup, total = 1e-3, 10, 110
    assert lr_at(0, total, lr, warmup) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert lr_at(9, total, lr, warmup) == pytest.approx(1e-3)
    assert lr_at(10, total, lr, warmup) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, total, lr, warmup) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway: cos(π/2) = 0
    assert lr_at(110, total, lr, warmup) == pytest.approx(1e-4)  # ends at min_ratio · peak
    assert lr_at(35, total, lr, warmup) == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi / 4))))


def test_optimizer_state_round_trip(tmp_path):
    """After save and load, the next AdamW step is exactly the one the uninterrupted optimizer takes."""
    def step(model, opt, seed):
        torch.manual_seed(seed)
        ids = torch.randint(0, 50, (2, 8))
        model(ids).float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()

    model = tiny()
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    for seed in range(3):
        step(model, opt, seed)
    save_model(tmp_path, model, optimizer=opt, state={"step": 3})

    again = load_model(tmp_path)
    again.train()
    opt2 = torch.optim.AdamW(param_groups(again, 0.1), lr=1e-2)
    assert load_optimizer(tmp_path, again, opt2) == {"step": 3}
    step(model, opt, 99)
    step(again, opt2, 99)
    for (name, a), b in zip(model.named_parameters(), again.parameters()):
        assert torch.equal(a, b), name
