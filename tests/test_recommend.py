"""Stage 4: the recommender's metrics against hand-computed values, the paired bootstrap on cases with a known
answer, the matcher M and its baseline M0, the J′ cache, and train_rec.py as a user runs it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from girl import ranking
from girl.data import DataError, read_jsonl
from girl.lm.model import Config, Transformer
from girl.losses import match_loss
from girl.recommend import JPrimeCache, Matcher, load_matcher, make_jprimes, save_matcher, score_all, warm_split

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- metrics, by hand

def test_auc_counts_a_tie_as_one_half():
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4: of the 6 pairs, 4 are won and one (0.4, 0.4) is tied
    assert ranking.auc([0.1, 0.4, 0.35, 0.8, 0.4], [0, 0, 1, 1, 1]) == pytest.approx(4.5 / 6, abs=1e-12)
    assert ranking.auc([1, 2, 3], [0, 1, 1]) == 1.0 and ranking.auc([3, 2, 1], [0, 1, 1]) == 0.0
    assert ranking.auc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5  # a constant score knows nothing
    assert math.isnan(ranking.auc([1, 2], [1, 1]))


def test_gauc_averages_seekers_with_both_labels():
    scores = [0.9, 0.1, 0.5, 0.2, 0.3, 0.7, 0.6]
    labels = [1, 0, 0, 1, 1, 0, 1]
    groups = ["a", "a", "b", "b", "b", "c", "c"]
    # a: 1 of 1 pair won; b: positives 0.2, 0.3 vs negative 0.5: 0 of 2; c: 0.6 vs 0.7: 0 of 1
    assert ranking.gauc(scores, labels, groups) == pytest.approx((1 + 0 + 0) / 3, abs=1e-12)
    # a seeker with one label only is left out, not counted as 0.5
    assert ranking.gauc(scores + [0.0], labels + [1], groups + ["d"]) == pytest.approx(1 / 3, abs=1e-12)
    # ties within a seeker count half: e's positive 0.5 ties one negative and beats the other, 1.5 of 2
    tied = ([0.5, 0.5, 0.2], [1, 0, 0], ["e", "e", "e"])
    assert ranking.gauc(scores + tied[0], labels + tied[1], groups + tied[2]) == pytest.approx((1 + 0 + 0 + 0.75) / 4,
                                                                                               abs=1e-12)


def test_log_loss():
    assert ranking.log_loss([0.9, 0.2], [1, 0]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, rel=1e-12)
    assert ranking.log_loss([1.0], [0]) == pytest.approx(-math.log(1e-7), rel=1e-9)  # clipped, finite


def test_ndcg_and_recall_at_k_take_the_expectation_over_tied_orders():
    d = [1 / math.log2(i + 2) for i in range(4)]  # discounts of positions 1..4
    # no ties: positions are 1, 2, 3, 4 in order of score
    assert ranking.ndcg_at_k([4, 3, 2, 1], [0, 1, 0.5, 1], 2) == pytest.approx((0 * d[0] + 1 * d[1]) / (d[0] + d[1]), rel=1e-12)
    # items 1 and 2 tie for positions 2 and 3; with k = 2 position 3 counts 0, so each gets d[1] / 2
    dcg = 0 * d[0] + (1 + 0.5) * d[1] / 2
    assert ranking.ndcg_at_k([3, 2, 2, 1], [0, 1, 0.5, 1], 2) == pytest.approx(dcg / (d[0] + d[1]), rel=1e-12)
    # the same items in the other input order give the same value: ties are not broken by position
    assert ranking.ndcg_at_k([3, 2, 2, 1], [0, 0.5, 1, 1], 2) == pytest.approx(dcg / (d[0] + d[1]), rel=1e-12)
    # a constant score is a random ranking: every item gets the mean discount of the top k over all n positions
    gains = [0.2, 0.0, 1.0, 0.4, 0.0]
    ideal = sorted(gains, reverse=True)[0] * d[0] + sorted(gains, reverse=True)[1] * d[1]
    assert ranking.ndcg_at_k([0] * 5, gains, 2) == pytest.approx(sum(gains) * (d[0] + d[1]) / 5 / ideal, rel=1e-12)
    assert ranking.ndcg_at_k([1, 2, 3, 4, 5], gains, 5) <= 1.0
    assert ranking.ndcg_at_k([0.2, 0.0, 1.0, 0.4, 0.0], gains, 3) == pytest.approx(1.0, rel=1e-12)
    # recall: item 1 (relevant) is in the top 2 in half of the tied orders, item 3 (relevant) never
    assert ranking.recall_at_k([3, 2, 2, 1], [False, True, False, True], 2) == pytest.approx(0.5 / 2, rel=1e-12)
    assert ranking.recall_at_k([4, 3, 2, 1], [True, False, False, False], 2) == 1.0  # over min(k, relevant):
    assert ranking.recall_at_k([4, 3, 2, 1], [True, True, True, False], 2) == 1.0  # 3 relevant, a top 2 can hold 2
    assert math.isnan(ranking.recall_at_k([1, 2], [False, False], 1))


def test_paired_bootstrap_known_answers():
    rng = np.random.default_rng(0)
    per_a = rng.normal(size=400)
    # b = a − 0.25 on every seeker: the difference is 0.25 on every resample
    r = ranking.paired_bootstrap(lambda s: per_a[s].mean(), lambda s: (per_a - 0.25)[s].mean(), 400, 200)
    assert r["diff"] == pytest.approx(0.25, abs=1e-12)
    assert r["lo"] == pytest.approx(0.25, abs=1e-12) and r["hi"] == pytest.approx(0.25, abs=1e-12)
    # a mean of 400 normal differences: the percentile interval is ±1.96·σ/√n (σ the plug-in sd). The
    # 2.5% percentile of 4,000 resamples has a standard error of √(0.025·0.975/4000)/φ(1.96) = 0.042σ/√n,
    # 2% of the half-width: 8% is four standard errors
    per_b = rng.normal(size=400)
    r = ranking.paired_bootstrap(lambda s: per_a[s].mean(), lambda s: per_b[s].mean(), 400, 4000, seed=1)
    half = 1.96 * (per_a - per_b).std() / math.sqrt(400)
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(half, rel=0.08)
    assert (r["hi"] + r["lo"]) / 2 == pytest.approx(r["diff"], abs=0.1 * half)


def test_interaction_report_resamples_seekers_not_rows():
    labels = np.array([1, 0] * 50)
    groups = np.repeat(np.arange(50), 2)
    good = np.where(labels == 1, 1.0, 0.0)
    report = ranking.interaction_report({"M": good, "M0": np.zeros(100)}, labels, groups, [("M", "M0")], 100)
    assert report["M"]["auc"] == 1.0 and report["M0"]["auc"] == 0.5 and report["M"]["gauc"] == 1.0
    d = report["M - M0"]["auc"]
    assert d["diff"] == 0.5 and d["lo"] == 0.5 and d["hi"] == 0.5  # every resample has both labels: always 0.5


def test_a_seeker_drawn_twice_is_two_seekers():
    idx, groups = ranking.seekers_sample([np.array([0, 1]), np.array([2])], np.array([0, 0, 1]))
    assert idx.tolist() == [0, 1, 0, 1, 2] and groups.tolist() == [0, 0, 1, 1, 2]


def test_match_loss_is_binary_cross_entropy():
    logits, y = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1, 0, 0])
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    expected = -np.mean([math.log(p[0]), math.log(1 - p[1]), math.log(1 - p[2])])
    assert match_loss(logits, y).item() == pytest.approx(expected, rel=1e-6)  # float32 arithmetic
    # from the logits: −log(1 − σ(200)) = softplus(200) = 200, where σ(200) rounds to 1 in float32
    assert match_loss(torch.tensor([200.0]), torch.tensor([0])).item() == pytest.approx(200.0, rel=1e-6)


# ----------------------------------------------------------------------------- the matcher

def tiny_g(seed=0):
    torch.manual_seed(seed)
    return Transformer(Config(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=64))


def test_m0_ignores_jprime_and_m_reads_it():
    G = tiny_g()
    c, j, jp1, jp2 = torch.randn(4, 3, 32).unbind(0)
    torch.manual_seed(1)
    m0 = Matcher.from_generator(G, 1, use_jprime=False)
    assert torch.equal(m0.score(c, j, jp1), m0.score(c, j, jp2))
    assert torch.equal(m0.score(c, j, jp1), m0.score(c, j))
    m = Matcher.from_generator(G, 1, use_jprime=True)
    assert not torch.allclose(m.score(c, j, jp1), m.score(c, j, jp2))
    # the encoder is G's lowest block, its embeddings and its final norm
    assert torch.equal(m.encoder.layers[0].attn.q.weight, G.layers[0].attn.q.weight) and len(m.encoder.layers) == 1
    # one seeker against every job, by broadcasting, is the same as pair by pair
    all_jobs = score_all(m, c, j, jp1)
    for s in range(3):
        assert torch.allclose(all_jobs[s], m.score(c[s].expand(3, -1), j, jp1[s].expand(3, -1)), rtol=1e-5, atol=1e-6)


def test_mean_pooling_ignores_padding():
    m = Matcher.from_generator(tiny_g(), 2, use_jprime=False)
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    e = m.encode(ids, mask)
    assert torch.allclose(e[0], e[1], atol=1e-6)
    assert torch.allclose(e[0], m.encoder.hidden_states(ids[:1, :3]).mean(1)[0], atol=1e-6)


def tiny_tokenizer():
    from girl.lm.tokenizer import Tokenizer
    return Tokenizer.train(["cv one: Python, SQL", "cv two: Java", "a job: Python"], 300)


def test_matcher_saved_and_reloaded_scores_the_same(tmp_path):
    tok = tiny_tokenizer()
    G = tiny_g()
    for use_jprime in (False, True):
        torch.manual_seed(2)
        m = Matcher.from_generator(G, 1, use_jprime=use_jprime)
        for p in m.head.parameters():  # not the init: something a training run could have written
            p.data.normal_()
        save_matcher(tmp_path / "m", m, tok)
        back = load_matcher(tmp_path / "m")
        assert back.use_jprime == use_jprime
        ids = torch.randint(0, 64, (3, 7))
        mask = torch.ones_like(ids)
        c, j, jp = (x.encode(ids, mask) for x in (m, m, m))
        with torch.no_grad():
            assert torch.equal(m.score(c, j, jp), back.score(back.encode(ids, mask), back.encode(ids, mask),
                                                               back.encode(ids, mask)))
        config = json.loads((tmp_path / "m" / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True


def test_warm_split_is_deterministic_and_keeps_seekers_in_training():
    rows = [{"cv": f"cv{s}", "jd": f"jd{k}", "label": k % 2} for s in range(20) for k in range(6)]
    rows += [{"cv": "few", "jd": "jd0", "label": 1}, {"cv": "few", "jd": "jd1", "label": 0}]
    train, held = warm_split(rows, 2)
    assert sorted(map(json.dumps, train + held)) == sorted(map(json.dumps, rows))
    assert len(held) == 40 and {r["cv"] for r in held} == {f"cv{s}" for s in range(20)}
    assert {r["cv"] for r in held} <= {r["cv"] for r in train}  # warm: the seeker is trained on
    assert all(r["cv"] != "few" for r in held)  # 2 interactions: all kept for training
    again = warm_split(list(reversed(rows)), 2)[1]
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, held))  # chosen by content, not position


# ----------------------------------------------------------------------------- the J′ cache

class Refuses:
    """A generator that must not be called."""

    def parameters(self):
        raise AssertionError("the cache was valid, yet G was asked to generate")


def test_jprime_cache_is_used_when_valid_and_rebuilt_when_g_changes(tmp_path):
    from girl.lm.checkpoint import save_model
    tok = tiny_tokenizer()
    G = Transformer(Config(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64,
                           max_seq_len=512, eos_token_id=tok.eos_id))
    save_model(tmp_path / "g", G, tok)
    settings = {"best_of": 1, "max_new_tokens": 8}
    cache = JPrimeCache(tmp_path / "cache", tmp_path / "g", settings)
    make_jprimes(cache, G, tok, ["cv one", "cv two", "cv one"], "en", 32, max_new_tokens=8)
    assert len(cache.texts) == 2 and cache.path.is_file()
    first = cache["cv two"]
    # a fresh cache of the same generator and settings reads the file, and never calls G
    again = JPrimeCache(tmp_path / "cache", tmp_path / "g", settings)
    make_jprimes(again, Refuses(), tok, ["cv one", "cv two"], "en", 32, max_new_tokens=8)
    assert again["cv two"] == first
    # other settings, or other weights: another file, empty, so every J′ is written again
    assert JPrimeCache(tmp_path / "cache", tmp_path / "g", {**settings, "max_new_tokens": 9}).missing(["cv one"]) == ["cv one"]
    with torch.no_grad():
        G.layers[0].mlp.up.weight.add_(0.01)
    save_model(tmp_path / "g", G, tok)
    changed = JPrimeCache(tmp_path / "cache", tmp_path / "g", settings)
    assert changed.path != cache.path and changed.missing(["cv one", "cv two"]) == ["cv one", "cv two"]


# ----------------------------------------------------------------------------- train_rec.py

def run(*args, check=True):
    # on the CPU, in float32, on every machine: the test compares the script's numbers with a recompute here
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=check, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_bad_interactions_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "i.jsonl"
    bad.write_text('{"cv": "a", "jd": "b", "label": 1}\n{"cv": "a", "jd": "b", "label": 2}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: field 'label' must be 0 or 1"):
        read_jsonl(bad, "interactions")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from girl.market import build
    d = tmp_path_factory.mktemp("rec")
    build(d / "data", "en", seed=0, n_jobs=60, seekers=dict(sft=30, rm=30, ppo=0, eval=12))
    run(ROOT / "train_sft.py", "--data", d / "data" / "sft_train.jsonl", "--lang", "en", "--max-steps", "2",
        "--eval-every", "2", "--oracle-cvs", "0", "--out", d / "sft")
    for out in ("rec", "rec-again"):
        r = run(ROOT / "train_rec.py", "--generator", d / "sft", "--market-dir", d / "data", "--lang", "en",
                "--epochs", "2", "--max-new-tokens", "24", "--bootstrap", "20", "--rank-seekers", "8", "--batch-seekers",
                "8", "--cache-dir", d / "cache", "--out", d / out)
    return d, r


def test_train_rec_repeats_bit_for_bit(trained):
    d, _ = trained
    for name in ("m", "m0"):
        for f in ("model.safetensors", "matcher.safetensors"):
            assert (d / "rec" / name / f).read_bytes() == (d / "rec-again" / name / f).read_bytes(), (name, f)


def test_train_rec_on_a_tiny_market(trained):
    d, r = trained
    metrics = json.loads((d / "rec" / "metrics.json").read_text())
    assert metrics["counts"]["dropped_leak"] == 0 and metrics["counts"]["train_seekers"] == 30
    assert metrics["cold"]["n_seekers"] == 12 and metrics["ranking"]["n_seekers"] == 8
    for split in ("cold", "warm"):
        for model in ("M", "M0"):
            assert set(metrics[split][model]) == {"auc", "gauc", "log_loss"}
        d_auc = metrics[split]["M - M0"]["auc"]
        assert d_auc["diff"] == pytest.approx(metrics[split]["M"]["auc"] - metrics[split]["M0"]["auc"], abs=1e-12)
    assert metrics["ranking"]["oracle f (ceiling)"]["ndcg@10"] == 1.0
    # the matchers as saved give the logits the report was computed from
    from girl.lm.tokenizer import Tokenizer
    from girl.recommend import interaction_logits
    tok = Tokenizer.from_pretrained(d / "rec" / "m")
    test = read_jsonl(d / "data" / "interactions_test.jsonl", "interactions")
    cache = JPrimeCache(d / "cache", d / "sft", {"best_of": 1, "max_new_tokens": 24, "lang": "en"})
    jprime = {r["cv"]: cache[r["cv"]] for r in test}
    for name in ("m", "m0"):
        s = interaction_logits(load_matcher(d / "rec" / name), tok, test, jprime, 128).numpy()
        assert ranking.auc(s, [r["label"] for r in test]) == pytest.approx(metrics["cold"][name.upper()]["auc"], abs=1e-9)
    assert "in the cache" in r.stdout


def test_train_rec_drops_seekers_g_learned_from(trained, tmp_path):
    d, _ = trained
    rows = read_jsonl(d / "data" / "rec_train.jsonl", "interactions")
    sft = read_jsonl(d / "data" / "sft_train.jsonl", "sft")
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text("".join(json.dumps(x) + "\n" for x in rows + [{"cv": sft[0]["cv"], "jd": sft[0]["jd"], "label": 1}]))
    r = run(ROOT / "train_rec.py", "--generator", d / "sft", "--data", leaky, "--test-data",
            d / "data" / "interactions_test.jsonl", "--exclude-cvs", d / "data" / "sft_train.jsonl", "--lang", "en",
            "--epochs", "0.3", "--max-new-tokens", "24", "--bootstrap", "5", "--cache-dir", d / "cache", "--out", tmp_path / "rec")
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
    from girl.recommend import encode_all
    M, tok = load_matcher(d / "rec" / "m"), Tokenizer.from_pretrained(d / "rec" / "m")
    c, j, jp = (encode_all(M, tok, t, 128) for t in ([out["cv"]], market_jds, [out["jds"][0]["jd"]]))
    best = torch.sigmoid(score_all(M, c, j, jp)[0]).topk(3)
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
