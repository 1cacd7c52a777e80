"""Stage 4, generation-enhanced recommendation: the matcher M(C, J, J′) and its baseline M0(C, J) (GIRL §3.4).

    python train_rec.py                                          # after the pipeline: J′ of the newest G, on the market
    python train_rec.py --generator ckpt/sft --out ckpt/rec-sft  # J′ of the SFT generator instead of PPO's
    python train_rec.py --best-of 8                              # J′ = the best of 8 samples by U (ckpt/rm)
    python train_rec.py --data train.jsonl --test-data test.jsonl --exclude-cvs sft_train.jsonl   # your own log

M scores a seeker's CV C against a real job's JD J, reading also the JD J′ that G wrote for the seeker; M0
is the same matcher, the same budget, without J′. Both learn from recruiters' decisions ({"cv", "jd",
"label"}) with binary cross-entropy (girl/losses.py's match_loss). No leak from G into M: for a seeker
whose accepted JDs G was fine-tuned on, J′ is close to one of them, which would teach M "J ≈ J′ means
accepted", true in training and false for every new seeker. So M learns only from seekers G never learned
from: on the market the RM split's (rec_train.jsonl); with --data, rows whose CV is in --exclude-cvs (G's
SFT data) are dropped.

Measured, M beside M0 with the difference's 95% interval from a paired bootstrap over seekers: AUC, GAUC
and LogLoss for cold-start seekers (no stage saw them) and warm ones (held-out interactions of M's own
training seekers); on the market also NDCG@10 and recall@10 of ranking all its jobs for held-out seekers
against the oracle's f, beside the oracle's own ranking, a random one, and J′ alone (grounding: jobs by
the encoder's similarity to J′). Writes OUT/m and OUT/m0 (Hugging Face folders + the matcher's head) and
OUT/metrics.json; J′ are made once per generator and kept in --cache-dir.
"""

import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from girl import market, ranking
from girl.cli import (COUNT, COUNT0, NONNEGATIVE, POSITIVE, RATE, add_market_flags, fail, log, newest_generator, open_model,
                      parser, setup)
from girl.data import DataError, read_jsonl
from girl.files import CheckpointError, write_json
from girl.lm.checkpoint import load_model, train_args
from girl.lm.hub import HubError
from girl.lm.model import RewardModel, Transformer
from girl.lm.tokenizer import Tokenizer
from girl.losses import match_loss
from girl.recommend import (JPrimeCache, Matcher, encode_all, interaction_logits, make_jprimes, save_matcher, score_all,
                            texts_to_batch, warm_split, weights_digest)
from girl.template import template_overhead
from girl.training import Progress, adamw, clip_grad_norm, lr_at, set_lr, step_indices

p = parser(__doc__)
# Models
p.add_argument("--generator", help="G, whose J′ M reads (default: the newer of ckpt/ppo and ckpt/sft)")
p.add_argument("--encoder", default="builtin",
               help="'builtin' (default): G's embeddings and lowest --encoder-layers blocks; or a local HF folder / hub id "
                    "(its own tokenizer)")
p.add_argument("--encoder-layers", type=COUNT, default=2, help="blocks of the encoder (default: 2)")
p.add_argument("--hidden", type=COUNT, default=256, help="width of the matcher's MLP (default: 256)")
p.add_argument("--max-len", type=COUNT, default=128, help="tokens per encoded CV, JD or J′; longer ones are cut (default: 128)")
# J′
p.add_argument("--best-of", type=COUNT, default=1, help="1: G's greedy J′; N: the best of N samples by U (default: 1)")
p.add_argument("--rm", default="ckpt/rm", help="U, for --best-of N > 1 (default: ckpt/rm)")
p.add_argument("--temperature", type=POSITIVE, default=0.7, help="sampling temperature for --best-of (default: 0.7)")
p.add_argument("--max-new-tokens", type=COUNT, default=128, help="J′ length limit (default: 128)")
p.add_argument("--cache-dir", default="ckpt/jprime", help="where J′ are kept, per generator and settings (default: ckpt/jprime)")
# Data
p.add_argument("--data", help='training JSONL of {"cv", "jd", "label"} (default: the market\'s rec_train.jsonl)')
p.add_argument("--test-data", help="interactions of cold-start seekers (default: the market's interactions_test.jsonl)")
p.add_argument("--exclude-cvs", help='JSONL of {"cv", ...}, G\'s SFT data: training rows with these CVs are dropped '
                                     "(default: the market's sft_train.jsonl)")
