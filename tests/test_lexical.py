"""The training-free lexical reference and the recommender's metrics against scikit-learn (a test-only
dependency: `pip install scikit-learn`), on small cases whose texts and scores exercise what differs between
implementations: upper case, runs of white space, n-grams the fitted texts never hold, tied scores."""

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from girl import ranking
from girl.lexical import TfIdf, char_ngrams

JDS = ["职位：Java开发工程师\n地点：上海\n熟悉Java、Spring、MySQL",
       "Position: Registered Nurse\nCity: Beijing\n- IV therapy,  first aid",
       "职位：护士\n地点：北京\n具备静脉输液、急救",
       "Role: Backend   Engineer\t\tCity: Shanghai\n- experience with Java, Redis"]
QUERIES = ["技能：Java、Redis\n期望城市：上海", "Skills: IV THERAPY, first aid\n\nLocation: Beijing",
           "zzz ~~ 完全没见过", "", "Java Java Java"]
FLOAT64 = 1e-12  # both sides compute in float64; only the summation order differs


def sklearn_tfidf():
    return TfidfVectorizer(analyzer="char", ngram_range=(1, 2)).fit(JDS)


def test_char_ngrams_fold_case_and_runs_of_space_as_sklearn_does():
    analyzer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2)).build_analyzer()
    for text in JDS + QUERIES:
        assert char_ngrams(text) == analyzer(text)


def test_tfidf_vectors_equal_sklearns():
    ours, theirs = TfIdf().fit(JDS), sklearn_tfidf()
    assert ours.vocabulary == theirs.vocabulary_
    np.testing.assert_allclose(ours.idf, theirs.idf_, rtol=FLOAT64)
    texts = JDS + QUERIES
    np.testing.assert_allclose(ours.transform(texts).to_dense().numpy(), theirs.transform(texts).toarray(),
                               rtol=0, atol=FLOAT64)


def test_cosines_equal_sklearns_pair_by_pair_and_all_against_all():
    ours, theirs = TfIdf().fit(JDS), sklearn_tfidf()
    expected = (theirs.transform(QUERIES) @ theirs.transform(JDS).T).toarray()
    assert expected.max() > 0.3  # the case holds real matches, not only zeros
    np.testing.assert_allclose(ours.cosine_all(QUERIES, JDS, chunk=3), expected, rtol=0, atol=FLOAT64)
    a = [QUERIES[i] for i in (0, 1, 1, 4, 3)]
    b = [JDS[j] for j in (0, 1, 3, 3, 2)]
    np.testing.assert_allclose(ours.cosine(a, b), [expected[i, j] for i, j in zip((0, 1, 1, 4, 3), (0, 1, 3, 3, 2))],
                               rtol=0, atol=FLOAT64)
    assert ours.cosine(QUERIES[:1], JDS[:1])[0] == pytest.approx(expected[0, 0], abs=FLOAT64)


def test_auc_and_log_loss_equal_sklearns():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounded: many ties
    assert len(np.unique(scores)) < 100
    assert ranking.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=FLOAT64)
    probs = 1 / (1 + np.exp(-scores))
    assert ranking.log_loss(probs, labels) == pytest.approx(log_loss(labels, probs), rel=FLOAT64)


def test_gauc_is_the_mean_of_sklearns_auc_per_seeker():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 30, 400)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.normal(size=400) + 0.5 * labels, 1)
    per = [roc_auc_score(labels[groups == g], scores[groups == g]) for g in np.unique(groups)
           if 0 < labels[groups == g].sum() < (groups == g).sum()]
    assert ranking.gauc(scores, labels, groups) == pytest.approx(np.mean(per), abs=FLOAT64)


def test_ndcg_at_k_equals_sklearns_with_ties_averaged():
    rng = np.random.default_rng(2)
    for k in (1, 3, 10):
        for _ in range(20):
            gains = rng.uniform(0, 1, 40) * (rng.uniform(size=40) < 0.5)
            scores = rng.integers(0, 6, 40).astype(float)  # six values over 40 jobs: ties everywhere
            expected = ndcg_score(gains[None], scores[None], k=k, ignore_ties=False)
            assert ranking.ndcg_at_k(scores, gains, k) == pytest.approx(expected, abs=FLOAT64)


def test_a_refit_forgets_the_vectors_of_the_previous_fit():
    """Each text's vector is kept once computed (matchers read the same texts every step); fitting again on
    other texts must give the new fit's vectors, as a fresh TfIdf would."""
    a, b = ["java sql python", "nurse icu care"], ["sales crm excel", "java spring sql", "nurse icu ward"]
    tfidf = TfIdf().fit(a)
    first = tfidf.cosine(["java sql"], ["java spring sql"])
    again = tfidf.fit(b).cosine(["java sql"], ["java spring sql"])
    assert again == TfIdf().fit(b).cosine(["java sql"], ["java spring sql"]) and again != first
