"""train_ppo.py as a user runs it, on a tiny market with a tiny G and U: what it writes, that a resumed
run ends exactly where an uninterrupted one does, and the errors a user can meet."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from girl.lm.checkpoint import load_model, save_model
from girl.lm.model import RewardModel
from girl.lm.sampling import decoded, generate
from girl.lm.tokenizer import Tokenizer
from girl.market import build
from girl.reward import u_scores
from girl.template import prompt_ids

ROOT = Path(__file__).resolve().parents[1]


def run(*args, check=True):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=check, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A tiny market, G after a few SFT steps and U after a few steps on the application log's triples."""
    d = tmp_path_factory.mktemp("ppo")
    build(d / "data", "en", seed=0, n_jobs=100, seekers=dict(sft=40, rm=40, ppo=12, test=6, val=6))
    run(ROOT / "train_sft.py", "--market-dir", d / "data", "--lang", "en", "--max-steps", "4", "--eval-every", "4",
        "--oracle-cvs", "0", "--out", d / "ckpt" / "sft")
    run(ROOT / "train_rm.py", "--market-dir", d / "data", "--lang", "en", "--feedback", "log", "--samples-per-cv", "0",
        "--sft", d / "ckpt" / "sft", "--max-steps", "2", "--eval-every", "2", "--out", d / "ckpt" / "rm")
    return d


def ppo(d, out, *extra, check=True):
    return run(ROOT / "train_ppo.py", "--init", d / "ckpt", "--market-dir", d / "data", "--lang", "en",
               "--batch-size", "4", "--minibatch-size", "2", "--ppo-epochs", "2", "--max-new-tokens", "12",
               "--eval-cvs", "4", "--out", out, *extra, check=check)


def test_writes_the_new_g_and_its_metrics(init, tmp_path):
    u_file = (init / "ckpt" / "rm" / "model.safetensors").read_bytes()
    r = ppo(init, tmp_path / "ppo", "--iterations", "2", "--max-cv-tokens", "10")
    assert "iter 2/2" in r.stdout
    assert "16 CVs are longer than --max-cv-tokens 10 and are cut to it" in r.stdout  # 12 PPO + 4 held-out
    lines = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2]
    # before the first step the actor is the reference and the old policy: the KL and the log-ratio are 0 exactly
    assert lines[0]["kl"] == 0.0 and lines[0]["first_minibatch_logratio"] == 0.0
    assert lines[1]["first_minibatch_logratio"] == 0.0 and lines[1]["kl"] != 0.0

    # the new G is the actor of the last iteration, an ordinary HF causal-LM folder
    new_g = load_file(str(tmp_path / "ppo" / "model.safetensors"))
    actor = load_file(str(tmp_path / "ppo-last" / "actor" / "model.safetensors"))
    g = load_file(str(init / "ckpt" / "sft" / "model.safetensors"))
    assert new_g.keys() == actor.keys() and all(torch.equal(new_g[k], actor[k]) for k in new_g)
    assert not all(torch.equal(new_g[k], g[k]) for k in g)
    critic = load_model(tmp_path / "ppo-last" / "critic", RewardModel)
    u = load_model(init / "ckpt" / "rm", RewardModel)
    assert not torch.equal(critic.head.weight, u.head.weight)  # the critic trained ...
    assert (init / "ckpt" / "rm" / "model.safetensors").read_bytes() == u_file  # ... and U stayed as it was

    # reward_before/after: U's mean score of J′ sampled from G / the new G on the held-out CVs, recomputed here
    metrics = json.loads((tmp_path / "ppo" / "metrics.json").read_text())
    tok = Tokenizer.from_pretrained(init / "ckpt" / "sft")
    cvs = [json.loads(line)["cv"] for line in (init / "data" / "val.jsonl").read_text().splitlines()][:4]
    prompts = [prompt_ids(tok, cv, "en", 10)[0] for cv in cvs]
    for key, folder in (("reward_before", init / "ckpt" / "sft"), ("reward_after", tmp_path / "ppo")):
        out = generate(load_model(folder), prompts, 12, eos_id=tok.eos_id, pad_id=tok.pad_or_eos_id, temperature=0.7,
                       generator=torch.Generator().manual_seed(0 + 12345))  # train_ppo.py's --seed + 12345
        jds = decoded(tok, out.tokens, out.mask)[1]
        assert metrics[key] == pytest.approx(u_scores(u, tok, cvs, jds, "en").mean().item(), rel=1e-6, abs=1e-6), key


@pytest.fixture(scope="module")
def uninterrupted(init, tmp_path_factory):
    """Three iterations in one go: what interrupted runs must end equal to."""
    a = tmp_path_factory.mktemp("uninterrupted") / "a"
    ppo(init, a, "--iterations", "3")
    return a