p.add_argument("--negatives", type=COUNT0, default=8,
               help="jobs of the training data drawn at random each step and paired, labelled 0, with every seeker of the "
                    "step who did not apply to them: M must rank every job, not only those a seeker applied to "
                    "(default: 8; 0: recruiter decisions only)")
p.add_argument("--jprime-dropout", type=RATE, default=0.0,
               help="M only: the share of training seekers whose J′ is hidden (its encoding zeroed) at each step, so that M "
                    "also learns to read C and does not lean on J′ alone (default: 0)")
p.add_argument("--warm-per-seeker", type=COUNT0, default=2,
               help="interactions of each training seeker held out for the warm split (default: 2)")
add_market_flags(p)
# Optimization
p.add_argument("--batch-seekers", type=COUNT, default=16, help="seekers per step, all their interactions (default: 16)")
p.add_argument("--epochs", type=POSITIVE, default=5.0, help="passes over the training seekers (default: 5)")
p.add_argument("--lr", type=POSITIVE, default=1e-3, help="peak learning rate (default: 1e-3)")
p.add_argument("--warmup", type=COUNT0, default=20, help="linear warmup steps (default: 20)")
p.add_argument("--weight-decay", type=NONNEGATIVE, default=0.1, help="AdamW decay of weight matrices (default: 0.1)")
p.add_argument("--grad-clip", type=POSITIVE, default=1.0, help="clip the gradient norm to this (default: 1.0)")
p.add_argument("--seed", type=int, default=0, help="seed of the data order, the heads' init and sampling (default: 0)")
# Evaluation and output
p.add_argument("--rank-seekers", type=COUNT0, default=200, help="held-out market seekers whose ranking of every job is "
                                                             "measured; 0 skips (default: 200)")
p.add_argument("--k", type=COUNT, default=10, help="cut-off of NDCG@k and recall@k (default: 10)")
p.add_argument("--bootstrap", type=COUNT, default=1000, help="paired-bootstrap resamples of the seekers (default: 1000)")
p.add_argument("--out", default="ckpt/rec", help="folder for m/, m0/ and metrics.json (default: ckpt/rec)")
p.add_argument("--log-every", type=COUNT, default=50, help="progress line every N steps (default: 50)")
args = p.parse_args()

run = setup(args.seed, distributed=False)
device, autocast = run.device, run.autocast
t_start = time.time()

# ----------------------------------------------------------------------------- data
generator = args.generator or newest_generator()
args.lang = train_args(generator).get("lang") or args.lang
mdir = None
try:
    if args.data is None:
        mdir = market.ensure(args.market_dir, args.lang, seed=None)
    rows = read_jsonl(args.data or mdir / "rec_train.jsonl", "interactions")
    test = read_jsonl(args.test_data or mdir / "interactions_test.jsonl", "interactions") if args.test_data or mdir else []
    exclude = args.exclude_cvs or (mdir / "sft_train.jsonl" if mdir else None)
    leaked = {r["cv"] for r in read_jsonl(exclude, "ppo")} if exclude else set()
except DataError as e:
    fail(str(e))
if not test:
    fail("no cold-start seekers to measure on: give --test-data (interactions of seekers in no training set)")
if exclude is None:
    log("warning: no --exclude-cvs; if G was fine-tuned on any of these seekers' accepted JDs, M learns a shortcut "
        "that fails on new seekers. Pass G's SFT data as --exclude-cvs.")
n_rows = len(rows)
rows = [r for r in rows if r["cv"] not in leaked]
train_rows, warm_rows = warm_split(rows, args.warm_per_seeker)
by_seeker: dict[str, list] = {}
for r in train_rows:
    by_seeker.setdefault(r["cv"], []).append(r)
