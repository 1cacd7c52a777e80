"""The market's ground truth read from text: the oracle scores any JD text (a real one or a generated J′)
by parsing it back into attributes and applying f; the simulated recruiter compares two of them.
It is the yardstick that catches reward hacking the reward model cannot see."""

import math
import random

from girl.market.text import parse_jd
from girl.market.world import Job, Seeker, compatibility


def oracle_score(s: Seeker, jd_text: str, lang: str) -> float | None:
    """f(seeker, the job a JD text describes); None when the text cannot be parsed (scored as 0)."""
    job = parse_jd(jd_text, lang)
    return None if job is None else compatibility(s, job)


def oracle_eval(seekers: list[Seeker], jd_texts: list[str], lang: str) -> dict:
    """Mean oracle score (unparseable JDs count 0), its standard error, and the parse rate."""
    scores = [oracle_score(s, t, lang) for s, t in zip(seekers, jd_texts, strict=True)]
    values = [0.0 if x is None else x for x in scores]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(n - 1, 1))
    return dict(oracle_mean=mean, oracle_sem=sd / math.sqrt(n), parse_rate=sum(x is not None for x in scores) / n)


class Oracle:
    """The oracle of a fixed list of seekers, as evaluation code is handed it (so that it never imports the
    market): eval(texts) for texts[i] written for seekers[i] (the keys of an evaluation row: oracle,
    oracle_sem, parse_rate), score(i, text) for one of them."""

    def __init__(self, seekers: list[Seeker], lang: str):
        self.seekers, self.lang = seekers, lang

    def eval(self, texts: list[str]) -> dict:
        o = oracle_eval(self.seekers, texts, self.lang)
        return dict(oracle=o["oracle_mean"], oracle_sem=o["oracle_sem"], parse_rate=o["parse_rate"])

    def score(self, i: int, text: str) -> float:
        """f(seekers[i], text); 0 when the text cannot be read."""
        return oracle_score(self.seekers[i], text, self.lang) or 0.0


def recruiter_prefers(s: Seeker, jd_a: str, jd_b: str, lang: str, rng: random.Random) -> bool | None:
    """A recruiter compares two JD texts for one seeker: True (a is the better fit) with probability
    σ(12·(f_a − f_b)), the slope of `accepted`; a JD the recruiter cannot read has f = 0. None when
    the two fit equally well: no preference is recorded. Reward models learn from these comparisons
    of G's own samples (train_rm.py), as InstructGPT's labelers compared its policy's outputs."""
    f_a, f_b = (oracle_score(s, t, lang) or 0.0 for t in (jd_a, jd_b))
    if f_a == f_b:
        return None
    return rng.random() < 1 / (1 + math.exp(-12 * (f_a - f_b)))


def recruiter_triple(row: dict, s: Seeker, jd_a: str, jd_b: str, lang: str, rng: random.Random) -> list[dict]:
    """The recruiter's judgement of jd_a against jd_b for row's CV (row carries "cv" and "seeker", s is its
    Seeker) as a (C, J+, J−) triple: a list of one, or none for a tie."""
    prefers_a = recruiter_prefers(s, jd_a, jd_b, lang, rng)
    if prefers_a is None:
        return []
    win, lose = (jd_a, jd_b) if prefers_a else (jd_b, jd_a)
    return [{"cv": row["cv"], "jd_pos": win, "jd_neg": lose, "seeker": row["seeker"]}]


def recruiter_comparisons(rows: list[dict], jds: list[list[str]], lang: str, rng: random.Random) -> list[dict]:
    """(C, J+, J−) triples from the recruiter's comparisons of several J′ per CV: every pair of rows[i]'s
    jds[i] judged by recruiter_prefers (ties dropped). rows carry "cv" and "seeker"."""
    out = []
    for r, texts in zip(rows, jds, strict=True):
        s = Seeker.from_json(r["seeker"])
        for a in range(len(texts)):
            for b in range(a + 1, len(texts)):
                out += recruiter_triple(r, s, texts[a], texts[b], lang, rng)
    return out


def random_job_comparisons(triples: list[dict], jds: list[str], per_cv: int, lang: str, rng: random.Random) -> list[dict]:
    """(C, J+, J−) triples of the recruiter comparing, per_cv times for each CV of the triples, a JD it accepted
    for the CV (one of its J+) with a random JD of the market (ties dropped). Most such jobs are of another
    field, and the recruiter turns them down: the easy negatives an application log never holds, since
    seekers apply within their field. triples carry "cv", "jd_pos" and "seeker"."""
    row, accepted = {}, {}
    for r in triples:
        row.setdefault(r["cv"], r)
        accepted.setdefault(r["cv"], []).append(r["jd_pos"])
    out = []
    for cv, r in row.items():
        s = Seeker.from_json(r["seeker"])
        for _ in range(per_cv):
            a, b = rng.choice(accepted[cv]), rng.choice(jds)
            out += recruiter_triple(r, s, a, b, lang, rng)
    return out


def oracle_accuracy(triples: list[dict], lang: str) -> float:
    """How often the true f agrees with the recruiter on (C, J+, J−) triples that carry their seeker: the
    ceiling of a reward model's accuracy that the recruiters' noise allows (a tie counts half)."""
    agree = []
    for r in triples:
        s = Seeker.from_json(r["seeker"])
        a, b = (oracle_score(s, r[k], lang) or 0.0 for k in ("jd_pos", "jd_neg"))
        agree.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return sum(agree) / len(agree)


def reference_jobs(seekers: list[Seeker], jobs: list[Job], seed: int = 0) -> tuple[list[int], list[int]]:
    """The floor and ceiling of the oracle on these seekers, as indices into jobs: for each seeker a
    random real JD of the market, and the seeker's best-matching job in the market."""
    rng = random.Random(seed)
    attrs = [j.attributes() for j in jobs]
    random_jd = [rng.randrange(len(jobs)) for _ in seekers]
    best = [max(range(len(jobs)), key=lambda i: compatibility(s, attrs[i])) for s in seekers]
    return random_jd, best


def references(seekers: list[Seeker], jobs: list[Job], seed: int = 0) -> dict:
    """The oracle's mean for reference_jobs: a random real JD (the floor), the seeker's best job (the ceiling)."""
    def mean_f(picked):
        return sum(compatibility(s, jobs[i].attributes()) for s, i in zip(seekers, picked)) / len(seekers)

    random_jd, best = reference_jobs(seekers, jobs, seed)
    return dict(oracle_random_jd=mean_f(random_jd), oracle_best_job=mean_f(best))
