"""train_rec.py as a user runs it: on a tiny market (bit for bit again, nothing chosen on the test seekers, the best
validation step kept, interruptions, leaks dropped), generate.py --recommend with its matchers, and on a log of
the shape real ones have."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from girl import ranking
from girl.data import read_jsonl
from girl.lexical import TfIdf
from girl.recommend import (JPrimeCache, cv_features, encode_all, interaction_logits, jprime_features, load_matcher,
                            weights_digest)

ROOT = Path(__file__).resolve().parents[1]


def run(*args, check=True):
    # on the CPU, in float32, on every machine: the test compares the script's numbers with a recompute here
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=check, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


REC_FLAGS = ["--lang", "en", "--epochs", "2", "--min-steps", "0", "--eval-every", "2", "--max-new-tokens", "24",
             "--bootstrap", "20", "--rank-seekers", "8", "--val-rank-seekers", "4", "--batch-seekers", "8", "--proj", "16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny market, G after two SFT steps, train_rec.py run twice the same way, and once more on a copy of the
    market whose test seekers' decisions are reversed."""
    from girl.market import build
    d = tmp_path_factory.mktemp("rec")
    build(d / "data", "en", seed=0, n_jobs=60, seekers=dict(sft=30, rm=30, ppo=0, test=12, val=12))
    run(ROOT / "train_sft.py", "--data", d / "data" / "sft_train.jsonl", "--lang", "en", "--max-steps", "2",
        "--eval-every", "2", "--oracle-cvs", "0", "--out", d / "sft")
    shutil.copytree(d / "data", d / "data-flipped")
    test = read_jsonl(d / "data" / "interactions_test.jsonl", "interactions")
    (d / "data-flipped" / "interactions_test.jsonl").write_text(
        "".join(json.dumps(r | {"label": 1 - r["label"]}) + "\n" for r in test))
    for out, data in (("rec", "data"), ("rec-flipped", "data-flipped"), ("rec-again", "data")):
        if out == "rec-flipped":  # written over an older run's folder, which has an m0-scratch/ this run does not make
            shutil.copytree(d / "rec", d / out)
        r = run(ROOT / "train_rec.py", "--generator", d / "sft", "--market-dir", d / data, *REC_FLAGS,
                "--cache-dir", d / "cache", "--out", d / out, *(["--no-scratch"] if out == "rec-flipped" else []))
        again = r
    return d, again


def weights(folder):
    return {f: (folder / f).read_bytes() for f in ("model.safetensors", "matcher.safetensors")}


def test_train_rec_repeats_bit_for_bit(trained):
    d, _ = trained
    for name in ("m", "m0", "m0-scratch"):
        assert weights(d / "rec" / name) == weights(d / "rec-again" / name), name


def test_train_rec_chooses_nothing_on_the_test_seekers(trained):
    """Validation chooses, test reports: with every test decision reversed, the same steps are kept and the same
    matchers saved; only the report changes (the test AUC of each model becomes 1 − AUC)."""
    d, _ = trained
    same, flipped = (json.loads((d / x / "metrics.json").read_text()) for x in ("rec", "rec-flipped"))
    for name in ("m", "m0"):
        assert weights(d / "rec" / name) == weights(d / "rec-flipped" / name), name
    assert {n: same["validation"][n] for n in ("M", "M0")} == flipped["validation"]
    for model in ("M", "M0", "lexical C→J"):
        assert flipped["cold"][model]["auc"] == pytest.approx(1 - same["cold"][model]["auc"], abs=1e-12)


