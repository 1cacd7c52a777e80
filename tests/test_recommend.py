"""Stage 4: the recommender's metrics against hand-computed values, the paired bootstrap on cases with a known
answer, the matcher M and its baseline M0, the J′ cache. train_rec.py as a user runs it: test_train_rec.py."""

import json
import math
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save

from girl import ranking
from girl.data import DataError, read_jsonl
from girl.files import CheckpointError
from girl.lm.model import Config, RewardModel, Transformer
from girl.losses import match_loss
from girl.lexical import TfIdf
from girl.evaluation import sample_jds
from girl.recommend import (BIAS_INIT, LEX_INIT, SIM_INIT, SIM_SCALE, JPrimeCache, Matcher, Tokens, cv_features,
                            encode_all, interaction_logits, jprime_features, jprime_settings, late_interaction,
                            load_matcher, make_jprimes, save_matcher, texts_to_batch, warm_split)
from girl.reward import u_scores
from girl.template import prompt_ids

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
    # equal scores of two seekers are no tie: f's top (0.3) equals g's bottom, and both order their jobs right
    assert ranking.gauc([0.3, 0.1, 0.3, 0.8], [1, 0, 0, 1], ["f", "f", "g", "g"]) == 1.0


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
    rows = ranking.SeekerRows(np.array([0, 2, 1, 0, 2, 2]))  # seeker 0: rows 0, 3; seeker 1: row 2; seeker 2: 1, 4, 5
    idx, groups = rows.sample(np.array([0, 0, 2, 1]))
    assert idx.tolist() == [0, 3, 0, 3, 1, 4, 5, 2] and groups.tolist() == [0, 0, 1, 1, 2, 2, 2, 3]


def test_pairs_report_counts_ties_half_and_draws_cvs():
    # judge A: right, wrong, right, tie; judge B: right on all four. CVs: x holds two triples, y and z one each
    pos, neg = {"A": [2.0, 1.0, 3.0, 0.0], "B": [1.0] * 4}, {"A": [1.0, 2.0, 1.0, 0.0], "B": [0.0] * 4}
    assert ranking.ordered([2, 1, 3, 0], [1, 2, 1, 0]).tolist() == [1.0, 0.0, 1.0, 0.5]
    r = ranking.pairs_report(pos, neg, ["x", "x", "y", "z"], [("B", "A")], n_resamples=200)
    assert r["A"]["accuracy"] == 0.625 and r["B"]["accuracy"] == 1.0 and (r["n_triples"], r["n_cvs"]) == (4, 3)
    d = r["B - A"]["accuracy"]
    # a resample of CVs: B − A is 0.5 on x's and z's triples and 0 on y's, so it lies in [0, 0.5]; it is 0 only
    # when every CV drawn is y ((1/3)³ of the time) and 0.5 when none is ((2/3)³): both ends are in the 95% interval
    assert d["diff"] == 0.375 and d["lo"] == 0.0 and d["hi"] == 0.5


