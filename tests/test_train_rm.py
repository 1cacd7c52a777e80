"""train_rm.py as a user runs it, on a tiny market and a tiny G."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from girl import market, ranking
from girl.lexical import TfIdf
from girl.lm.checkpoint import load_model
from girl.lm.model import RewardModel
from girl.lm.tokenizer import Tokenizer
from girl.market import build
from girl.reward import u_scores

ROOT = Path(__file__).resolve().parents[1]


def run(*args, check=True):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=check, cwd=ROOT)


@pytest.fixture(scope="module")
def market_and_g(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    build(d / "data", "en", seed=0, n_jobs=100, seekers=dict(sft=40, rm=40, ppo=0, test=20, val=20))
    run(ROOT / "train_sft.py", "--data", d / "data" / "sft_train.jsonl", "--lang", "en", "--max-steps", "2",
        "--eval-every", "2", "--out", d / "sft")
    return d


def test_train_rm_writes_a_reward_model_smaller_than_g(market_and_g, tmp_path):
    d = market_and_g
    r = run(ROOT / "train_rm.py", "--sft", d / "sft", "--data", d / "data" / "rm_train.jsonl", "--eval-data",
            d / "data" / "rm_val.jsonl", "--lang", "en", "--max-steps", "4", "--eval-every", "2",
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


def test_u_learns_a_preference_with_a_known_answer(market_and_g, tmp_path):
    """The market's triples with the answer written in: every accepted JD starts "Status: approved.", every
    rejected one "Status: declined.". Fifteen steps must take held-out accuracy from chance to 1 and L_rmt from
    ln 2 to near 0 (seen: 0.35 → 1.0, 0.704 → 0.016; after 10 steps 0.058), and the U saved must be the one that scores so."""
    d = market_and_g
    for split, name in (("train", "train"), ("val", "eval")):
        rows = [json.loads(line) for line in (d / "data" / f"rm_{split}.jsonl").read_text().splitlines()]
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"cv": r["cv"], "jd_pos": "Status: approved. " + r["jd_pos"],
                        "jd_neg": "Status: declined. " + r["jd_neg"]}) + "\n" for r in rows))
    run(ROOT / "train_rm.py", "--sft", d / "sft", "--data", tmp_path / "train.jsonl", "--eval-data",
        tmp_path / "eval.jsonl", "--lang", "en", "--max-steps", "15", "--eval-every", "5", "--out", tmp_path / "rm")
    metrics = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    assert metrics["initial_eval_loss"] > 0.6 and metrics["initial_eval_accuracy"] < 0.7
    assert metrics["eval_loss"] < 0.05 and metrics["eval_accuracy"] == 1.0
    u, tok = load_model(tmp_path / "rm", RewardModel), Tokenizer.from_pretrained(tmp_path / "rm")
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    cvs = [r["cv"] for r in rows]
    pos = u_scores(u, tok, cvs, [r["jd_pos"] for r in rows], "en")
    neg = u_scores(u, tok, cvs, [r["jd_neg"] for r in rows], "en")
    assert (pos > neg).all()
    assert -torch.nn.functional.logsigmoid(pos - neg).mean().item() == pytest.approx(metrics["eval_loss"], rel=1e-3)


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
    r = run(ROOT / "train_rm.py", *common, "--feedback", "samples", "--out", tmp_path / "s", check=False)
    assert r.returncode == 2 and "no training triples" in r.stderr and "--feedback log" in r.stderr
    assert not (tmp_path / "s").exists()
    r = run(ROOT / "train_rm.py", *common, "--feedback", "both", "--out", tmp_path / "b")
    assert "recruiter comparisons of G's samples: 0 training" in r.stdout
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["samples_train_pairs"] == 0 and metrics["eval_pairs"] > 0
    for flag in (["--feedback", "samples"], ["--random-jobs", "1"]):
        r = run(ROOT / "train_rm.py", "--sft", d / "sft", "--data", d / "data" / "rm_train.jsonl", *flag,
                "--out", tmp_path / "o", check=False)
        assert r.returncode == 2 and "needs the market's simulated recruiter" in r.stderr, flag


def test_u_learns_from_random_jobs_and_stands_beside_the_lexical_reference(market_and_g, tmp_path):
    """On the market U can also learn the recruiter's comparisons of accepted JDs with random jobs of the market
    (--random-jobs 2: two per CV), and its report puts it beside the lexical reference and the oracle on
    the validation seekers: each number recomputed here from the U saved and the market's files."""
    d = market_and_g
    r = run(ROOT / "train_rm.py", "--market-dir", d / "data", "--lang", "en", "--sft", d / "sft", "--feedback", "log",
            "--random-jobs", "2", "--max-steps", "2", "--eval-every", "2", "--report-seekers", "10", "--candidates", "5", "--out", tmp_path / "rm")
    metrics = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    read = lambda name: [json.loads(line) for line in (d / "data" / f"{name}.jsonl").read_text().splitlines()]
    train, val = read("rm_train"), read("rm_val")
    jds, jobs = market.load_jobs(d / "data")
    easy = market.random_job_comparisons(train, jds, 2, "en", random.Random(0))
    assert metrics["random_job_pairs"] == len(easy) > 0 and metrics["train_pairs"] == len(train) + len(easy)
    assert "U as a judge of fit, validation seekers" in r.stdout
    u, tok = load_model(tmp_path / "rm", RewardModel), Tokenizer.from_pretrained(tmp_path / "rm")
    lexical = TfIdf().fit(jds)
    cvs = [x["cv"] for x in val]
    scored = {"U": lambda c, j: u_scores(u, tok, c, j, "en").numpy(), "lexical C→J": lexical.cosine}
    triples, on_jobs = metrics["judges"]["triples"], metrics["judges"]["jobs"]
    for name, f in scored.items():
        right = ranking.ordered(f(cvs, [x["jd_pos"] for x in val]), f(cvs, [x["jd_neg"] for x in val]))
        assert triples[name]["accuracy"] == pytest.approx(right.mean(), abs=1e-12), name
    assert triples["U"]["accuracy"] == pytest.approx(metrics["eval_accuracy"], rel=1e-6)  # the chosen U (a float32 mean)
    assert triples["oracle f (ceiling)"]["accuracy"] == pytest.approx(market.oracle_accuracy(val, "en"), abs=1e-12)
    d_acc = triples["U - lexical C→J"]["accuracy"]
    assert d_acc["diff"] == pytest.approx(triples["U"]["accuracy"] - triples["lexical C→J"]["accuracy"], abs=1e-12)
    assert d_acc["lo"] <= d_acc["diff"] <= d_acc["hi"]
    held = market.heldout(d / "data", 10, "val")
    seekers = market.seekers(held)
    attrs = [j.attributes() for j in jobs]
    best = [max(range(len(jobs)), key=lambda i: market.compatibility(s, attrs[i])) for s in seekers]
    rng = random.Random(0)
    random_job = [rng.randrange(len(jobs)) for _ in seekers]
    vcv = [x["cv"] for x in held]
    u_best, u_random = scored["U"](vcv, [jds[i] for i in best]), scored["U"](vcv, [jds[i] for i in random_job])
    assert on_jobs["U"]["best_vs_random"] == pytest.approx(ranking.ordered_share(u_best, u_random), abs=1e-12)
    assert on_jobs["oracle f (ceiling)"]["ndcg@10"] == 1.0  # the oracle ranks by the gains themselves
    ndcg = []
    for i, c in enumerate(vcv):
        top = sorted(range(len(jds)), key=lambda j: -lexical.cosine([c], [jds[j]])[0])[:5]
        gains = [market.compatibility(seekers[i], attrs[j]) for j in top]
        ndcg.append(ranking.ndcg_at_k(scored["U"]([c] * 5, [jds[j] for j in top]), gains, 10))
    assert on_jobs["U"]["ndcg@10"] == pytest.approx(float(np.nanmean(ndcg)), rel=1e-9)


