"""python -m girl.market: write the synthetic job market's splits as JSONL (the scripts do this on first use)."""

import argparse
import json

from girl.market import LANGS, build

p = argparse.ArgumentParser(description="Write the synthetic job market's splits as JSONL.")
p.add_argument("--out", default="data", help="output folder (default: data)")
p.add_argument("--lang", default="zh", choices=LANGS, help="language of CVs and JDs (default: zh)")
p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same market")
p.add_argument("--jobs", type=int, default=2000, help="jobs in the market (default: 2000)")
p.add_argument("--gap", action="store_true",
               help="CVs name the tools a person used, JDs the skills they require: matching them needs a learned "
                    "mapping (the paper's premise); the same seekers, jobs and outcomes as without it")
a = p.parse_args()
counts = build(a.out, a.lang, a.seed, a.jobs, gap=a.gap)
print(json.dumps(counts))