def test_judge_on_jobs_by_hand():
    from girl.evaluation import judge_on_jobs

    table = {("c1", "best1"): 3.0, ("c1", "rnd1"): 1.0, ("c2", "best2"): 0.0, ("c2", "rnd2"): 0.0,  # a tie: half
             ("c1", "a"): 0.3, ("c1", "b"): 0.2, ("c1", "c"): 0.1, ("c2", "d"): 0.1, ("c2", "e"): 0.2, ("c2", "f"): 0.3}
    score = lambda cvs, jds: [table[c, j] for c, j in zip(cvs, jds)]
    r = judge_on_jobs(score, ["c1", "c2"], ["best1", "best2"], ["rnd1", "rnd2"], [["a", "b", "c"], ["d", "e", "f"]],
                      [[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]], k=2)
    assert r["best_vs_random"] == 0.75
    # c1 ranks a, b first: (0 + 1/log2 3) / (1 + 0.5/log2 3); c2 ranks f, e: (0.5 + 1/log2 3) / the same
    ideal = 1 + 0.5 / math.log2(3)
    assert r["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / ideal + (0.5 + 1 / math.log2(3)) / ideal) / 2, rel=1e-12)


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


def tiny_tokenizer():
    from girl.lm.tokenizer import Tokenizer
    return Tokenizer.train(["cv one: Python, SQL", "cv two: Java", "a job: Python"], 300)


TEXTS = ["Skills: Python, SQL\nCity: Beijing", "Skills: Java\nCity: Shanghai, 3 years", "Role: Data Analyst\n- Python",
         "Role: Java Developer\nCity: Shanghai\n- Java, Spring", "x"]


def trained_like(use_jprime, seed=2):
    """A matcher whose new weights are not their init: something a training run could have written."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    G = Transformer(Config(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                           max_seq_len=64))
    torch.manual_seed(seed)
    M = Matcher.from_generator(G, 1, use_jprime=use_jprime, proj=8, lexical=TfIdf().fit(TEXTS[2:4]))
    for module in (M.proj, M.token_weight, M.head):
        for p in module.parameters():
            p.data.normal_()
    return M.eval(), tok


def test_late_interaction_by_hand():
    """s(A → B) = Σ_i softmax(w)_i · max_k ½·([a_i = b_k] + cos(a_i, b_k)), each side over its real tokens only."""
    torch.manual_seed(0)
    va, vb = torch.nn.functional.normalize(torch.randn(1, 3, 4), dim=-1), torch.nn.functional.normalize(torch.randn(1, 4, 4), dim=-1)
    wa, wb = torch.randn(1, 3, 2), torch.randn(1, 4, 2)
    ma, mb = torch.tensor([[True, True, False]]), torch.tensor([[True, True, True, False]])
    ia, ib = torch.tensor([[7, 3, 9]]), torch.tensor([[3, 5, 8, 9]])  # a's token 1 is b's token 0; 9s are padding
    got = late_interaction(Tokens(va, wa, ma, ia), Tokens(vb, wb, mb, ib))[0]
    cos = [[float(va[0, i] @ vb[0, k]) / 2 + float(ia[0, i] == ib[0, k]) / 2 for k in range(3)] for i in range(2)]  # real tokens only
    ea, eb = [math.exp(wa[0, i, 0]) for i in range(2)], [math.exp(wb[0, k, 1]) for k in range(3)]
    a_to_b = sum(ea[i] / sum(ea) * max(cos[i]) for i in range(2))
    b_to_a = sum(eb[k] / sum(eb) * max(cos[i][k] for i in range(2)) for k in range(3))
    assert got.tolist() == pytest.approx([SIM_SCALE * a_to_b, SIM_SCALE * b_to_a], rel=1e-5)  # float32


def test_a_pairs_logit_does_not_depend_on_the_rest_of_its_batch():
    """Padding and the other pairs of a batch change nothing: each pair scored alone gives the batch's logit."""
    for use_jprime in (False, True):
        M, tok = trained_like(use_jprime)
        cvs, jds, jps = TEXTS[:2] * 2, [TEXTS[2], TEXTS[3], TEXTS[3], TEXTS[4]], [TEXTS[3], TEXTS[2], TEXTS[4], TEXTS[2]]
        with torch.no_grad():
            c, j, jp = (M.tokens(*texts_to_batch(tok, t, 64)) for t in (cvs, jds, jps))
            batch = M.pair_logits(c, j, jp, cvs, jds, jps)
            for i in range(4):
                alone = [M.tokens(*texts_to_batch(tok, [t[i]], 64)) for t in (cvs, jds, jps)]
                one = M.pair_logits(*alone, cvs[i : i + 1], jds[i : i + 1], jps[i : i + 1])
                assert one.item() == pytest.approx(batch[i].item(), rel=1e-5, abs=1e-5)  # float32, another padding
        assert c.mask.sum(1).tolist() != [c.mask.shape[1]] * 4  # the batch was padded


def test_m0_ignores_jprime_and_m_reads_it():
    cvs, jds = TEXTS[:2], TEXTS[2:4]
    for use_jprime in (False, True):
        M, tok = trained_like(use_jprime)
        with torch.no_grad():
            c, j = (M.tokens(*texts_to_batch(tok, t, 64)) for t in (cvs, jds))
            logits = [M.pair_logits(c, j, M.tokens(*texts_to_batch(tok, jps, 64)), cvs, jds, jps)
                      for jps in (TEXTS[2:4], [TEXTS[4], TEXTS[0]])]
        assert torch.equal(*logits) != use_jprime
    # the encoder is G's lowest block and its final norm; the scratch reference shares nothing with G
    G = tiny_g()
    m = Matcher.from_generator(G, 1)
    assert torch.equal(m.encoder.layers[0].attn.q.weight, G.layers[0].attn.q.weight) and len(m.encoder.layers) == 1
    scratch = Matcher.from_generator(None, 1, config=G.config)
    assert not torch.equal(scratch.encoder.layers[0].attn.q.weight, G.layers[0].attn.q.weight)
    # the head starts from the lexical score and the token matches; M's weights of J′ start at 0, where M0 starts
    assert m.head.weight.tolist() == [[SIM_INIT, SIM_INIT, LEX_INIT, 0, 0, 0]] and m.head.bias.item() == BIAS_INIT


def test_one_seeker_against_every_job_is_pair_by_pair():
    M, tok = trained_like(True)
    jobs = TEXTS[2:] + TEXTS[:1]
    with torch.no_grad():
        j = encode_all(M, tok, jobs, 64, batch_size=2)
        every = M.logits(cv_features(M, tok, TEXTS[:2], j, jobs, 64), jprime_features(M, tok, TEXTS[1:3], j, jobs, 64))
        for s in range(2):
            cvs, jps = [TEXTS[s]] * len(jobs), [TEXTS[s + 1]] * len(jobs)
            pair = M.pair_logits(*(M.tokens(*texts_to_batch(tok, t, 64)) for t in (cvs, jobs, jps)), cvs, jobs, jps)
            assert torch.allclose(every[s], pair, rtol=1e-5, atol=1e-5)


def test_matcher_saved_and_reloaded_scores_the_same(tmp_path):
    for use_jprime in (False, True):
        m, tok = trained_like(use_jprime)
        save_matcher(tmp_path / "m", m, tok)
        back = load_matcher(tmp_path / "m")
        assert back.use_jprime == use_jprime and back.lexical.vocabulary == m.lexical.vocabulary
        rows = [{"cv": c, "jd": j} for c in TEXTS[:2] for j in TEXTS[2:]]
        jprime = {TEXTS[0]: TEXTS[3], TEXTS[1]: TEXTS[2]}
        assert torch.equal(interaction_logits(m, tok, rows, jprime, 64), interaction_logits(back, tok, rows, jprime, 64))
        other = {TEXTS[0]: TEXTS[4], TEXTS[1]: TEXTS[3]}  # several J′ maps at once: each as if alone
        for together, alone in zip(interaction_logits(m, tok, rows, [jprime, other], 64), (jprime, other)):
            assert torch.allclose(together, interaction_logits(m, tok, rows, alone, 64), rtol=1e-5, atol=1e-6)
        config = json.loads((tmp_path / "m" / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True


def test_a_matcher_of_the_cosine_only_token_matches_is_refused(tmp_path):
    """matcher.json without "exact" was written before the exact matches: its scores under this code would be
    another model's, so loading it stops with what to do."""
    m, tok = trained_like(False)
    save_matcher(tmp_path / "m", m, tok)
    spec = json.loads((tmp_path / "m" / "matcher.json").read_text())
    del spec["exact"]
    (tmp_path / "m" / "matcher.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="train it again"):
        load_matcher(tmp_path / "m")


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "matcher.safetensors").unlink(), "lexical.json or matcher.safetensors is missing"),
    (lambda f: (f / "lexical.json").write_text('{"n_min": 1,\n'), "lexical.json:2: not valid JSON"),
    (lambda f: (f / "lexical.json").write_text('{"n_min": 1}'), "matcher.json or lexical.json lacks or garbles a field"),
    (lambda f: (f / "matcher.safetensors").write_bytes((f / "matcher.safetensors").read_bytes()[:-9]),
     "matcher.safetensors: not the weights of this matcher"),
    (lambda f: (f / "matcher.safetensors").write_bytes(save({"head.weight": torch.full((1, 3), float("nan"))})),
     "matcher.safetensors: not the weights of this matcher"),
])
def test_a_damaged_matcher_folder_is_named(tmp_path, damage, message):
    m, tok = trained_like(False)
    save_matcher(tmp_path / "m", m, tok)
    damage(tmp_path / "m")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_matcher(tmp_path / "m")


