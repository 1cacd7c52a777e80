"""Stage 4, generation-enhanced recommendation: the matcher M(C, J, J′) and its baseline M0(C, J) (GIRL §3.4).

    python train_rec.py                                          # after the pipeline: J′ of the newest G, on the market
    python train_rec.py --generator ckpt/sft --out ckpt/rec-sft  # J′ of the SFT generator instead of PPO's
    python train_rec.py --best-of 8                              # J′ = the best of 8 samples by U (ckpt/rm)
    python train_rec.py --data rec_train.jsonl --val-data interactions_val.jsonl --test-data interactions_test.jsonl \\
                        --exclude-cvs sft_train.jsonl            # your own log, split by python -m girl.data build

M scores a seeker's CV C against a real job's JD J, reading also the JD J′ that G wrote for the seeker; M0
is the same matcher, the same budget, without J′ (girl/recommend.py: late interaction of token vectors
beside the lexical score). Both learn from recruiters' decisions ({"cv", "jd", "label"}) with binary
cross-entropy (girl/losses.py's match_loss). No leak from G into M: for a seeker whose accepted JDs G was
fine-tuned on, J′ is close to one of them, which would teach M "J ≈ J′ means accepted", true in training and
false for every new seeker. So M learns only from seekers G never learned from: on the market the RM split's
(rec_train.jsonl); with --data, rows whose CV is in --exclude-cvs (G's SFT data) are dropped.

Validation chooses, test reports: each model keeps the step where it did best on the validation seekers
(AUC of their applications, and on the market NDCG@k of ranking every job for them; the start, where M and
M0 are the lexical score plus untrained token matches, is a candidate too); the test seekers are
read only after all three models are chosen. Measured on the test seekers, every learned model beside the
training-free references, with paired 95% intervals over seekers: AUC, GAUC and LogLoss of the cold-start
seekers' applications and of warm ones (held-out interactions of M's own training seekers), and on the market
NDCG@k and recall@k of ranking all its jobs against the oracle's f. Rows: the lexical scores of C, J′ and
both against J; M0, M, and M0 with an encoder that does not start from G; M fed the seeker's best market JD
as J′ (what a perfect G could give it) and M fed another seeker's J′ (the control); the oracle's ceiling.
Writes OUT/m, OUT/m0, OUT/m0-scratch (Hugging Face folders + the rest of the matcher), OUT/metrics.json and
OUT/metrics.md, the whole folder at once at the end: a run stopped before (Ctrl-C, SIGTERM: exit 128 + the
signal's number) leaves OUT as it was. J′ are made once per generator and kept in --cache-dir, chunk by chunk.
"""

import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from girl import market, ranking
from girl.cli import (COUNT, COUNT0, POSITIVE, NONNEGATIVE, add_market_flags, check_out, cv_room, fail, log, newest_generator, open_model,
                      parser, setup)
from girl.data import DataError, read_jsonl
from girl.files import CheckpointError, atomic_dir, recover, write_json
from girl.lexical import TfIdf
from girl.lm.checkpoint import load_model, train_args
from girl.lm.hub import HubError
from girl.lm.model import RewardModel, Transformer
from girl.lm.tokenizer import Tokenizer
from girl.losses import match_loss
from girl.recommend import (JPrimeCache, Matcher, cv_features, encode_all, interaction_logits, jprime_features,
                            jprime_settings, make_jprimes, save_matcher, texts_to_batch, warm_split)
from girl.training import Progress, adamw, clip_grad_norm, lr_at, set_lr, step_indices, stop_on_signal

p = parser(__doc__)
# Models
p.add_argument("--generator", help="G, whose J′ M reads (default: the newer of ckpt/ppo and ckpt/sft)")
p.add_argument("--encoder", default="builtin",
               help="'builtin' (default): G's embeddings and lowest --encoder-layers blocks; or a local HF folder / hub id "
                    "(its own tokenizer)")
p.add_argument("--encoder-layers", type=COUNT, default=2, help="blocks of the encoder (default: 2)")
p.add_argument("--proj", type=COUNT, default=64, help="width of the token vectors M matches (default: 64)")
p.add_argument("--max-len", type=COUNT, default=128, help="tokens per encoded CV, JD or J′; longer ones are cut (default: 128)")
p.add_argument("--no-scratch", action="store_true",
               help="skip the reference M0 whose encoder starts from a random init instead of G (saves a third of the time)")
