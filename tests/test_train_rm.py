"""train_rm.py as a user runs it, on a tiny market and a tiny G."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from girl.lm.checkpoint import load_model
from girl.lm.model import RewardModel
from girl.market import build

ROOT = Path(__file__).resolve().parents[1]


def run(*args, check=True):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=check, cwd=ROOT)


@pytest.fixture(scope="module")
def market_and_g(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    build(d / "data", "en", seed=0, n_jobs=100, seekers=dict(sft=40, rm=40, ppo=0, eval=20))
    run(ROOT / "train_sft.py", "--data", d / "data" / "sft_train.jsonl", "--lang", "en", "--max-steps", "2",
        "--eval-every", "2", "--out", d / "sft")
    return d


def test_train_rm_writes_a_reward_model_smaller_than_g(market_and_g, tmp_path):
    d = market_and_g
    r = run(ROOT / "train_rm.py", "--sft", d / "sft", "--data", d / "data" / "rm_train.jsonl", "--eval-data",
            d / "data" / "rm_eval.jsonl", "--lang", "en", "--max-steps", "4", "--eval-every", "2",
            "--out", tmp_path / "rm")
    assert "eval loss" in r.stdout
    metrics = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    for key in ("eval_accuracy", "eval_loss", "reward_mean", "reward_std", "u_parameters", "g_parameters"):
        assert key in metrics
    assert metrics["u_parameters"] < metrics["g_parameters"]
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["num_labels"] == 1
    u = load_model(tmp_path / "rm", RewardModel)
    with torch.no_grad():
        assert u(torch.tensor([[1, 2, 3]])).shape == (1,)


def test_bad_triples_and_missing_g(market_and_g, tmp_path):
    bad = tmp_path / "triples.jsonl"
    bad.write_text('{"cv": "a", "jd_pos": "b", "jd_neg": "c"}\n{"cv": "a", "jd_pos": ""}\n')
    r = run(ROOT / "train_rm.py", "--sft", market_and_g / "sft", "--data", bad, "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and f"error: {bad}:2: field 'jd_pos' is empty or not a string" in r.stderr
    r = run(ROOT / "train_rm.py", "--sft", tmp_path / "nothing", "--data", market_and_g / "data" / "rm_train.jsonl",
            "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and "run python train_sft.py first" in r.stderr
    assert not (tmp_path / "o").exists()


def test_feedback_on_samples_needs_comparisons(market_and_g, tmp_path):
    """G after 2 SFT steps writes nothing the recruiter can read: every pair of its samples ties, so
    --feedback samples has nothing to learn from and says so; --feedback both falls back on the log."""
    d = market_and_g
    common = ["--market-dir", d / "data", "--lang", "en", "--sft", d / "sft", "--sample-cvs", "4",
              "--samples-per-cv", "2", "--max-new-tokens", "8", "--max-steps", "2", "--eval-every", "2"]
    r = run(ROOT / "train_rm.py", *common, "--out", tmp_path / "s", check=False)
    assert r.returncode == 2 and "no training triples" in r.stderr and "--feedback log" in r.stderr
    assert not (tmp_path / "s").exists()
    r = run(ROOT / "train_rm.py", *common, "--feedback", "both", "--out", tmp_path / "b")
    assert "recruiter comparisons of G's samples: 0 training" in r.stdout
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["samples_train_pairs"] == 0 and metrics["eval_pairs"] > 0
    r = run(ROOT / "train_rm.py", "--sft", d / "sft", "--data", d / "data" / "rm_train.jsonl", "--feedback", "samples",
            "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and "needs the market's simulated recruiter" in r.stderr