def test_train_rec_on_a_tiny_market(trained):
    d, r = trained
    metrics = json.loads((d / "rec" / "metrics.json").read_text())
    assert metrics["counts"]["dropped_leak"] == 0 and metrics["counts"]["train_seekers"] == 30
    assert metrics["cold"]["n_seekers"] == 12 and metrics["ranking"]["n_seekers"] == 8
    systems = {"lexical C→J", "lexical J′→J", "lexical C+J′", "M0", "M", "M0, encoder not from G", "M, oracle J′",
               "M, J′ shuffled", "oracle f (ceiling)"}
    assert systems <= set(metrics["cold"]) and systems | {"random (floor)"} <= set(metrics["ranking"])
    for split in ("cold", "warm"):
        for model in ("M", "M0"):
            assert set(metrics[split][model]) == {"auc", "gauc", "log_loss"}
        d_auc = metrics[split]["M - M0"]["auc"]
        assert d_auc["diff"] == pytest.approx(metrics[split]["M"]["auc"] - metrics[split]["M0"]["auc"], abs=1e-12)
    assert metrics["ranking"]["oracle f (ceiling)"]["ndcg@10"] == 1.0
    for name, v in metrics["validation"].items():  # each model keeps its best validation step
        assert v["chosen"] == max(v["history"], key=lambda h: (h["score"], -h["step"])) and "auc" in v["chosen"]
    # the lexical rows are the TF-IDF cosines of the market's JDs, recomputed here
    test = read_jsonl(d / "data" / "interactions_test.jsonl", "interactions")
    jobs = [json.loads(line)["jd"] for line in (d / "data" / "jobs.jsonl").read_text().splitlines()]
    lex = TfIdf().fit(jobs).cosine([r["cv"] for r in test], [r["jd"] for r in test])
    assert ranking.auc(lex, [r["label"] for r in test]) == pytest.approx(metrics["cold"]["lexical C→J"]["auc"], abs=1e-12)
    # the matchers as saved give the logits the report was computed from, and name the G whose J′ they read
    from girl.lm.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(d / "rec" / "m")
    cache = JPrimeCache(d / "cache", d / "sft", {"best_of": 1, "max_new_tokens": 24, "lang": "en"})
    jprime = {r["cv"]: cache[r["cv"]] for r in test}
    for name, folder in (("M", "m"), ("M0", "m0"), ("M0, encoder not from G", "m0-scratch")):
        s = interaction_logits(load_matcher(d / "rec" / folder), tok, test, jprime, 128).numpy()
        assert ranking.auc(s, [r["label"] for r in test]) == pytest.approx(metrics["cold"][name]["auc"], abs=1e-9)
        assert json.loads((d / "rec" / folder / "train_args.json").read_text())["generator"] == str(d / "sft")
    assert "in the cache" in r.stdout and ", 0 to write" in r.stdout  # the second run made no J′