# J′
p.add_argument("--best-of", type=COUNT, default=1, help="1: G's greedy J′; N: the best of N samples by U (default: 1)")
p.add_argument("--rm", default="ckpt/rm", help="U, for --best-of N > 1 (default: ckpt/rm)")
p.add_argument("--temperature", type=POSITIVE, default=0.7, help="sampling temperature for --best-of (default: 0.7)")
p.add_argument("--max-new-tokens", type=COUNT, default=128, help="J′ length limit (default: 128)")
p.add_argument("--cache-dir", default="ckpt/jprime", help="where J′ are kept, per generator and settings (default: ckpt/jprime)")
# Data
p.add_argument("--data", help='training JSONL of {"cv", "jd", "label"} (default: the market\'s rec_train.jsonl)')
p.add_argument("--val-data", help="interactions of validation seekers, which choose each model's step (default: the "
                                  "market's interactions_val.jsonl; with --data, none: the last step is kept)")
p.add_argument("--test-data", help="interactions of cold-start test seekers (default: the market's interactions_test.jsonl)")
p.add_argument("--exclude-cvs", help='JSONL of {"cv", ...}, G\'s SFT data: training rows with these CVs are dropped '
                                     "(default: the market's sft_train.jsonl)")
p.add_argument("--seekers", type=COUNT, help="train on this many of the training seekers, drawn by --draw (default: all)")
p.add_argument("--draw", type=int, default=0, help="seed of the --seekers draw (default: 0)")
p.add_argument("--negatives", type=COUNT0, default=8,
               help="jobs of the training data drawn at random each step and paired, labelled 0, with every seeker of the "
                    "step who did not apply to them: M must rank every job, not only those a seeker applied to "
                    "(default: 8; 0: recruiter decisions only)")
p.add_argument("--warm-per-seeker", type=COUNT0, default=2,
               help="interactions of each training seeker held out for the warm split (default: 2)")
add_market_flags(p)
# Optimization
p.add_argument("--batch-seekers", type=COUNT, default=16, help="seekers per step, all their interactions (default: 16)")
p.add_argument("--epochs", type=POSITIVE, default=2.0,
               help="passes over the training seekers (default: 2; 3 scored 0.001-0.003 higher on validation and took "
                    "1.5 min more on the default market)")
p.add_argument("--min-steps", type=COUNT0, default=100, help="at least this many steps, however few the seekers (default: 100)")
p.add_argument("--lr", type=POSITIVE, default=1e-3, help="peak learning rate (default: 1e-3)")
p.add_argument("--head-lr-scale", type=POSITIVE, default=30.0,
               help="the head (how much each score counts) learns at this × --lr: its start, the lexical score, must be "
                    "able to give way to the learned matches and to J′ within a run (default: 30)")
p.add_argument("--warmup", type=COUNT0, default=20, help="linear warmup steps (default: 20)")
p.add_argument("--weight-decay", type=NONNEGATIVE, default=0.1, help="AdamW decay of weight matrices (default: 0.1)")
p.add_argument("--grad-clip", type=POSITIVE, default=1.0, help="clip the gradient norm to this (default: 1.0)")
p.add_argument("--seed", type=COUNT0, default=0, help="seed of the data order, the new weights' init and sampling (default: 0)")
# Evaluation and output
p.add_argument("--eval-every", type=COUNT, default=100, help="measure on the validation seekers every N steps (default: 100)")
p.add_argument("--val-rank-seekers", type=COUNT0, default=100,
               help="validation seekers whose ranking of every market job chooses the step, beside the AUC (default: 100)")
p.add_argument("--rank-seekers", type=COUNT0, default=200, help="test seekers whose ranking of every market job is "
                                                             "reported; 0 skips (default: 200)")
p.add_argument("--k", type=COUNT, default=10, help="cut-off of NDCG@k and recall@k (default: 10)")
p.add_argument("--bootstrap", type=COUNT, default=1000, help="paired-bootstrap resamples of the seekers (default: 1000)")
p.add_argument("--out", default="ckpt/rec", help="folder for m/, m0/, m0-scratch/ and metrics.json (default: ckpt/rec)")
p.add_argument("--log-every", type=COUNT, default=50, help="progress line every N steps (default: 50)")
args = p.parse_args()
recover(args.out)  # a run killed between the two renames of its final save (kill -9) is finished first
check_out(args.out)
if Path(args.out).is_dir() and any(Path(args.out).iterdir()) and not (Path(args.out) / "m0" / "matcher.json").is_file():
    fail(f"--out {args.out} holds something else than train_rec.py's results (no m0/matcher.json), and the run "
         "replaces the whole folder; give another --out")