def test_a_matcher_with_nan_weights_is_refused(tmp_path):
    m, tok = trained_like(False)
    with torch.no_grad():
        m.head.weight[0, 1] = float("nan")
    save_matcher(tmp_path / "m", m, tok)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'm' / 'matcher.safetensors'}: holds nan or inf")):
        load_matcher(tmp_path / "m")


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


def test_best_of_n_jprimes_are_the_samples_u_scores_highest(tmp_path):
    """make_jprimes with best_of 3, in chunks of 2 CVs: each chunk's samples redrawn here from its seed (seed +
    the chunk's start), and each CV's J′ is the one of its three that U scores highest."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    c = Config(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=512,
               eos_token_id=tok.eos_id)
    G, U = Transformer(c).eval(), RewardModel(c).eval()
    cvs = ["cv one", "cv two", "cv three"]
    cache = JPrimeCache(tmp_path / "cache", tmp_path, {"best_of": 3})
    make_jprimes(cache, G, tok, cvs, "en", 32, max_new_tokens=6, best_of=3, temperature=1.0, U=U, tok_u=tok, seed=5,
                 chunk=2)
    chose_other_than_first = False
    for start in (0, 2):
        part = cvs[start : start + 2]
        prompts = [prompt_ids(tok, cv, "en", 32)[0] for cv in part for _ in range(3)]
        s = sample_jds(G, tok, prompts, 6, 1.0, torch.Generator().manual_seed(5 + start))
        u = u_scores(U, tok, [cv for cv in part for _ in range(3)], s.texts, "en").view(-1, 3)
        for k, cv in enumerate(part):
            samples = s.texts[3 * k : 3 * k + 3]
            assert len(set(samples)) == 3  # three different J′, so that the choice matters
            assert cache[cv] == samples[int(u[k].argmax())] and u[k].max() > u[k].min()
            chose_other_than_first |= cache[cv] != samples[0]
    assert chose_other_than_first


def test_the_jprime_key_of_the_best_of_n_holds_u_and_the_sampling(tmp_path):
    """The best of N J′ is U's choice among samples: another U (weights, not folder), seed or temperature is
    another cache file; greedy J′ do not depend on U."""
    from girl.lm.checkpoint import save_model
    tok = tiny_tokenizer()
    G = Transformer(Config(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64,
                           max_seq_len=512, eos_token_id=tok.eos_id))
    save_model(tmp_path / "g", G, tok)
    for name, seed in (("u", 0), ("u-copy", 0), ("u-other", 1)):
        torch.manual_seed(seed)
        save_model(tmp_path / name, RewardModel(G.config), tok)
    path = lambda **kw: JPrimeCache(tmp_path / "cache", tmp_path / "g", jprime_settings("en", 8, **kw)).path
    base = path(best_of=4, u_folder=tmp_path / "u")
    assert path(best_of=4, u_folder=tmp_path / "u-copy") == base  # the same weights in another folder
    others = [path(best_of=4, u_folder=tmp_path / "u-other"), path(best_of=4, u_folder=tmp_path / "u", seed=1),
              path(best_of=4, u_folder=tmp_path / "u", temperature=1.0), path(best_of=2, u_folder=tmp_path / "u")]
    assert len({base, *others}) == 5
    assert path(best_of=1, u_folder=tmp_path / "u") == path(best_of=1, u_folder=tmp_path / "u-other") == path()
    with pytest.raises(ValueError, match="U chooses among the samples"):
        jprime_settings("en", 8, best_of=4)


def test_bad_interactions_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "i.jsonl"
    bad.write_text('{"cv": "a", "jd": "b", "label": 1}\n{"cv": "a", "jd": "b", "label": 2}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: field 'label' must be 0 or 1"):
        read_jsonl(bad, "interactions")