seekers = list(by_seeker)
jd_pool = list(dict.fromkeys(r["jd"] for r in train_rows))  # where the random negatives come from
cold_seen = {r["cv"] for r in test} & set(seekers)
if cold_seen:
    fail(f"{len(cold_seen)} seekers of the test data are also in the training data: they are not cold-start")
log(f"data: {len(train_rows)} training interactions of {len(seekers)} seekers ({n_rows - len(rows)} rows of seekers "
    f"G learned from dropped), {len(warm_rows)} warm held-out, {len(test)} cold-start of "
    f"{len({r['cv'] for r in test})} seekers")
rank_rows = market.heldout(mdir, args.rank_seekers) if mdir and args.rank_seekers else []

# ----------------------------------------------------------------------------- G and its J′ for every CV (cached)
G, tok = open_model(generator, Transformer, "G", device)
U, tok_u = open_model(args.rm, RewardModel, "U", device) if args.best_of > 1 else (None, None)
settings = {"best_of": args.best_of, "max_new_tokens": args.max_new_tokens, "lang": args.lang}
if args.best_of > 1:  # sampled: the seed, the temperature and U choose the J′ too
    settings |= {"temperature": args.temperature, "u": weights_digest(args.rm), "seed": args.seed}
cache = JPrimeCache(args.cache_dir, generator, settings)
cvs = list(dict.fromkeys([r["cv"] for r in rows + test + rank_rows]))
t0, todo = time.time(), len(cache.missing(cvs))
log(f"J′ of {len(cvs)} CVs by {generator}: {len(cvs) - todo} in the cache {cache.path}, {todo} to write")
room = G.config.max_seq_len - args.max_new_tokens - template_overhead(tok, args.lang)  # CV tokens that fit G's context
make_jprimes(cache, G, tok, cvs, args.lang, room, max_new_tokens=args.max_new_tokens, best_of=args.best_of, temperature=args.temperature, U=U, tok_u=tok_u,
             seed=args.seed, autocast=autocast, log=log)
jprime = {c: cache[c] for c in cvs}
jprime_seconds = time.time() - t0
del U

# ----------------------------------------------------------------------------- the encoder M and M0 start from
try:
    base, enc_tok = (G, tok) if args.encoder == "builtin" else (
        load_model(args.encoder, dtype=torch.float32, device=device), Tokenizer.from_pretrained(args.encoder))
except (CheckpointError, HubError) as e:
    fail(str(e))

# ----------------------------------------------------------------------------- train M0 and M the same way
max_steps = max(1, math.ceil(args.epochs * len(seekers) / args.batch_seekers))
logits, scores, train_seconds = {}, {}, {}
if rank_rows:
    job_texts, jobs = market.load_jobs(mdir)