stop_on_signal(f"{args.out} is as it was (J′ written so far are kept in {args.cache_dir})")

run = setup(args.seed, distributed=False)
device, autocast = run.device, run.autocast
t_start = time.time()

# ----------------------------------------------------------------------------- data
generator = args.generator or newest_generator()
args.generator = generator  # recorded with the matchers: generate.py --recommend feeds M this G's J′
args.lang = train_args(generator).get("lang") or args.lang
mdir = None
try:
    if args.data is None:
        mdir = market.ensure(args.market_dir, args.lang, args.market_seed)
    rows = read_jsonl(args.data or mdir / "rec_train.jsonl", "interactions")
    val = read_jsonl(args.val_data or mdir / "interactions_val.jsonl", "interactions") if args.val_data or mdir else []
    exclude = args.exclude_cvs or (mdir / "sft_train.jsonl" if mdir else None)
    leaked = {r["cv"] for r in read_jsonl(exclude, "ppo")} if exclude else set()
    test_file = args.test_data or (mdir / "interactions_test.jsonl" if mdir else None)
except (DataError, market.MarketError) as e:
    fail(str(e))
if test_file is None:
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
if args.seekers and args.seekers < len(seekers):  # a subset of the training seekers (bench/rec_curve.py's learning curve)
    seekers = random.Random(f"draw-{args.draw}").sample(seekers, args.seekers)
    warm_rows = [r for r in warm_rows if r["cv"] in set(seekers)]
train_labels = [r["label"] for s in seekers for r in by_seeker[s]]
if not seekers or len(set(train_labels)) < 2:
    fail(f"the training data hold {len(train_labels)} interactions of seekers G never learned from, "
         f"{sum(train_labels)} accepted: M needs both accepted and rejected ones. Split your log with python -m girl.data "
         "build, which keeps accepted applications out of G's SFT data for M, or pass other --data / --exclude-cvs")
jd_pool = list(dict.fromkeys(r["jd"] for s in seekers for r in by_seeker[s]))  # where the random negatives come from
log(f"data: {len(train_labels)} training interactions of {len(seekers)} seekers ({n_rows - len(rows)} rows of seekers "
    f"G learned from dropped), {len(warm_rows)} warm held-out, {len(val)} validation of {len({r['cv'] for r in val})} seekers")
val_rank = market.heldout(mdir, args.val_rank_seekers, "val") if mdir and args.val_rank_seekers else []

# ----------------------------------------------------------------------------- G and its J′ for every CV (cached)
G, tok = open_model(generator, Transformer, "G", device)
U, tok_u = open_model(args.rm, RewardModel, "U", device) if args.best_of > 1 else (None, None)
cache = JPrimeCache(args.cache_dir, generator, jprime_settings(args.lang, args.max_new_tokens, args.best_of,
                                                               args.temperature, args.seed, args.rm))
args.generator_sha256 = cache.generator_sha256  # recorded too: generate.py refuses a G trained again since
test_cvs = [r["cv"] for r in read_jsonl(test_file, "interactions")] + [
    r["cv"] for r in (market.heldout(mdir, args.rank_seekers) if mdir and args.rank_seekers else [])]
cvs = list(dict.fromkeys([r["cv"] for r in rows + val + val_rank] + test_cvs))  # the test CVs' J′: G never learns
t0, todo = time.time(), len(cache.missing(cvs))
log(f"J′ of {len(cvs)} CVs by {generator}: {len(cvs) - todo} in the cache {cache.path}, {todo} to write")
room = cv_room(tok, G.config, args.lang, args.max_new_tokens)  # CV tokens that fit G's context
make_jprimes(cache, G, tok, cvs, args.lang, room, max_new_tokens=args.max_new_tokens, best_of=args.best_of,
             temperature=args.temperature, U=U, tok_u=tok_u, seed=args.seed, autocast=autocast, log=log)
jprime = {c: cache[c] for c in cvs}
jprime_seconds = time.time() - t0
del U

# ----------------------------------------------------------------------------- the encoder, the jobs, the lexical reference
try:
    base, enc_tok = (G, tok) if args.encoder == "builtin" else (
        load_model(args.encoder, dtype=torch.float32, device=device), Tokenizer.from_pretrained(args.encoder))
