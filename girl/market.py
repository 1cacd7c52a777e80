"""A synthetic job market whose true matching function is known, so every stage can be measured.

The paper trained on a private recruitment platform. Here seekers and jobs are drawn from latent
attributes (field, skills, experience, education, city, salary), rendered into varied CV and JD texts
(girl/market_text.py), and matched by a ground-truth compatibility f(seeker, job) in [0, 1].

    python -m girl.market --out data/ --lang zh      # writes the splits as JSONL (scripts do this on first use)

An application log plays the paper's setting: seekers apply by their own taste (they over-reach on salary
and seniority), recruiters accept with a probability rising in f. Accepted pairs train G (SFT); a CV with
both outcomes gives (C, J+, J-) triples for U; seekers never used there give PPO's CVs; held-out seekers
evaluate. The oracle reads any JD text back (ours or generated) and scores it with f: the yardstick
that catches reward hacking the reward model cannot see. All of it is synthetic.
"""

import argparse
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from girl.data import write_jsonl
from girl.market_text import CITIES, COMPANY_A, COMPANY_B, FIELDS, LANGS, parse_jd, render_cv, render_jd

FIELD_BASE = {"software": 14, "data": 15, "finance": 9, "marketing": 9, "sales": 8, "nursing": 7,
              "mechanical": 10, "education": 8}  # monthly salary (K) of a bachelor with no experience
EDU_PAY = [0.85, 1.0, 1.2, 1.4]  # associate, bachelor, master, PhD


def fair_salary(field: str, years: float, edu: int) -> float:
    return FIELD_BASE[field] * (1 + 0.1 * years) * EDU_PAY[edu]


@dataclass
class Seeker:
    field: str
    skills: list  # [(field, skill index)]; mostly of their own field
    years: int
    edu: int  # index into EDUCATION
    city: int  # index into CITIES
    salary: float  # expected, K per month
    intent: int | None = None  # title the CV names as its objective, or None


@dataclass
class Job:
    field: str
    title: int
    level: int  # 0 junior, 1 plain, 2 senior: follows min_exp, only changes the wording
    skills: list  # skill indices within the field
    min_exp: int
    edu: int
    city: int
    salary: tuple  # (low, high), K per month
    company: tuple = (0, 0)

    def attributes(self) -> dict:
        """The same form parse_jd returns, so f scores real and generated JDs alike."""
        return dict(field=self.field, title=self.title, skills={(self.field, k) for k in self.skills},
                    min_exp=self.min_exp, edu=self.edu, city=self.city, salary=tuple(self.salary))


def compatibility(s: Seeker, job: dict) -> float:
    """Ground-truth f(seeker, job) in [0, 1]. Zero across fields; otherwise a weighted sum of fits:

        f = 0.4·skills + 0.2·experience + 0.1·education + 0.15·city + 0.15·salary

    skills: share of the job's required skills the seeker has. experience: 1 within [min, min+4] years,
    falling fast when under-qualified and slowly when over-qualified. education: 1 at or above the
    requirement. salary: 1 when the seeker's expectation lies in the offered range.
    """
    if job["field"] != s.field:
        return 0.0
    skills = len(job["skills"] & {tuple(k) for k in s.skills}) / len(job["skills"])
    gap = s.years - job["min_exp"]
    experience = 1.0 if 0 <= gap <= 4 else max(0.0, 1 + gap / 2) if gap < 0 else max(0.0, 1 - (gap - 4) / 8)
    education = 1.0 if s.edu >= job["edu"] else 0.4 if s.edu == job["edu"] - 1 else 0.0
    city = 1.0 if s.city == job["city"] else 0.0
    lo, hi = job["salary"]
    e = s.salary
    salary = 1.0 if lo <= e <= hi else max(0.0, 1 - 3 * (e - hi) / hi) if e > hi else max(0.0, 1 - 2 * (lo - e) / lo)
    return 0.4 * skills + 0.2 * experience + 0.1 * education + 0.15 * city + 0.15 * salary


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


# ----------------------------------------------------------------------------- sampling

def sample_seeker(rng: random.Random) -> Seeker:
    field = rng.choice(list(FIELDS))
    pool = range(len(FIELDS[field]["skills"]))
    skills = [(field, k) for k in rng.sample(pool, rng.randint(3, 6))]
    if rng.random() < 0.3:  # a skill from elsewhere: CVs are not pure
        other = rng.choice([f for f in FIELDS if f != field])
        skills.append((other, rng.randrange(len(FIELDS[other]["skills"]))))
    rng.shuffle(skills)
    years = rng.choice([0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 10, 12])
    edu = rng.choices(range(4), weights=[25, 50, 20, 5])[0]
    salary = fair_salary(field, years, edu) * math.exp(rng.gauss(0.1, 0.15))  # seekers ask a little more
    intent = rng.randrange(len(FIELDS[field]["titles"])) if rng.random() < 0.8 else None
    return Seeker(field, skills, years, edu, rng.randrange(len(CITIES)), round(salary * 2) / 2, intent)


def sample_job(rng: random.Random) -> Job:
    field = rng.choice(list(FIELDS))
    min_exp = rng.choice([0, 0, 1, 2, 3, 3, 5, 8])
    edu = rng.choices(range(4), weights=[35, 50, 12, 3])[0]
    mid = fair_salary(field, min_exp + 2, edu) * math.exp(rng.gauss(0, 0.12))
    low = max(3, round(mid * 0.8))
    high = max(low + 2, round(mid * 1.3))
    skills = rng.sample(range(len(FIELDS[field]["skills"])), rng.randint(3, 5))
    level = 0 if min_exp <= 1 else 2 if min_exp >= 5 else 1
    return Job(field, rng.randrange(len(FIELDS[field]["titles"])), level, skills, min_exp, edu,
               rng.randrange(len(CITIES)), (low, high), (rng.randrange(len(COMPANY_A)), rng.randrange(len(COMPANY_B))))


