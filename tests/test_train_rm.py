"""train_rm.py as a user runs it, on a tiny market and a tiny G."""

import json
import os
import random
import re
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
from girl.reward import u_input, u_scores
from girl.template import prompt_ids

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
            d / "data" / "rm_val.jsonl", "--lang", "en", "--pretext-steps", "0", "--max-steps", "4", "--eval-every", "2",
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
    rejected one "Status: declined.". Ten steps must take held-out accuracy from chance to 1 and L_rmt from
    ln 2 to near 0 (seen: 0.38 → 1.0, 0.698 → 0.0003), and the U saved must be the one that scores so."""
    d = market_and_g
    for split, name in (("train", "train"), ("val", "eval")):
        rows = [json.loads(line) for line in (d / "data" / f"rm_{split}.jsonl").read_text().splitlines()]
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"cv": r["cv"], "jd_pos": "Status: approved. " + r["jd_pos"],
                        "jd_neg": "Status: declined. " + r["jd_neg"]}) + "\n" for r in rows))
    run(ROOT / "train_rm.py", "--sft", d / "sft", "--data", tmp_path / "train.jsonl", "--eval-data",
        tmp_path / "eval.jsonl", "--lang", "en", "--pretext-steps", "0", "--max-steps", "10", "--eval-every", "5", "--out", tmp_path / "rm")
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
              "--samples-per-cv", "2", "--max-new-tokens", "8", "--pretext-steps", "0", "--max-steps", "2", "--eval-every", "2"]
    r = run(ROOT / "train_rm.py", *common, "--random-jobs", "0", "--out", tmp_path / "s", check=False)
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
            "--random-jobs", "2", "--pretext-steps", "0", "--max-steps", "2", "--eval-every", "2", "--report-seekers", "10", "--candidates", "5", "--out", tmp_path / "rm")
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


def pretext_command(d, out, *extra):
    return [sys.executable, "-u", str(ROOT / "train_rm.py"), "--sft", str(d / "sft"), "--data",
            str(d / "data" / "rm_train.jsonl"), "--eval-data", str(d / "data" / "rm_val.jsonl"), "--lang", "en",
            "--batch-size", "8", "--pretext-steps", "6", "--max-steps", "3", "--eval-every", "3", "--log-every", "1",
            "--out", str(out), *extra]


def test_a_signal_in_the_pretext_saves_and_resume_goes_on_exactly(market_and_g, tmp_path):
    """Ctrl-C during the pretext: the step is finished and saved, and --resume goes on with the pretext where it
    stopped, then L_rmt, ending with the uninterrupted run's weights bit for bit. A run killed after the pretext
    (before L_rmt's first save) resumes after it: the pretext is never done twice."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(pretext_command(market_and_g, tmp_path / "a"), check=True, env=env, capture_output=True, timeout=300)
    proc = subprocess.Popen(pretext_command(market_and_g, tmp_path / "b"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("step 2/9"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    state = json.loads((tmp_path / "b-last" / "trainer_state.json").read_text())
    assert 2 <= state["step"] < 6 and f"stopped by SIGINT after step {state['step']} (pretext)" in out
    done = subprocess.run(pretext_command(market_and_g, tmp_path / "b", "--resume"), check=True, env=env,
                          capture_output=True, text=True, timeout=300)
    assert f"resuming at step {state['step']}" in done.stdout
    assert sum(line.startswith("step ") and "pretext_loss" in line for line in done.stdout.splitlines()) == 6 - state["step"]
    a, b = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("a-last", "b-last"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["steps"] == 9 and metrics["pretext_steps"] == 6
    # killed (kill -9) in L_rmt's first step, before its first evaluation: the state saved at the pretext's end
    proc = subprocess.Popen(pretext_command(market_and_g, tmp_path / "c"), stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("step 7/9"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert json.loads((tmp_path / "c-last" / "trainer_state.json").read_text())["step"] == 6


def test_pretext_overlap_gives_the_eos_a_target_of_its_own(market_and_g, tmp_path):
    """--pretext-overlap: the first pretext step of the same U on the same triples has another loss (the EOS's
    target joins J's tokens') and the same accuracy (which is of J's tokens alone)."""
    first = {}
    for overlap in ("0", "1"):
        r = subprocess.run(pretext_command(market_and_g, tmp_path / overlap, "--pretext-steps", "1", "--max-steps", "1",
                                           "--eval-every", "1", "--report-seekers", "0", "--pretext-overlap", overlap),
                           check=True, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = next(x for x in r.stdout.splitlines() if x.startswith("step 1/2 "))
        first[overlap] = {k: float(v) for k, v in re.findall(r"(pretext_loss|acc) (\S+)", line)}
    assert first["0"]["acc"] == first["1"]["acc"] and abs(first["0"]["pretext_loss"] - first["1"]["pretext_loss"]) > 1e-3, first


def membership_accuracy(u, tok, rows):
    """The share of J's tokens (its EOS aside) whose membership in C U's head, read at each, gets right."""
    right = []
    for r in rows:
        for jd in (r["jd_pos"], r["jd_neg"]):
            ids = u_input(tok, r["cv"], jd, "en", 256)[0]
            n, cv_tokens = len(prompt_ids(tok, r["cv"], "en")[0]), set(tok.encode(r["cv"]))
            with torch.no_grad():
                said = u(torch.tensor([ids]), every_position=True)[0, n:-1] > 0
            right += [bool(s) == (t in cv_tokens) for s, t in zip(said.tolist(), ids[n:-1])]
    return sum(right) / len(right)


def test_the_pretext_teaches_u_which_of_js_tokens_c_holds(market_and_g, tmp_path):
    """U's head read at J's tokens says whether C holds each, on held-out triples, after 40 pretext steps (and one
    step of L_rmt), or after 40 steps of L_rmt with the pretext's loss kept on beside it (--pretext-coef); 40 steps
    of L_rmt alone do not teach it (seen: 0.79, 0.82; 0.45)."""
    d = market_and_g
    val = [json.loads(line) for line in (d / "data" / "rm_val.jsonl").read_text().splitlines()]
    acc = {}
    for pretext, coef, steps in ((40, 0, 1), (0, 1, 40), (0, 0, 40)):
        out = tmp_path / f"{pretext}-{coef}-{steps}"
        subprocess.run(pretext_command(d, out, "--pretext-steps", str(pretext), "--pretext-coef", str(coef),
                                       "--max-steps", str(steps), "--eval-every", str(steps), "--warmup", "1"),
                       check=True, capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        u, tok = load_model(out, RewardModel), Tokenizer.from_pretrained(out)
        acc[pretext, coef, steps] = membership_accuracy(u, tok, val)
    assert min(acc[40, 0, 1], acc[0, 1, 40]) > 0.7 > 0.6 > acc[0, 0, 40], acc