except (CheckpointError, HubError) as e:
    fail(str(e))
job_texts, jobs = market.load_jobs(mdir) if mdir else (None, None)
# idf from the JDs a seeker is matched against: the market's jobs, or the JDs of the training data
lexical = TfIdf().fit(job_texts or list(dict.fromkeys(r["jd"] for r in rows)))
if val_rank:
    val_gains = np.array([[market.compatibility(s, j.attributes()) for j in jobs] for s in market.seekers(val_rank)])


@torch.no_grad()
def validate(M) -> dict:
    """What chooses a model's step: AUC of the validation seekers' applications and, on the market, NDCG@k of
    ranking every job for the first --val-rank-seekers of them; their mean is the score."""
    out = {}
    j = encode_all(M, enc_tok, job_texts, args.max_len, autocast=autocast) if mdir else None  # every job once
    if val:
        s = interaction_logits(M, enc_tok, val, jprime, args.max_len, autocast, jobs=(job_texts, j) if mdir else None)
        out["auc"] = ranking.auc(s.numpy(), [r["label"] for r in val])
    if val_rank:
        cj = cv_features(M, enc_tok, [r["cv"] for r in val_rank], j, job_texts, args.max_len, autocast)
        jpj = (jprime_features(M, enc_tok, [jprime[r["cv"]] for r in val_rank], j, job_texts, args.max_len, autocast)
               if M.use_jprime else None)
        s = M.logits(cj, jpj).cpu().numpy()
        out[f"ndcg@{args.k}"] = float(np.mean([ranking.ndcg_at_k(s[i], val_gains[i], args.k) for i in range(len(s))]))
    out["score"] = float(np.mean(list(out.values()))) if out else math.nan
    return out


def check(M, name: str, step: int, best: tuple | None) -> tuple:
    """Validate M after `step` steps; (validation, weights) of the best step so far, this one if it is better
    (no validation data, the score nan: the last step)."""
    v = {"step": step} | validate(M)
    history[name].append(v)
    if best is None or not v["score"] <= best[0]["score"]:
        best = (v, {k: t.detach().clone() for k, t in M.state_dict().items()})
    log(f"{name} step {step}: validation " + "  ".join(f"{k} {x:.4f}" for k, x in v.items() if k != "step")
        + ("  (best)" if best[0] is v else ""))
    return best