def rm_command(d, out, *extra):
    return [sys.executable, "-u", str(ROOT / "train_rm.py"), "--sft", str(d / "sft"), "--data",
            str(d / "data" / "rm_train.jsonl"), "--eval-data", str(d / "data" / "rm_val.jsonl"), "--lang", "en",
            "--batch-size", "8", "--max-steps", "6", "--eval-every", "3", "--log-every", "1", "--out", str(out), *extra]


def test_a_signal_saves_and_resume_goes_on_exactly(market_and_g, tmp_path):
    """Ctrl-C in L_rmt's step 2 of 6: the step is finished and saved, and --resume goes on where it stopped, ending
    with the uninterrupted run's weights bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(rm_command(market_and_g, tmp_path / "a"), check=True, env=env, capture_output=True, timeout=300)
    proc = subprocess.Popen(rm_command(market_and_g, tmp_path / "b"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("step 2/6"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    state = json.loads((tmp_path / "b-last" / "trainer_state.json").read_text())
    assert 2 <= state["step"] < 6 and f"stopped by SIGINT after step {state['step']}" in out
    done = subprocess.run(rm_command(market_and_g, tmp_path / "b", "--resume"), check=True, env=env,
                          capture_output=True, text=True, timeout=300)
    assert f"resuming at step {state['step']}" in done.stdout
    assert sum(line.startswith("step ") for line in done.stdout.splitlines()) == 6 - state["step"]
    a, b = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("a-last", "b-last"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 6