def assert_same_end(a, b):
    for part in ("actor", "critic"):
        x = load_file(str(a.with_name(a.name + "-last") / part / "model.safetensors"))
        y = load_file(str(b.with_name(b.name + "-last") / part / "model.safetensors"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), part
    x, y = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert x["reward_after"] == y["reward_after"] and x["oracle_after"] == y["oracle_after"]
    assert len((b / "metrics.jsonl").read_text().splitlines()) == 3


def test_resumed_run_equals_uninterrupted_run(init, uninterrupted, tmp_path):
    ppo(init, tmp_path / "b", "--iterations", "2", "--save-every", "1")  # as if stopped after iteration 2
    r = ppo(init, tmp_path / "b", "--iterations", "3", "--resume")
    assert "resuming at iteration 2" in r.stdout
    assert_same_end(uninterrupted, tmp_path / "b")


def test_k3_and_the_adaptive_beta_are_used_and_resumed(init, uninterrupted, tmp_path):
    """--kl-estimator k3 reaches the update (iteration 2 measures another KL than k1's from the same rollouts:
    iteration 1 is the same for both, since the actor is still the reference), and the adaptive β a run
    reached is the one --resume goes on with: otherwise the rewards of iteration 3, and so its actor, differ."""
    flags = ("--kl-estimator", "k3", "--kl-target", "0.01", "--kl-horizon", "50")
    ppo(init, tmp_path / "a", "--iterations", "3", *flags)
    ppo(init, tmp_path / "b", "--iterations", "2", "--save-every", "1", *flags)
    ppo(init, tmp_path / "b", "--iterations", "3", "--resume", *flags)
    assert_same_end(tmp_path / "a", tmp_path / "b")
    read = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    k3, k1 = read(tmp_path / "a"), read(uninterrupted)
    assert k3[0]["kl"] == k1[0]["kl"] == 0.0 and k3[1]["kl"] != k1[1]["kl"] and k3[1]["kl"] >= 0  # k3 >= 0 per token
    betas = [line["kl_coef"] for line in k3]
    assert betas[0] == 0.2 and len(set(betas)) == 3  # the default β; it moved at every iteration (KL 0 < target: down by 0.2·4/50)
    assert betas[1] == pytest.approx(0.2 * (1 - 0.2 * 4 / 50), rel=1e-12)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["final_kl_coef"] == \
        json.loads((tmp_path / "a" / "metrics.json").read_text())["final_kl_coef"]


def test_sigterm_saves_the_iteration_and_resume_goes_on_exactly(init, uninterrupted, tmp_path):
    """SIGTERM just after iteration 1's progress line, with --save-every 10: the iteration in progress is finished
    and saved (actor, critic, optimizers, metrics line), the run exits 143, and --resume ends where the
    uninterrupted run ends."""
    args = [sys.executable, ROOT / "train_ppo.py", "--init", init / "ckpt", "--market-dir", init / "data", "--lang", "en",
            "--batch-size", "4", "--minibatch-size", "2", "--ppo-epochs", "2", "--max-new-tokens", "12",
            "--eval-cvs", "4", "--iterations", "3", "--out", tmp_path / "b"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if line.startswith("iter 1/3"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    done = json.loads((tmp_path / "b-last" / "actor" / "trainer_state.json").read_text())["iteration"]
    assert done in (1, 2) and f"stopped by SIGTERM after iteration {done}" in out  # 1 if it came before the check
    r = ppo(init, tmp_path / "b", "--iterations", "3", "--resume")
    assert f"resuming at iteration {done}" in r.stdout
    assert_same_end(uninterrupted, tmp_path / "b")


def test_errors_a_user_can_meet(init, tmp_path):
    r = ppo(init, tmp_path / "o", "--init", tmp_path / "nothing", check=False)
    assert r.returncode == 2 and "run python train_sft.py first" in r.stderr
    # a U whose tokenizer is not G's: the critic could not read G's tokens
    other = tmp_path / "rm-other"
    save_model(other, load_model(init / "ckpt" / "rm", RewardModel),
               Tokenizer.train(["a tokenizer trained on other text", "has other merges"], 300))
    r = ppo(init, tmp_path / "o", "--rm", other, check=False)
    assert r.returncode == 2 and "another tokenizer" in r.stderr
    for flag, value, message in (("--gamma", "1.5", "must be finite and >= 0 and <= 1, got 1.5"),
                                 ("--critic-lr", "inf", "must be finite and > 0, got inf"),
                                 ("--minibatch-size", "0", "must be >= 1, got 0")):
        r = ppo(init, tmp_path / "o", flag, value, check=False)
        assert r.returncode == 2 and f"argument {flag}: {message}" in r.stderr, flag
    r = ppo(init, tmp_path / "o", "--lr", "1e30", "--iterations", "2", check=False)  # the weights blow up
    assert r.returncode == 2 and "error: iteration 1: the loss is not finite (u_score" in r.stderr, r.stderr
    assert "policy_loss nan" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "cvs.jsonl"
    bad.write_text('{"cv": "a CV"}\n{"cv": 3}\n')
    r = ppo(init, tmp_path / "o", "--data", bad, check=False)
    assert r.returncode == 2 and f"{bad}:2" in r.stderr
    assert not (tmp_path / "o").exists()