def applications(s: Seeker, jobs: list[Job], rng: random.Random, n: int = 8) -> list[int]:
    """The jobs a seeker applies to, by the seeker's own taste: their field and city, and pay and
    seniority above their level (the over-reach recruiters then turn down)."""
    candidates = rng.sample(range(len(jobs)), min(200, len(jobs)))

    def taste(i):
        j = jobs[i]
        return (2.5 * (j.field == s.field) + 0.8 * (j.city == s.city) + min(j.salary[1] / s.salary, 1.6)
                + 0.5 * (j.min_exp > s.years) + rng.gauss(0, 0.5))

    return sorted(candidates, key=taste, reverse=True)[:n]


def accepted(s: Seeker, j: Job, rng: random.Random) -> bool:
    """A recruiter's decision: more likely the better the fit, never certain."""
    return rng.random() < 1 / (1 + math.exp(-12 * (compatibility(s, j.attributes()) - 0.6)))


def recruiter_prefers(s: Seeker, jd_a: str, jd_b: str, lang: str, rng: random.Random) -> bool | None:
    """A recruiter compares two JD texts for one seeker: True (a is the better fit) with probability
    σ(12·(f_a − f_b)), the slope of `accepted`; a JD the recruiter cannot read has f = 0. None when
    the two fit equally well: no preference is recorded. Reward models learn from these comparisons
    of G's own samples (train_rm.py), as InstructGPT's labelers compared its policy's outputs."""
    f_a, f_b = (oracle_score(s, t, lang) or 0.0 for t in (jd_a, jd_b))
    if f_a == f_b:
        return None
    return rng.random() < 1 / (1 + math.exp(-12 * (f_a - f_b)))


# ----------------------------------------------------------------------------- the splits

SPLITS = dict(sft=4000, rm=1500, ppo=600, eval=400)  # seekers per split


def build(out_dir, lang: str = "zh", seed: int = 0, n_jobs: int = 2000, seekers: dict = SPLITS) -> dict:
    """Simulate the market and write its splits as JSONL under out_dir; return the counts."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    rng = random.Random(seed)
    jobs = [sample_job(rng) for _ in range(n_jobs)]
    jd_text = [render_jd(j, lang, rng) for j in jobs]
    files: dict[str, list] = {name: [] for name in (
        "sft_train", "sft_eval", "rm_train", "rm_eval", "ppo", "eval", "interactions_train", "interactions_test")}
    for split, count in seekers.items():
        for _ in range(count):
            s = sample_seeker(rng)
            cv = render_cv(s, lang, rng)
            outcomes = [(i, accepted(s, jobs[i], rng)) for i in applications(s, jobs, rng)]
            pos = [i for i, ok in outcomes if ok]
            neg = [i for i, ok in outcomes if not ok]
            pairs = [{"cv": cv, "jd": jd_text[i]} for i in pos]
            triples = [{"cv": cv, "jd_pos": jd_text[p], "jd_neg": jd_text[n], "seeker": asdict(s)}
                       for p, n in zip(pos, neg)]
            seen = [{"cv": cv, "jd": jd_text[i], "label": int(ok)} for i, ok in outcomes]
            if split == "sft":
                files["sft_train"] += pairs
                files["interactions_train"] += seen
            elif split == "rm":
                files["rm_train"] += triples
                files["interactions_train"] += seen
            elif split == "ppo":
                files["ppo"].append({"cv": cv, "seeker": asdict(s)})
            else:  # held out from every stage: evaluation only
                files["eval"].append({"cv": cv, "seeker": asdict(s)})
                files["sft_eval"] += pairs
                files["rm_eval"] += triples
                files["interactions_test"] += seen
    files["jobs"] = [{"jd": t, "job": asdict(j)} for j, t in zip(jobs, jd_text)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    counts = {name: len(rows) for name, rows in files.items()}
    meta = dict(note="synthetic job market made by girl.market; no real people or companies",
                lang=lang, seed=seed, n_jobs=n_jobs, seekers=seekers, counts=counts)
    (out / "market.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts


def ensure(out_dir, lang: str = "zh", seed: int | None = 0) -> Path:
    """The market's folder, built on first use (or rebuilt if it was made for another lang or seed;
    seed None takes a market of any seed, and builds seed 0 if there is none)."""
    out = Path(out_dir)
    meta = out / "market.json"
    if meta.is_file():
        m = json.loads(meta.read_text(encoding="utf-8"))
        if m.get("lang") == lang and seed in (None, m.get("seed")):
            return out
    seed = 0 if seed is None else seed
    print(f"building the synthetic job market ({lang}, seed {seed}) in {out}/ ...")
    build(out, lang, seed)
    return out


def seeker_from_json(d: dict) -> Seeker:
    return Seeker(**{**d, "skills": [tuple(k) for k in d["skills"]]})


def job_from_json(d: dict) -> Job:
    return Job(**{**d, "salary": tuple(d["salary"]), "company": tuple(d["company"])})


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


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Write the synthetic job market's splits as JSONL.")
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.add_argument("--lang", default="zh", choices=LANGS, help="language of CVs and JDs (default: zh)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same market")
    p.add_argument("--jobs", type=int, default=2000, help="jobs in the market (default: 2000)")
    a = p.parse_args()
    counts = build(a.out, a.lang, a.seed, a.jobs)
    print(json.dumps(counts))
