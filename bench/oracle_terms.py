"""How much of the fit do the words carry? Orders the market's validation (C, J+, J−) triples by some of the five
terms of f alone (girl/market/world.py's compatibility), as a judge that saw only those would: README, stage 2.

    PYTHONPATH=. python bench/oracle_terms.py [--market-dir data] [--part val]
"""

import argparse
import json
from pathlib import Path

from girl.market import Seeker, compatibility, parse_jd

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--market-dir", default="data", help="the market's folder (default: data)")
p.add_argument("--part", default="val", choices=["val", "test"], help="whose triples (default: val)")
p.add_argument("--lang", default="zh", help="the market's language (default: zh)")
args = p.parse_args()


def terms(s: Seeker, job: dict | None) -> dict:
    """The weighted terms of f, as compatibility computes them; their sum is checked against it below."""
    if job is None or job["field"] != s.field:
        return dict.fromkeys(("skills", "experience", "education", "city", "salary"), 0.0)
    gap, (lo, hi), e = s.years - job["min_exp"], job["salary"], s.salary
    return dict(
        skills=0.4 * len(job["skills"] & {tuple(k) for k in s.skills}) / len(job["skills"]),
        experience=0.2 * (1.0 if 0 <= gap <= 4 else max(0.0, 1 + gap / 2) if gap < 0 else max(0.0, 1 - (gap - 4) / 8)),
        education=0.1 * (1.0 if s.edu >= job["edu"] else 0.4 if s.edu == job["edu"] - 1 else 0.0),
        city=0.15 * (s.city == job["city"]),
        salary=0.15 * (1.0 if lo <= e <= hi else max(0.0, 1 - 3 * (e - hi) / hi) if e > hi else max(0.0, 1 - 2 * (lo - e) / lo)))


rows = [json.loads(line) for line in (Path(args.market_dir) / f"rm_{args.part}.jsonl").read_text(encoding="utf-8").splitlines()]
judges = {"skills": ["skills"], "city": ["city"], "experience": ["experience"], "salary": ["salary"],
          "education": ["education"], "skills + city (what word overlap can see)": ["skills", "city"],
          "all but skills": ["experience", "education", "city", "salary"], "all five (f)": None}
right = dict.fromkeys(judges, 0.0)
for r in rows:
    s = Seeker.from_json(r["seeker"])
    jobs = [parse_jd(r[k], args.lang) for k in ("jd_pos", "jd_neg")]
    t = [terms(s, j) for j in jobs]
    for j, tj in zip(jobs, t):
        assert j is None or abs(sum(tj.values()) - compatibility(s, j)) < 1e-12  # the same f as the market's
    f = [0.0 if j is None else compatibility(s, j) for j in jobs]
    for name, keep in judges.items():
        a, b = f if keep is None else (sum(x[k] for k in keep) for x in t)
        right[name] += 1.0 if a > b else 0.5 if a == b else 0.0
print(f"{len(rows)} {args.part} triples of {args.market_dir}, ordered right by")
for name, n in right.items():
    print(f"  {name:45s} {n / len(rows):.4f}")