def test_train_rec_keeps_the_best_validation_step(trained, tmp_path):
    """Trained too fast to improve steadily, a model's best validation step comes before its last: that step's
    weights are the ones saved, and they score the validation seekers as the history says."""
    d, _ = trained
    run(ROOT / "train_rec.py", "--generator", d / "sft", "--market-dir", d / "data", *REC_FLAGS, "--no-scratch",
        "--lr", "0.05", "--epochs", "4", "--eval-every", "1", "--cache-dir", d / "cache", "--out", tmp_path / "rec")
    metrics = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    for v in metrics["validation"].values():  # the start (step 0) is a candidate, then every step
        assert [h["step"] for h in v["history"]] == list(range(len(v["history"])))
        assert v["chosen"] == max(v["history"], key=lambda h: (h["score"], -h["step"]))
    assert any(v["chosen"]["step"] < v["history"][-1]["step"] for v in metrics["validation"].values())
    from girl.lm.tokenizer import Tokenizer
    val = read_jsonl(d / "data" / "interactions_val.jsonl", "interactions")
    cache = JPrimeCache(d / "cache", d / "sft", {"best_of": 1, "max_new_tokens": 24, "lang": "en"})
    M0 = load_matcher(tmp_path / "rec" / "m0")
    s = interaction_logits(M0, Tokenizer.from_pretrained(tmp_path / "rec" / "m0"), val, {r["cv"]: cache[r["cv"]] for r in val},
                           128).numpy()
    assert ranking.auc(s, [r["label"] for r in val]) == pytest.approx(metrics["validation"]["M0"]["chosen"]["auc"], abs=1e-9)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_rec_stopped_mid_run_leaves_out_as_it_was(trained, tmp_path, sig):
    """Ctrl-C or SIGTERM while the matchers train: exit 128 + the signal's number with one line and no traceback,
    and --out holds the previous run's result, every file as it was, with nothing half-written beside it."""
    d, _ = trained
    shutil.copytree(d / "rec", tmp_path / "rec")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    proc = subprocess.Popen([sys.executable, ROOT / "train_rec.py", "--generator", d / "sft", "--market-dir", d / "data",
                             *REC_FLAGS, "--min-steps", "100000", "--log-every", "1", "--cache-dir", d / "cache",
                             "--out", tmp_path / "rec"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    for line in proc.stdout:
        if line.startswith("step 3/"):
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name}: {tmp_path / 'rec'} is as it was" in err and "Traceback" not in err, err
    assert {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def test_train_rec_replaces_out_as_a_whole(trained):
    """A run writes its whole --out at once: an older run's m0-scratch/ does not stay beside a --no-scratch run's
    m/ and m0/ as if they belonged together (the fixture ran rec-flipped over a copy of rec)."""
    d, _ = trained
    assert sorted(p.name for p in (d / "rec-flipped").iterdir()) == ["m", "m0", "metrics.json", "metrics.md"]
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")]  # no temporary or old folder left beside it


def test_train_rec_with_no_room_for_a_cv_says_so(trained, tmp_path):
    d, _ = trained
    r = run(ROOT / "train_rec.py", "--generator", d / "sft", "--market-dir", d / "data", *REC_FLAGS, "--max-new-tokens",
            "100000", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "rec", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error: --max-new-tokens 100000 leaves no room for a CV in G's context" in r.stderr
    assert not (tmp_path / "rec").exists() and not (tmp_path / "cache").exists()


def test_train_rec_will_not_replace_a_folder_of_something_else(tmp_path):
    """The results replace --out as a whole: a folder that holds anything but train_rec.py's results is refused
    before any work (--out ckpt would otherwise take every checkpoint with it)."""
    (tmp_path / "ckpt" / "sft").mkdir(parents=True)
    (tmp_path / "ckpt" / "sft" / "config.json").write_text("{}")
    r = run(ROOT / "train_rec.py", "--out", tmp_path / "ckpt", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: --out {tmp_path / 'ckpt'} holds something else than train_rec.py's results" in r.stderr
    assert (tmp_path / "ckpt" / "sft" / "config.json").read_text() == "{}"


def test_train_rec_drops_seekers_g_learned_from(trained, tmp_path):
    d, _ = trained
    rows = read_jsonl(d / "data" / "rec_train.jsonl", "interactions")
    sft = read_jsonl(d / "data" / "sft_train.jsonl", "sft")
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text("".join(json.dumps(x) + "\n" for x in rows + [{"cv": sft[0]["cv"], "jd": sft[0]["jd"], "label": 1}]))
    r = run(ROOT / "train_rec.py", "--generator", d / "sft", "--data", leaky, "--test-data",
            d / "data" / "interactions_test.jsonl", "--exclude-cvs", d / "data" / "sft_train.jsonl", *REC_FLAGS,
            "--epochs", "0.3", "--no-scratch", "--cache-dir", d / "cache", "--out", tmp_path / "rec")
    assert json.loads((tmp_path / "rec" / "metrics.json").read_text())["counts"]["dropped_leak"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"cv": "a", "jd": "b", "label": "yes"}\n')
    r = run(ROOT / "train_rec.py", "--generator", d / "sft", "--data", bad, "--test-data", bad, "--out", tmp_path / "o",
            check=False)
    assert r.returncode == 2 and f"error: {bad}:1: field 'label' must be 0 or 1" in r.stderr


def test_generate_recommends_real_jobs_ranked_by_m(trained, tmp_path):
    d, _ = trained
    r = run(ROOT / "generate.py", "--recommend", "3", "--matcher", d / "rec" / "m", "--market-dir", d / "data",
            "--example", "1", "--json")
    out = json.loads(r.stdout)
    market_jds = [json.loads(line)["jd"] for line in (d / "data" / "jobs.jsonl").read_text().splitlines()]
    assert len(out["jobs"]) == 3 and all(job["jd"] in market_jds for job in out["jobs"])
    scores = [job["score"] for job in out["jobs"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert all(0 <= job["oracle"] <= 1 for job in out["jobs"])  # a market seeker: the oracle's f of each job
    # the top 3 are M's: the same as M's own scores of every job with this seeker's CV and J′
    from girl.lm.tokenizer import Tokenizer
    M, tok = load_matcher(d / "rec" / "m"), Tokenizer.from_pretrained(d / "rec" / "m")
    j = encode_all(M, tok, market_jds, 128)
    every = M.logits(cv_features(M, tok, [out["cv"]], j, market_jds, 128),
                     jprime_features(M, tok, [out["jds"][0]["jd"]], j, market_jds, 128))
    best = torch.sigmoid(every[0]).topk(3)
    assert [market_jds[k] for k in best.indices.tolist()] == [job["jd"] for job in out["jobs"]]
    # your own jobs, in a batch
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"id": f"j{k}", "jd": t}) + "\n" for k, t in enumerate(market_jds[:5])))
    cvs = tmp_path / "cvs.jsonl"
    cvs.write_text(json.dumps({"cv": out["cv"]}) + "\n" + json.dumps({"cv": "Name: A\nSkills: Python"}) + "\n")
    run(ROOT / "generate.py", "--recommend", "2", "--matcher", d / "rec" / "m", "--jobs", jobs, "--input", cvs,
        "--output", tmp_path / "out.jsonl", "--lang", "en")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [len(r["jobs"]) for r in rows] == [2, 2] and all(job["id"].startswith("j") for r in rows for job in r["jobs"])


def test_generate_refuses_a_matcher_of_an_older_train_rec(trained, tmp_path):
    d, _ = trained
    shutil.copytree(d / "rec" / "m", tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "matcher.json").read_text())
    (tmp_path / "m" / "matcher.json").write_text(json.dumps({k: v for k, v in spec.items() if k != "exact"}))
    r = run(ROOT / "generate.py", "--recommend", "3", "--matcher", tmp_path / "m", "--market-dir", d / "data",
            "--example", "1", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {tmp_path / 'm' / 'matcher.json'}: a matcher whose token matches" in r.stderr and "train it again" in r.stderr


def test_generate_feeds_m_the_j_prime_of_its_own_g(trained, tmp_path):
    """M learned to read one G's J′: generate.py --recommend uses that G (train_args.json names it, with the sha256
    of its weights), refuses a matcher that does not name it, and refuses that G once it was trained again."""
    d, _ = trained
    recorded = json.loads((d / "rec" / "m" / "train_args.json").read_text())
    assert recorded["generator"] == str(d / "sft") and recorded["generator_sha256"] == weights_digest(d / "sft")
    shutil.copytree(d / "rec" / "m", tmp_path / "m")
    shutil.copytree(d / "sft", tmp_path / "g")
    recommend = lambda *extra: run(ROOT / "generate.py", "--recommend", "3", "--matcher", tmp_path / "m", "--market-dir",
                                   d / "data", "--example", "1", "--json", *extra, check=False)
    rewrite = lambda **kw: (tmp_path / "m" / "train_args.json").write_text(json.dumps({**recorded, **kw}))
    rewrite(generator=str(tmp_path / "g"))
    r = recommend()
    assert r.returncode == 0 and json.loads(r.stdout)["jobs"], r.stderr
    from girl.lm.checkpoint import load_model, save_model
    from girl.lm.tokenizer import Tokenizer
    G = load_model(tmp_path / "g")
    with torch.no_grad():
        G.layers[0].mlp.up.weight.mul_(1.01)
    save_model(tmp_path / "g", G, Tokenizer.from_pretrained(tmp_path / "g"), argparse.Namespace(lang="en"))
    r = recommend()
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert f"error: {tmp_path / 'g'} is not the G M was trained with" in r.stderr and "train M again" in r.stderr
    r = recommend("--ckpt", tmp_path / "g")  # the user's choice: used, with a word that it is not M's own G
    assert r.returncode == 0 and json.loads(r.stdout)["jobs"] and "note: M learned to read the J′ of" not in r.stderr
    r = recommend("--ckpt", d / "sft")
    assert r.returncode == 0 and f"note: M learned to read the J′ of {tmp_path / 'g'}" in r.stderr
    rewrite(generator=None)
    r = recommend()
    assert r.returncode == 2 and "does not name the G whose J′ M learned to read" in r.stderr


def test_train_rec_on_a_real_shaped_log(tmp_path):
    """A log as real ones are: one CV in many rows, ~5% accepted, long noisy texts, split by python -m girl.data
    build. M and M0 learn from accepted and rejected applications of seekers G never learned from and are
    measured, beside the lexical rows, on held-out seekers; a training file without an accepted row is refused."""
    import random as stdlib_random
    from girl.market.text import render_cv, render_jd
    from girl.market.world import compatibility, sample_job, sample_seeker
    rng = stdlib_random.Random(0)
    jobs = [sample_job(rng) for _ in range(60)]
    noise = ["References available on request.", "Hobbies: chess, hiking, photography.", "Languages: English, Mandarin.",
             "Benefits: lunch, gym, flexible hours."]
    cvs, logs = [], []
    for i in range(160):
        s = sample_seeker(rng)
        cvs.append({"id": i, "cv": render_cv(s, "en", rng) + "\n" + "\n".join(rng.sample(noise, 2))})
        for k in rng.sample(range(len(jobs)), 12):  # accepted: the best fits only, about 5% of the rows
            logs.append({"cv_id": i, "jd_id": k, "label": int(compatibility(s, jobs[k].attributes()) > 0.6)})
    jds = [{"id": k, "jd": render_jd(j, "en", rng) + "\n" + rng.choice(noise)} for k, j in enumerate(jobs)]
    for name, rows in (("cvs", cvs), ("jds", jds), ("log", logs)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rate = sum(r["label"] for r in logs) / len(logs)
    assert 0.02 < rate < 0.1, rate
    r = run("-m", "girl.data", "build", "--cvs", tmp_path / "cvs.jsonl", "--jds", tmp_path / "jds.jsonl", "--log",
            tmp_path / "log.jsonl", "--out", tmp_path / "d")
    assert "accepted applications per part" in r.stdout
    d = tmp_path / "d"
    run(ROOT / "train_sft.py", "--data", d / "sft_train.jsonl", "--eval-data", d / "sft_val.jsonl", "--lang", "en",
        "--max-steps", "2", "--eval-every", "2", "--out", tmp_path / "sft")
    flags = ["--generator", tmp_path / "sft", "--val-data", d / "interactions_val.jsonl", "--test-data",
             d / "interactions_test.jsonl", "--exclude-cvs", d / "sft_train.jsonl", *REC_FLAGS, "--no-scratch",
             "--cache-dir", tmp_path / "cache"]
    run(ROOT / "train_rec.py", "--data", d / "rec_train.jsonl", *flags, "--out", tmp_path / "rec")
    metrics = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert metrics["counts"]["train_positives"] > 0 and metrics["counts"]["dropped_leak"] == 0
    for name in ("M", "M0", "lexical C→J", "lexical J′→J", "lexical C+J′"):
        assert 0 <= metrics["cold"][name]["auc"] <= 1, name
    assert metrics["cold"]["positive_rate"] > 0 and "ranking" not in metrics  # no market: no jobs to rank
    # the log's accepted seekers all given to G, as the split before did: M has nothing to learn from
    only_rejected = tmp_path / "rejected.jsonl"
    only_rejected.write_text("".join(line + "\n" for line in (d / "rec_train.jsonl").read_text().splitlines()
                                     if json.loads(line)["label"] == 0))
    bad = run(ROOT / "train_rec.py", "--data", only_rejected, *flags, "--out", tmp_path / "rec-bad", check=False)
    assert bad.returncode == 2 and "M needs both accepted and rejected ones" in bad.stderr
    assert not (tmp_path / "rec-bad").exists()