# ----------------------------------------------------------------------------- train M0, M and the scratch M0 alike
max_steps = max(args.min_steps, math.ceil(args.epochs * len(seekers) / args.batch_seekers))
models = {"M0": (False, base), "M": (True, base)} | ({} if args.no_scratch else {"M0, encoder not from G": (False, None)})
trained, history, chosen, train_seconds = {}, {}, {}, {}
for name, (use_jprime, start) in models.items():
    torch.manual_seed(args.seed)  # the same init of the new weights and the same data order for all
    M = Matcher.from_generator(start, args.encoder_layers, use_jprime, args.proj, lexical, config=base.config).float().to(device)
    optimizer = adamw(M, args.lr, args.weight_decay, fast=M.head, fast_scale=args.head_lr_scale)
    log(f"{name}: {M.num_parameters() / 1e6:.2f}M parameters, {max_steps} steps of {args.batch_seekers} seekers")
    progress, t0 = Progress(max_steps, args.log_every), time.time()
    history[name] = []
    best = check(M, name, 0, None)  # the start is a candidate too: where training cannot beat it, M stays there
    M.train()
    for step in range(max_steps):
        lr = lr_at(step, max_steps, args.lr, args.warmup)
        set_lr(optimizer, lr)
        batch = [r for k in step_indices(step, len(seekers), args.batch_seekers, 1, args.seed)[0] for r in by_seeker[seekers[k]]]
        applied = {(r["cv"], r["jd"]) for r in batch}
        negatives = [jd_pool[k] for k in random.Random(f"{args.seed}-{step}").sample(range(len(jd_pool)),
                                                                                     min(args.negatives, len(jd_pool)))]
        batch += [{"cv": c, "jd": j, "label": 0} for c in dict.fromkeys(r["cv"] for r in batch) for j in negatives
                  if (c, j) not in applied]
        cv_list, jd_list = list(dict.fromkeys(r["cv"] for r in batch)), list(dict.fromkeys(r["jd"] for r in batch))
        ci, ji = {c: i for i, c in enumerate(cv_list)}, {j: i for i, j in enumerate(jd_list)}
        a = torch.tensor([ci[r["cv"]] for r in batch], device=device)
        b = torch.tensor([ji[r["jd"]] for r in batch], device=device)
        inputs = [texts_to_batch(enc_tok, t, args.max_len, device)
                  for t in (cv_list, jd_list, [jprime[x] for x in cv_list] if use_jprime else [])]
        with autocast():
            c, j = M.tokens(*inputs[0]), M.tokens(*inputs[1])
            jp = M.tokens(*inputs[2]).select(a) if use_jprime else None
            pair_logits = M.pair_logits(c.select(a), j.select(b), jp, [r["cv"] for r in batch], [r["jd"] for r in batch],
                                        [jprime[r["cv"]] for r in batch] if use_jprime else None)
            loss = match_loss(pair_logits, torch.tensor([float(r["label"]) for r in batch], device=device))
        loss.backward()
        grad_norm = clip_grad_norm(M, args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step(step, sum(mask.sum().item() for _, mask in inputs), loss=loss.item(), lr=lr, grad_norm=grad_norm)
        if (step + 1) % args.eval_every == 0 or step + 1 == max_steps:
            best = check(M, name, step + 1, best)
    train_seconds[name] = time.time() - t0
    M.load_state_dict(best[1])
    M.eval()
    trained[name], chosen[name] = M, best[0]
    log(f"{name}: kept step {best[0]['step']} of {max_steps}")
    del optimizer

# ----------------------------------------------------------------------------- measure on the test seekers
t_eval = time.time()
torch.set_grad_enabled(False)
try:
    test = read_jsonl(test_file, "interactions")  # read now: nothing above was chosen on it
except DataError as e:
    fail(str(e))
if {r["cv"] for r in test} & set(by_seeker):
    fail(f"{len({r['cv'] for r in test} & set(by_seeker))} seekers of the test data are also in the training data: "
         "they are not cold-start")
for split, r in (("test", test), ("validation", val)):
    if r and len({x["label"] for x in r}) < 2:
        fail(f"the {split} data hold only label {r[0]['label']}: AUC needs accepted and rejected applications")
rank_rows = market.heldout(mdir, args.rank_seekers) if mdir and args.rank_seekers else []
test_seekers = {r["cv"]: market.Seeker.from_json(r["seeker"]) for r in market.heldout(mdir)} if mdir else {}
best_jd, attrs = {}, {}  # the oracle J′: the seeker's best market JD, what a perfect G could write
if mdir:
    attrs = {t: j.attributes() for t, j in zip(job_texts, jobs)}
    for cv, s in test_seekers.items():
        best_jd[cv] = max(job_texts, key=lambda t: market.compatibility(s, attrs[t]))


def another_seeker(cvs: list[str]) -> dict:
    """The control's pairing: each seeker and the other seeker whose J′ they are shown (a shuffled cycle, so
    never their own)."""
    order = random.Random(args.seed).sample(cvs, len(cvs))
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


# each model's token vectors of every market job, computed once for all that follows
job_tokens = {n: encode_all(M, enc_tok, job_texts, args.max_len, autocast=autocast) for n, M in trained.items()} if mdir else {}


def interaction_scores(rs: list[dict], references: bool) -> dict:
    """Each system's scores of these interactions: the lexical rows, the trained models and, with references,
    M fed the oracle J′ or another seeker's, and the oracle's f."""
    cvs_r, jds_r = [r["cv"] for r in rs], [r["jd"] for r in rs]
    lc, lj = lexical.cosine(cvs_r, jds_r), lexical.cosine([jprime[c] for c in cvs_r], jds_r)
    out = {"lexical C→J": lc, "lexical J′→J": lj, "lexical C+J′": lc + lj}
    for n, M in trained.items():
        jobs = (job_texts, job_tokens[n]) if mdir else None
        if n != "M" or not references:
            out[n] = interaction_logits(M, enc_tok, rs, jprime, args.max_len, autocast, jobs).numpy()
            continue
        other = another_seeker(list(dict.fromkeys(cvs_r)))
        fed = {"M": jprime, "M, J′ shuffled": {c: jprime[o] for c, o in other.items()}} | (
            {"M, oracle J′": best_jd} if best_jd else {})
        out |= dict(zip(fed, (x.numpy() for x in interaction_logits(M, enc_tok, rs, list(fed.values()), args.max_len,
                                                                    autocast, jobs))))
    if references:
        if test_seekers and all(j in attrs for j in jds_r):
            out["oracle f (ceiling)"] = np.array([market.compatibility(test_seekers[c], attrs[j]) for c, j in zip(cvs_r, jds_r)])
    return out


COMPARE = [("M", "M0"), ("M0", "lexical C→J"), ("M", "lexical C→J"), ("M", "lexical C+J′"),
           ("M0", "M0, encoder not from G"), ("M", "M, J′ shuffled")]
metrics = {"settings": dict(vars(args)) | {"jprime_cache": str(cache.path)},
           "counts": {"train": len(train_labels), "train_seekers": len(seekers), "train_positives": sum(train_labels),
                      "dropped_leak": n_rows - len(rows), "warm": len(warm_rows), "validation": len(val), "cold": len(test)},
           "validation": {n: {"chosen": chosen[n], "history": history[n]} for n in trained}}
for split, rs, references in (("cold", test, True), ("warm", warm_rows, False)):
    if rs:
        scores = interaction_scores(rs, references)
        metrics[split] = ranking.interaction_report(scores, [x["label"] for x in rs], [x["cv"] for x in rs],
                                                    [(a, b) for a, b in COMPARE if a in scores and b in scores],
                                                    args.bootstrap, args.seed)
if rank_rows:  # every seeker encoded once per model, against the jobs' token vectors: then the head over all pairs
    rank_cvs = [r["cv"] for r in rank_rows]
    gains = np.array([[market.compatibility(test_seekers[c], attrs[t]) for t in job_texts] for c in rank_cvs])
    lex_c = lexical.cosine_all(rank_cvs, job_texts)
    lex_j = lexical.cosine_all([jprime[c] for c in rank_cvs], job_texts)
    scores = {"lexical C→J": lex_c, "lexical J′→J": lex_j, "lexical C+J′": lex_c + lex_j}
    for n, M in trained.items():
        t0, j = time.time(), job_tokens[n]
        cj = cv_features(M, enc_tok, rank_cvs, j, job_texts, args.max_len, autocast)
        jpj = jprime_features(M, enc_tok, [jprime[c] for c in rank_cvs], j, job_texts, args.max_len, autocast) if M.use_jprime else None
        scores[n] = M.logits(cj, jpj).cpu().numpy()
        if M.use_jprime:
            metrics["seconds_per_seeker"] = (time.time() - t0) / len(rank_cvs)  # M ranking the encoded market, J′ and all
            other = another_seeker(rank_cvs)
            scores["M, J′ shuffled"] = M.logits(cj, jpj[[rank_cvs.index(other[c]) for c in rank_cvs]]).cpu().numpy()
            ojpj = jprime_features(M, enc_tok, [best_jd[c] for c in rank_cvs], j, job_texts, args.max_len, autocast)
            scores["M, oracle J′"] = M.logits(cj, ojpj).cpu().numpy()
    scores |= {"oracle f (ceiling)": gains, "random (floor)": np.zeros_like(gains)}  # all tied: a random order, exactly
    metrics["ranking"] = ranking.ranking_report(scores, gains, gains >= 0.6, args.k,
                                                [(a, b) for a, b in COMPARE if a in scores and b in scores],
                                                args.bootstrap, args.seed)
    metrics["ranking"]["jprime_oracle"] = market.Oracle([test_seekers[c] for c in rank_cvs], args.lang).eval(
        [jprime[c] for c in rank_cvs])
metrics["seconds"] = {"jprime": jprime_seconds, **{f"train {k}": v for k, v in train_seconds.items()},
                      "test": time.time() - t_eval, "total": time.time() - t_start}
table = ranking.markdown(metrics, args.k)
with atomic_dir(args.out) as tmp:  # the whole folder or nothing: never one run's M beside another's M0
    for name, M in trained.items():
        save_matcher(tmp / {"M": "m", "M0": "m0"}.get(name, "m0-scratch"), M, enc_tok, args,
                     metrics={"validation": chosen[name]})
    write_json(tmp / "metrics.json", metrics)
    (tmp / "metrics.md").write_text(table, encoding="utf-8")
print("\n" + table)
log(f"wrote {args.out}/m, {args.out}/m0{'' if args.no_scratch else ', ' + args.out + '/m0-scratch'}, metrics.json and "
    f"metrics.md ({time.time() - t_start:.0f}s)")
