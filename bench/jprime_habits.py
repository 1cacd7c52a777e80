"""What PPO's J′ say, against SFT's: for the first N validation CVs of the market, one J′ each sampled at 0.7
from seed 0 by each G given, the mean number of J′'s tokens that C holds (U's shared line, girl/reward.py),
J′'s mean length in tokens, how many say 经验不限 (no experience asked) and how many repeat a line. README,
stage 3, quotes it for the default G and the β 0.05 run:

    PYTHONPATH=. python bench/jprime_habits.py ckpt/sft ckpt/ppo ckpt/ppo-b005
"""

import argparse
import json

import torch

from girl.evaluation import sample_jds
from girl.lm.checkpoint import load_model
from girl.lm.tokenizer import Tokenizer
from girl.reward import shared_tokens
from girl.template import prompt_ids

p = argparse.ArgumentParser()
p.add_argument("generators", nargs="+", help="G checkpoint folders (the first one's tokenizer is used for all)")
p.add_argument("--market-dir", default="data")
p.add_argument("--cvs", type=int, default=200)
args = p.parse_args()

rows = [json.loads(line) for line in open(f"{args.market_dir}/val.jsonl", encoding="utf-8")][: args.cvs]
tok = Tokenizer.from_pretrained(args.generators[0])
prompts = [prompt_ids(tok, r["cv"], "zh", 128)[0] for r in rows]
for folder in args.generators:
    G = load_model(folder, dtype=torch.float32)
    texts = sample_jds(G, tok, prompts, 96, 0.7, torch.Generator().manual_seed(0), batch_size=64).texts
    shared = [len(shared_tokens(tok.encode(r["cv"]), tok.encode(t))) for r, t in zip(rows, texts)]
    lines = [t.split("\n") for t in texts]
    print(f"{folder}: {sum(shared) / len(rows):.2f} of J′'s tokens in C, length {sum(len(tok.encode(t)) for t in texts) / len(rows):.1f}, "
          f"经验不限 in {sum('经验不限' in t for t in texts)}, a line repeated in {sum(len(x) != len(set(x)) for x in lines)} of {len(rows)}")
