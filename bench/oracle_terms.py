"""How much of the fit do the words carry? Orders the market's validation (C, J+, J−) triples by some of the five
terms of f alone (girl/market/world.py's fit_terms, weighted as f weighs them), as a judge that saw only those
would: README, stage 2.

    PYTHONPATH=. python bench/oracle_terms.py [--market-dir data] [--part val]
"""

import argparse
import json
from pathlib import Path

from girl.market import Seeker, compatibility, parse_jd
from girl.market.world import FIT_WEIGHTS, fit_terms

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--market-dir", default="data", help="the market's folder (default: data)")
p.add_argument("--part", default="val", choices=["val", "test"], help="whose triples (default: val)")
p.add_argument("--lang", default="zh", help="the market's language (default: zh)")
args = p.parse_args()


def terms(s: Seeker, job: dict | None) -> dict:
    """f's weighted terms of a JD for a seeker; all 0 for an unreadable JD or one of another field, as f is."""
    if job is None or job["field"] != s.field:
        return dict.fromkeys(FIT_WEIGHTS, 0.0)
    return {name: w * t for (name, w), t in zip(FIT_WEIGHTS.items(), fit_terms(s, job), strict=True)}


rows = [json.loads(line) for line in (Path(args.market_dir) / f"rm_{args.part}.jsonl").read_text(encoding="utf-8").splitlines()]
judges = {"skills": ["skills"], "city": ["city"], "experience": ["experience"], "salary": ["salary"],
          "education": ["education"], "skills + city (what word overlap can see)": ["skills", "city"],
          "all but skills": ["experience", "education", "city", "salary"], "all five (f)": None}
right = dict.fromkeys(judges, 0.0)
for r in rows:
    s = Seeker.from_json(r["seeker"])
    jobs = [parse_jd(r[k], args.lang) for k in ("jd_pos", "jd_neg")]
    t = [terms(s, j) for j in jobs]
    f = [0.0 if j is None else compatibility(s, j) for j in jobs]
    for name, keep in judges.items():
        a, b = f if keep is None else (sum(x[k] for k in keep) for x in t)
        right[name] += 1.0 if a > b else 0.5 if a == b else 0.0
print(f"{len(rows)} {args.part} triples of {args.market_dir}, ordered right by")
for name, n in right.items():
    print(f"  {name:45s} {n / len(rows):.4f}")
