"""The market's world: seekers and jobs drawn from latent attributes (field, skills, experience,
education, city, salary), the ground-truth compatibility f(seeker, job) in [0, 1], who applies where,
and what recruiters accept."""

import math
import random
from dataclasses import dataclass

from girl.market.text import CITIES, COMPANY_A, COMPANY_B, FIELDS

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

    @classmethod
    def from_json(cls, d: dict) -> "Seeker":
        return cls(**{**d, "skills": [tuple(k) for k in d["skills"]]})


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

    @classmethod
    def from_json(cls, d: dict) -> "Job":
        return cls(**{**d, "salary": tuple(d["salary"]), "company": tuple(d["company"])})

    def attributes(self) -> dict:
        """The same form parse_jd returns, so f scores real and generated JDs alike."""
        return dict(field=self.field, title=self.title, skills={(self.field, k) for k in self.skills},
                    min_exp=self.min_exp, edu=self.edu, city=self.city, salary=tuple(self.salary))


FIT_WEIGHTS = {"skills": 0.4, "experience": 0.2, "education": 0.1, "city": 0.15, "salary": 0.15}  # fit_terms' order


def compatibility(s: Seeker, job: dict) -> float:
    """Ground-truth f(seeker, job) in [0, 1]. Zero across fields; otherwise the weighted sum of fit_terms:

        f = 0.4·skills + 0.2·experience + 0.1·education + 0.15·city + 0.15·salary
    """
    if job["field"] != s.field:
        return 0.0
    return sum(w * t for w, t in zip(FIT_WEIGHTS.values(), fit_terms(s, job), strict=True))


def fit_terms(s: Seeker, job: dict) -> tuple[float, float, float, float, float]:
    """The five fits f weighs by FIT_WEIGHTS, each in [0, 1], of a job of the seeker's field.

    skills: share of the job's required skills the seeker has. experience: 1 within [min, min+4] years,
    falling fast when under-qualified and slowly when over-qualified. education: 1 at or above the
    requirement, 0.4 one level below. city: 1 in the seeker's city. salary: 1 when the seeker's expectation
    lies in the offered range, falling 3× its excess over the top and 2× its shortfall under the bottom.
    """
    skills = len(job["skills"] & {tuple(k) for k in s.skills}) / len(job["skills"])
    gap = s.years - job["min_exp"]
    experience = 1.0 if 0 <= gap <= 4 else max(0.0, 1 + gap / 2) if gap < 0 else max(0.0, 1 - (gap - 4) / 8)
    education = 1.0 if s.edu >= job["edu"] else 0.4 if s.edu == job["edu"] - 1 else 0.0
    city = 1.0 if s.city == job["city"] else 0.0
    lo, hi = job["salary"]
    e = s.salary
    salary = 1.0 if lo <= e <= hi else max(0.0, 1 - 3 * (e - hi) / hi) if e > hi else max(0.0, 1 - 2 * (lo - e) / lo)
    return skills, experience, education, city, salary


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
