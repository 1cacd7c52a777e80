"""Does U rank G's own samples the way the oracle does? The question PPO depends on.

    python bench/reward_vs_oracle.py        # after train_sft.py and train_rm.py (default market, zh)

Samples K JDs per held-out CV from G (temperature 1), scores each with U and with the oracle, and prints
their correlation, and the oracle value of U's best-of-K beside a random sample's and the oracle's own
best-of-K. A reward model that PPO can trust must at least pick better than random here.
"""

import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from girl.data import right_pad, sft_example  # noqa: E402
from girl.lm.checkpoint import load_model  # noqa: E402
from girl.lm.model import RewardModel  # noqa: E402
from girl.lm.sampling import generate  # noqa: E402
from girl.lm.tokenizer import Tokenizer  # noqa: E402
from girl.market import Seeker, oracle_score  # noqa: E402
from girl.template import prompt_ids  # noqa: E402

K, LANG, MAX_NEW = 8, "zh", 96
G, U, tok = load_model("ckpt/sft"), load_model("ckpt/rm", RewardModel), Tokenizer.from_pretrained("ckpt/sft")
rows = [json.loads(line) for line in open("data/test.jsonl", encoding="utf-8")][200:300]  # not the 200 of generate.py --eval

prompts = [prompt_ids(tok, r["cv"], LANG)[0] for r in rows for _ in range(K)]
out = generate(G, prompts, MAX_NEW, eos_id=tok.eos_id, temperature=1.0, generator=torch.Generator().manual_seed(0))
texts = [tok.decode(t[m].tolist()) for t, m in zip(out.tokens, out.mask)]
cv_of = [rows[i // K] for i in range(len(texts))]

sequences = [sft_example(tok, r["cv"], t, LANG, 256)[0]["input_ids"] for r, t in zip(cv_of, texts)]
with torch.no_grad():
    u = torch.cat([U(*right_pad(sequences[i : i + 200], tok.pad_id)) for i in range(0, len(sequences), 200)]).tolist()
oracle = [oracle_score(Seeker.from_json(r["seeker"]), t, LANG) for r, t in zip(cv_of, texts)]
parsed = [x is not None for x in oracle]
f = [0.0 if x is None else x for x in oracle]  # an unparseable JD scores 0



def ranks(x):
    order = sorted(range(len(x)), key=x.__getitem__)
    return [order.index(i) for i in range(len(x))]


groups = range(0, len(f), K)
within = [statistics.correlation(ranks(u[i : i + K]), ranks(f[i : i + K])) for i in groups
          if len(set(f[i : i + K])) > 1 and len(set(u[i : i + K])) > 1]
u_best = [f[i + max(range(K), key=lambda k: u[i + k])] for i in groups]
print(f"{len(rows)} CVs x {K} samples (temperature 1), parse rate {sum(parsed) / len(parsed):.3f}")
print(f"Pearson(U, f) over all samples {statistics.correlation(u, f):.3f}; within-CV Spearman {statistics.mean(within):.3f}")
print(f"oracle of: a random sample {statistics.mean(f):.3f}, U's best-of-{K} {statistics.mean(u_best):.3f}, "
      f"the oracle's best-of-{K} {statistics.mean(max(f[i : i + K]) for i in groups):.3f}")
u_ok = [x for x, p in zip(u, parsed) if p]
print(f"Pearson(U, f) on parseable samples {statistics.correlation(u_ok, [x for x, p in zip(f, parsed) if p]):.3f}; "
      f"mean U on parseable {statistics.mean(u_ok):.3f}, on unparseable "
      f"{statistics.mean([x for x, p in zip(u, parsed) if not p]):.3f}")
