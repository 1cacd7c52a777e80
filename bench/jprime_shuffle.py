"""Does the matcher M read J′? Cold-start AUC and GAUC of a trained M with each seeker's own J′, with another
seeker's J′ (a fixed random permutation of the seekers), and with the seeker's CV in J′'s place.

    python bench/jprime_shuffle.py                      # ckpt/rec/m on the market in data/
    python bench/jprime_shuffle.py --rec ckpt/rec-sft --market-dir data-gap
"""

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from girl import ranking  # noqa: E402
from girl.data import read_jsonl  # noqa: E402
from girl.lm.tokenizer import Tokenizer  # noqa: E402
from girl.recommend import interaction_logits, load_matcher, text_key  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--rec", default="ckpt/rec", help="train_rec.py's --out (default: ckpt/rec)")
p.add_argument("--market-dir", default="data", help="the market M was measured on (default: data)")
args = p.parse_args()

test = read_jsonl(Path(args.market_dir) / "interactions_test.jsonl", "interactions")
metrics = json.loads((Path(args.rec) / "metrics.json").read_text(encoding="utf-8"))
cache = {}
for line in Path(metrics["settings"]["jprime_cache"]).read_text(encoding="utf-8").splitlines():
    row = json.loads(line)
    cache[row["cv"]] = row["jprime"]
cvs = list(dict.fromkeys(r["cv"] for r in test))
own = {c: cache[text_key(c)] for c in cvs}
others = cvs[:]
random.Random(0).shuffle(others)
M, tok = load_matcher(Path(args.rec) / "m"), Tokenizer.from_pretrained(Path(args.rec) / "m")
labels, seekers = [r["label"] for r in test], [r["cv"] for r in test]
for name, jprime in (("its own J′", own), ("another seeker's J′", {c: own[o] for c, o in zip(cvs, others)}),
                     ("its CV as J′", {c: c for c in cvs})):
    s = interaction_logits(M, tok, test, jprime, metrics["settings"]["max_len"]).numpy()
    print(f"M with {name}: cold-start AUC {ranking.auc(s, labels):.3f}, GAUC {ranking.gauc(s, labels, seekers):.3f}")