for name, use_jprime in (("M0", False), ("M", True)):
    torch.manual_seed(args.seed)  # the same head init and data order for both
    M = Matcher.from_generator(base, args.encoder_layers, use_jprime, args.hidden).float()
    optimizer = adamw(M, args.lr, args.weight_decay)
    log(f"{name}: {M.num_parameters() / 1e6:.2f}M parameters, {max_steps} steps of {args.batch_seekers} seekers")
    progress, t0 = Progress(max_steps, args.log_every), time.time()
    M.train()
    for step in range(max_steps):
        lr = lr_at(step, max_steps, args.lr, args.warmup)
        set_lr(optimizer, lr)
        batch = [r for k in step_indices(step, len(seekers), args.batch_seekers, 1, args.seed)[0] for r in by_seeker[seekers[k]]]
        applied = {(r["cv"], r["jd"]) for r in batch}
        negatives = [jd_pool[k] for k in random.Random(f"{args.seed}-{step}").sample(range(len(jd_pool)), args.negatives)]
        batch += [{"cv": c, "jd": j, "label": 0} for c in dict.fromkeys(r["cv"] for r in batch) for j in negatives
                  if (c, j) not in applied]
        cv_list, jd_list = list(dict.fromkeys(r["cv"] for r in batch)), list(dict.fromkeys(r["jd"] for r in batch))
        ci, ji = {c: i for i, c in enumerate(cv_list)}, {j: i for i, j in enumerate(jd_list)}
        a = torch.tensor([ci[r["cv"]] for r in batch], device=device)
        b = torch.tensor([ji[r["jd"]] for r in batch], device=device)
        inputs = [texts_to_batch(enc_tok, t, args.max_len, device)
                  for t in (cv_list, jd_list, [jprime[x] for x in cv_list] if use_jprime else [])]
        with autocast():
            c, j = M.encode(*inputs[0]), M.encode(*inputs[1])
            jp = M.encode(*inputs[2]) if use_jprime else None
            if use_jprime and args.jprime_dropout > 0:
                jp = jp * (torch.rand(len(jp), 1, device=device) >= args.jprime_dropout)
            # index_select, not c[a]: its backward adds in a fixed order on the CPU, so a run repeats bit for bit
            pair_logits = M.score(c.index_select(0, a), j.index_select(0, b), None if jp is None else jp.index_select(0, a))
            loss = match_loss(pair_logits, torch.tensor([float(r["label"]) for r in batch], device=device))
        loss.backward()
        grad_norm = clip_grad_norm(M, args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step(step, sum(mask.sum().item() for _, mask in inputs), loss=loss.item(), lr=lr, grad_norm=grad_norm)
    train_seconds[name] = time.time() - t0
    save_matcher(Path(args.out) / name.lower(), M, enc_tok, args)
    logits[name] = {split: interaction_logits(M, enc_tok, r, jprime, args.max_len, autocast).numpy()
                    for split, r in (("cold", test), ("warm", warm_rows)) if r}
    if rank_rows:  # every job encoded once, every seeker once: then the head over all pairs
        j = encode_all(M, enc_tok, job_texts, args.max_len, autocast=autocast)
        c = encode_all(M, enc_tok, [r["cv"] for r in rank_rows], args.max_len, autocast=autocast)
        jp = encode_all(M, enc_tok, [jprime[r["cv"]] for r in rank_rows], args.max_len, autocast=autocast)
        scores[name] = score_all(M, c, j, jp if use_jprime else None).cpu().numpy()
        if use_jprime:  # grounding: J′ alone, matched to real jobs by the encoder's cosine similarity
            scores["J′ alone"] = torch.nn.functional.normalize(jp, dim=-1) @ torch.nn.functional.normalize(j, dim=-1).T
            scores["J′ alone"] = scores["J′ alone"].cpu().numpy()
    del M, optimizer

# ----------------------------------------------------------------------------- measure
metrics = {"settings": {k: v for k, v in vars(args).items()} | {"generator": generator, "jprime_cache": str(cache.path)},
           "counts": {"train": len(train_rows), "train_seekers": len(seekers), "dropped_leak": n_rows - len(rows),
                      "warm": len(warm_rows), "cold": len(test)}}
for split, r in (("cold", test), ("warm", warm_rows)):
    if r:
        metrics[split] = ranking.interaction_report({n: logits[n][split] for n in ("M", "M0")}, [x["label"] for x in r],
                                                    [x["cv"] for x in r], [("M", "M0")], args.bootstrap, args.seed)
if rank_rows:
    rank_seekers = market.seekers(rank_rows)
    attrs = [job.attributes() for job in jobs]
    gains = np.array([[market.compatibility(s, a) for a in attrs] for s in rank_seekers])
    scores |= {"oracle f (ceiling)": gains, "random (floor)": np.zeros_like(gains)}  # all tied: a random order, exactly
    metrics["ranking"] = ranking.ranking_report(scores, gains, gains >= 0.6, args.k, [("M", "M0"), ("J′ alone", "M0")],
                                                args.bootstrap, args.seed)
    metrics["ranking"]["jprime_oracle"] = market.Oracle(rank_seekers, args.lang).eval([jprime[r["cv"]] for r in rank_rows])
metrics["seconds"] = {"jprime": jprime_seconds, **{f"train_{k}": v for k, v in train_seconds.items()},
                      "total": time.time() - t_start}
write_json(Path(args.out) / "metrics.json", metrics)
table = ranking.markdown(metrics, args.k)
(Path(args.out) / "metrics.md").write_text(table, encoding="utf-8")
print("\n" + table)
log(f"wrote {args.out}/m, {args.out}/m0, metrics.json and metrics.md ({time.time() - t_start:.0f}s)")
