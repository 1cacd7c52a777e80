"""Issue 22's bench: what makes U learn fit? Trains one U on a recipe of (C, J+, J−) triples for a fixed number
of steps and measures it on the validation seekers: the held-out triples of the log (beside the lexical
score), the seeker's best market job against a random one (of any field, of another, of its own), and NDCG@10
of U re-ranking the 50 jobs the lexical score retrieves. Appends a line to --log-to (bench/results/rm-lab.jsonl);
README, stage 2, has the table. Run from the repository root after the pipeline's
train_sft.py (it reads data/ and ckpt/sft):

    PYTHONPATH=. python bench/rm_lab.py --log --steps 200                  # the application log's triples
    PYTHONPATH=. python bench/rm_lab.py --log --field-neg 2 --peer-neg 2   # + other fields' and other seekers' JDs
    PYTHONPATH=. python bench/rm_lab.py --market-pairs 4 --any-pairs 4     # recruiter-judged pairs of market jobs
    PYTHONPATH=. python bench/rm_lab.py --group 9 [--layers 3 | --scratch [--arch 4,128,4,2,384] | --emb fresh]
    PYTHONPATH=. python bench/rm_lab.py --samples --sample-cvs 1000 --random-jobs 2 --steps 520   # the default's data
    PYTHONPATH=. python bench/rm_lab.py --group 9 --steps 3000 --eval-every 250                   # more time
    PYTHONPATH=. python bench/rm_lab.py --log --steps 400 --pretext 300 [--pretext-idf] [--pool mean]   # token membership first
    PYTHONPATH=. python bench/rm_lab.py --log --steps 400 --pretext 900 --pretext-idf --pretext-schedule constant \
        [--probe head] --save-pretext /tmp/pre.pt --seed 1 --eval-every 100                      # long enough to form
    PYTHONPATH=. python bench/rm_lab.py --log --random-jobs 2 --load-pretext /tmp/pre.pt --seed 1    # other data after it
    PYTHONPATH=. python bench/rm_lab.py --log --steps 400 --oracle-labels                         # no recruiter noise
    python -c "from girl.market import build; build('/tmp/bigm', seekers=dict(sft=4000, rm=15000, ppo=600, test=400, val=400))"
    PYTHONPATH=. python bench/rm_lab.py --market-dir /tmp/bigm --log --steps 2200 --eval-every 550  # 10x the log

A lab script, not a stage: one thread, no checkpoint, a plain AdamW loop with train_rm.py's learning-rate schedule.
U's input is girl.reward.u_input's: since the shared line (after commit a02b2bf) it ends with the tokens of J that C
holds; every line of rm-lab.jsonl was logged before, with U reading template(C, J) + EOS (check out a02b2bf to rerun one).
"""

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from girl import evaluation, market, ranking
from girl.lexical import TfIdf
from girl.market.oracle import recruiter_triple
from girl.lm.checkpoint import load_model
from girl.lm.model import RewardModel
from girl.lm.tokenizer import Tokenizer
from girl.losses import rm_loss
from girl.reward import encode_triples, pair_scores, u_input, u_scores
from girl.template import prompt_ids
from girl.training import adamw, lr_at, set_lr

p = argparse.ArgumentParser()
p.add_argument("--log", action="store_true")
p.add_argument("--samples", action="store_true")
p.add_argument("--sample-cvs", type=int, default=1200)
p.add_argument("--field-neg", type=int, default=0, help="per CV: J+ vs a random job of another field")
p.add_argument("--peer-neg", type=int, default=0, help="per CV: J+ vs another seeker's accepted JD, same field")
p.add_argument("--market-pairs", type=int, default=0, help="per CV: two random same-field market jobs")
p.add_argument("--random-jobs", type=int, default=0, help="per CV: J+ vs a random market job")
p.add_argument("--any-pairs", type=int, default=0, help="per CV: two random market jobs")
p.add_argument("--group", type=int, default=0, help="K JDs per CV, every pair judged (InstructGPT's K-wise)")
p.add_argument("--group-cvs", type=int, default=4, help="CVs per step in --group mode")
p.add_argument("--layers", type=int, default=2)
p.add_argument("--steps", type=int, default=400)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--scratch", action="store_true", help="U not started from G")
p.add_argument("--emb", choices=["g", "fresh", "noise", "center"], default="g", help="U's token embeddings")
p.add_argument("--arch", help="scratch U: layers,dim,heads,kv_heads,hidden")
p.add_argument("--eval-every", type=int, default=0)
p.add_argument("--pretext", type=int, default=0, help="steps of the pretext before L_rmt: which of J's tokens C holds")
p.add_argument("--pretext-lr", type=float, default=1e-3)
p.add_argument("--pretext-idf", action="store_true", help="weigh each of J's tokens in the pretext by its IDF over the JDs")
p.add_argument("--pretext-schedule", choices=["cosine", "constant"], default="cosine", help="the pretext's lr after warm-up")
p.add_argument("--pretext-batch", type=int, default=32, help="sequences per pretext step")
p.add_argument("--save-pretext", help="save U's state after the pretext here (a lab cache, torch.save)")
p.add_argument("--load-pretext", help="start L_rmt from a U saved by --save-pretext (skips the pretext)")
p.add_argument("--probe", choices=["linear", "head"], default="linear",
               help="the pretext's reader: a separate linear probe, or U's own scalar head at every position")
p.add_argument("--pretext-eos", type=float, default=0.0,
               help="the pretext also asks U's head at the EOS for the IDF-weighted share of J's tokens C holds, with "
                    "this weight relative to J's tokens' (0: none); with --probe head, that is U(C, J) itself")
p.add_argument("--aux", type=float, default=0.0, help="λ of the pretext's loss on a batch of the pretext's sequences, kept on during L_rmt")
p.add_argument("--oracle-labels", action="store_true", help="a diagnostic: each training pair ordered by f, no recruiter noise")
p.add_argument("--pool", choices=["last", "mean"], default="last",
               help="a diagnostic: U's head on the mean of every position's state, not the last (not HF's reading)")
p.add_argument("--theta", type=float, default=0, help="U's rope_theta (default: G's)")
p.add_argument("--log-to", default="bench/results/rm-lab.jsonl", help="JSONL the result line is appended to")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--tag", default="")
p.add_argument("--market-dir", default="data", help="the market (G is ckpt/sft: same seed, same SFT seekers)")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
t0 = time.time()
lang, mdir = "zh", Path(args.market_dir)
read = lambda name: [json.loads(line) for line in (mdir / name).read_text(encoding="utf-8").splitlines()]
G, tok = load_model("ckpt/sft", dtype=torch.float32), Tokenizer.from_pretrained("ckpt/sft")
jds, jobs = market.load_jobs(mdir)
field_of = {t: j.field for t, j in zip(jds, jobs)}
by_field = {}
for t, j in zip(jds, jobs):
    by_field.setdefault(j.field, []).append(t)
rng = random.Random(args.seed)

rm_train = read("rm_train.jsonl")
cvs = list({r["cv"]: r for r in rm_train}.values())  # one row per CV, carries its seeker
accepted = {}
for r in rm_train:
    accepted.setdefault(r["cv"], []).append(r["jd_pos"])
accepted = {k: list(dict.fromkeys(v)) for k, v in accepted.items()}
accepted_in_field = {}
for cv, v in accepted.items():
    for jd in v:
        accepted_in_field.setdefault(field_of[jd], []).append((cv, jd))


def judged(row, a, b):
    """The recruiter's (C, J+, J−) triple of a against b for row's CV: a list of one, or none for a tie."""
    return recruiter_triple(row, market.Seeker.from_json(row["seeker"]), a, b, lang, rng)


rows = []
if args.log:
    rows += rm_train
if args.samples:
    cache = Path(f"/tmp/rm_samples_{args.sample_cvs}.json")
    if not cache.exists():
        K = 4
        sub = cvs[: args.sample_cvs]
        prompts = [prompt_ids(tok, r["cv"], lang, 128)[0] for r in sub for _ in range(K)]
        s = evaluation.sample_jds(G, tok, prompts, 96, 1.0, torch.Generator().manual_seed(0), batch_size=256)
        cache.write_text(json.dumps([s.texts[i * K : (i + 1) * K] for i in range(len(sub))]))
    texts = json.loads(cache.read_text())
    rows += market.recruiter_comparisons(cvs[: len(texts)], texts, lang, random.Random(0))
fields = list(by_field)
for r in cvs:
    s = market.Seeker.from_json(r["seeker"])
    mine = accepted[r["cv"]]
    for _ in range(args.field_neg):
        other = rng.choice([f for f in fields if f != s.field])
        rows += judged(r, rng.choice(mine), rng.choice(by_field[other]))
    for _ in range(args.peer_neg):
        peers = [jd for cv, jd in accepted_in_field.get(s.field, []) if cv != r["cv"]]
        rows += judged(r, rng.choice(mine), rng.choice(peers))
    for _ in range(args.market_pairs):
        rows += judged(r, *rng.sample(by_field[s.field], 2))
    for _ in range(args.random_jobs):
        rows += judged(r, rng.choice(mine), rng.choice(jds))
    for _ in range(args.any_pairs):
        rows += judged(r, *rng.sample(jds, 2))
rejected = {}
for r in rm_train:
    rejected.setdefault(r["cv"], []).append(r["jd_neg"])
groups = []
if args.group:
    for r in cvs:
        s = market.Seeker.from_json(r["seeker"])
        peers = [jd for cv, jd in accepted_in_field.get(s.field, []) if cv != r["cv"]]
        other = rng.choice([f for f in fields if f != s.field])
        pool = (accepted[r["cv"]][:2] + list(dict.fromkeys(rejected[r["cv"]]))[:2] + rng.sample(peers, 2)
                + rng.sample(by_field[s.field], 2) + [rng.choice(by_field[other])])[: args.group]
        pool = list(dict.fromkeys(pool))
        f = [market.oracle_score(s, t, lang) or 0.0 for t in pool]
        pairs = []
        for a in range(len(pool)):
            for b in range(a + 1, len(pool)):
                if f[a] == f[b]:
                    continue
                pa = rng.random() < 1 / (1 + np.exp(-12 * (f[a] - f[b])))
                pairs.append((a, b) if pa else (b, a))
        if pairs:
            groups.append(([u_input(tok, r["cv"], t, lang, 256)[0] for t in pool], pairs))
    print(f"{len(groups)} groups, {sum(len(g[1]) for g in groups)} pairs", flush=True)
if args.oracle_labels:
    relabelled, flipped = [], 0
    for r in rows:
        s_ = market.Seeker.from_json(r["seeker"])
        a, b = (market.oracle_score(s_, r[k], lang) or 0.0 for k in ("jd_pos", "jd_neg"))
        if a != b:
            relabelled.append(r if a > b else {**r, "jd_pos": r["jd_neg"], "jd_neg": r["jd_pos"]})
            flipped += a < b
    print(f"oracle labels: {len(relabelled)} of {len(rows)} pairs kept, {flipped} flipped", flush=True)
    rows = relabelled
train, _ = encode_triples(tok, rows, lang, 256)
print(f"{len(train)} training triples ({time.time() - t0:.0f}s)", flush=True)

U = RewardModel.from_generator(G, args.layers)
if args.scratch:
    from dataclasses import replace
    c = U.config
    if args.arch:
        L, D, H, KV, HID = map(int, args.arch.split(","))
        c = replace(c, n_layers=L, dim=D, n_heads=H, n_kv_heads=KV, head_dim=D // H, hidden_dim=HID)
    U = RewardModel(c)
if args.theta:
    from dataclasses import replace as _replace
    _sd = U.state_dict()
    U = RewardModel(_replace(U.config, rope_theta=args.theta))
    U.load_state_dict(_sd)
print("U parameters", U.num_parameters(), flush=True)
if args.pool == "mean":
    def mean_pooled(self, input_ids, attention_mask=None, every_position=False):
        h = self.backbone.hidden_states(input_ids, attention_mask)
        m = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1)).squeeze(-1)
    U.forward = mean_pooled.__get__(U)
del G
E = U.backbone.tok_emb.weight
with torch.no_grad():
    if args.emb == "fresh":
        E.normal_(0, E.std().item())
    elif args.emb == "noise":
        E.add_(torch.randn_like(E) * E.std())
    elif args.emb == "center":
        E.sub_(E.mean(0))
print("embedding std", E.std().item(), "norm", E.norm(dim=-1).mean().item(), flush=True)
if args.load_pretext:
    saved = torch.load(args.load_pretext, weights_only=True)
    U.load_state_dict(saved["U"])
    args.pretext = 0
if args.pretext or args.aux:
    # U reads C against J: at each of J's positions, a probe says whether C holds that token (dense labels, free)
    probe = torch.nn.Linear(U.config.dim, 1)
    if args.load_pretext:
        probe.load_state_dict(saved["probe"])
    seqs = []
    df = {}
    for t in jds:
        for i in set(tok.encode(t)):
            df[i] = df.get(i, 0) + 1
    idf = {i: float(np.log((1 + len(jds)) / (1 + n))) for i, n in df.items()}
    for r in rows if rows else rm_train:
        n_prompt = len(prompt_ids(tok, r["cv"], lang, 256)[0])
        for k in ("jd_pos", "jd_neg"):
            ids = u_input(tok, r["cv"], r[k], lang, 256)[0]
            cv_tokens = set(tok.encode(r["cv"]))
            seqs.append((ids, n_prompt, [float(t in cv_tokens) for t in ids],
                         [idf.get(t, 0.0) if args.pretext_idf else 1.0 for t in ids]))
    print(f"pretext: {len(seqs)} sequences, {np.mean([np.mean(y[n:]) for _, n, y, _ in seqs]):.3f} of J's tokens in C", flush=True)

    def pretext_loss(batch):
        """The pretext's weighted BCE on a list of (ids, n_prompt, y, w); and its logits, y and w [B, T]."""
        T = max(len(x) for x, _, _, _ in batch)
        ids = torch.tensor([x + [tok.pad_or_eos_id] * (T - len(x)) for x, _, _, _ in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x, _, _, _ in batch])
        y = torch.tensor([yy + [0.0] * (T - len(yy)) for _, _, yy, _ in batch])
        w = torch.tensor([[0.0] * n + ww[n : len(x) - 1] + [0.0] * (T - len(x) + 1) for x, n, _, ww in batch])
        if args.pretext_eos:  # at the EOS: how much of J (IDF-weighted) C holds, a soft target
            for b, (x, n, _, _) in enumerate(batch):
                e, total = len(x) - 1, w[b, n : len(x) - 1].sum()
                y[b, e] = (w[b, n:e] * y[b, n:e]).sum() / total.clamp(min=1e-9)
                w[b, e] = args.pretext_eos * total
        logit = (U(ids, mask, every_position=True) if args.probe == "head"
                 else probe(U.backbone.hidden_states(ids, mask)).squeeze(-1))
        return torch.nn.functional.binary_cross_entropy_with_logits(logit, y, weight=w, reduction="sum") / w.sum(), logit, y, w

    popt = torch.optim.AdamW(list(U.parameters()) + list(probe.parameters()), lr=args.pretext_lr, weight_decay=0.1)
    pr = random.Random(args.seed + 1)
    for step in range(args.pretext):
        for gr in popt.param_groups:
            gr["lr"] = (lr_at(step, args.pretext, args.pretext_lr, 30) if args.pretext_schedule == "cosine"
                        else args.pretext_lr * min(1.0, (step + 1) / 30))
        bce, logit, y, w = pretext_loss(pr.sample(seqs, args.pretext_batch))
        popt.zero_grad()
        bce.backward()
        torch.nn.utils.clip_grad_norm_(U.parameters(), 1.0)
        popt.step()
        if step % 50 == 0 or step == args.pretext - 1:
            hard = (y == y.round()).float()  # J's tokens, not the EOS's soft target
            acc = (((logit > 0).float() == y).float() * w * hard).sum() / (w * hard).sum()
            rare = (w > 2).float() * hard  # J's tokens in fewer than 1 JD in 7
            rare_acc = (((logit > 0).float() == y).float() * rare).sum() / rare.sum().clamp(min=1)
            print(f"pretext {step} bce {bce.item():.4f} acc {acc.item():.3f} rare-token acc {rare_acc.item():.3f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    if args.save_pretext:
        torch.save({"U": U.state_dict(), "probe": probe.state_dict()}, args.save_pretext)



opt = adamw(U, args.lr, 0.1)
if args.aux:
    opt.add_param_group({"params": list(probe.parameters()), "weight_decay": 0.0})
g = torch.Generator().manual_seed(args.seed)
order = torch.randperm(len(train), generator=g).tolist()
pad = tok.pad_or_eos_id
t1 = time.time()
if args.group:
    random.Random(args.seed).shuffle(groups)
if args.eval_every:
    val_enc = encode_triples(tok, read("rm_val.jsonl"), lang, 256)[0]
    _rows = market.heldout(mdir, 200, part="val")
    _s = market.seekers(_rows)
    vcv = [r["cv"] for r in _rows]
    best_i = market.reference_jobs(_s, jobs, seed=1)[1]
    _r = random.Random(5)
    same_jd = [_r.choice(by_field[s.field]) for s in _s]
for step in range(args.steps):
    set_lr(opt, lr_at(step, args.steps, args.lr, 30))
    lo = (step * args.batch) % max(len(train), 1)
    if train and lo + args.batch > len(train):
        order = torch.randperm(len(train), generator=g).tolist()
    if args.group:
        from girl.reward import scores_of
        gs = [groups[(step * args.group_cvs + i) % len(groups)] for i in range(args.group_cvs)]
        seqs, wi, li, off = [], [], [], 0
        for sq, pr in gs:
            seqs += sq
            wi += [off + a for a, b in pr]
            li += [off + b for a, b in pr]
            off += len(sq)
        r = scores_of(U, seqs, pad)
        pos, neg = r[wi], r[li]
    else:
        batch = [train[order[(lo + i) % len(train)]] for i in range(args.batch)]
        pos, neg = pair_scores(U, batch, pad)
    loss = rm_loss(pos, neg)
    if args.aux:
        loss = loss + args.aux * pretext_loss(pr.sample(seqs, args.batch))[0]
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(U.parameters(), 1.0)
    opt.step()
    if step % 100 == 0:
        print(f"step {step} loss {loss.item():.4f} ({time.time() - t1:.0f}s)", flush=True)
    if args.eval_every and (step + 1) % args.eval_every == 0:
        ev = evaluation.rm_eval(U, {"": val_enc}, pad, 64)
        same = (u_scores(U, tok, vcv, [jds[i] for i in best_i], lang) > u_scores(U, tok, vcv, same_jd, lang)).float().mean().item()
        print(f"EVAL step {step + 1} val_acc {ev['eval_accuracy']:.4f} best_vs_same_field {same:.3f}", flush=True)
train_s = time.time() - t1

# --------------------------------------------------------------------- validation
U.eval()
val_triples = read("rm_val.jsonl")
ev = evaluation.rm_eval(U, {"": encode_triples(tok, val_triples, lang, 256)[0]}, pad, 64)
tfidf = TfIdf().fit(jds)
lex = tfidf.cosine([r["cv"] for r in val_triples], [r["jd_pos"] for r in val_triples]) > \
    tfidf.cosine([r["cv"] for r in val_triples], [r["jd_neg"] for r in val_triples])
seekers_rows = market.heldout(mdir, 200, part="val")
seekers = market.seekers(seekers_rows)
rand_i, best_i = market.reference_jobs(seekers, jobs, seed=1)
vcv = [r["cv"] for r in seekers_rows]
u_best = u_scores(U, tok, vcv, [jds[i] for i in best_i], lang)
u_rand = u_scores(U, tok, vcv, [jds[i] for i in rand_i], lang)
other = [rng.choice([t for t in jds if field_of[t] != s.field]) for s in seekers]  # slow but fine
same = [rng.choice(by_field[s.field]) for s in seekers]
u_other = u_scores(U, tok, vcv, other, lang)
u_same = u_scores(U, tok, vcv, same, lang)
# re-rank the 50 jobs the lexical score retrieves
S = tfidf.cosine_all(vcv, jds)
ndcg_u, ndcg_lex = [], []
attrs = [j.attributes() for j in jobs]
for i, s in enumerate(seekers):
    top = np.argsort(-S[i])[:50]
    gains = np.array([market.compatibility(s, attrs[k]) for k in top])
    u = u_scores(U, tok, [vcv[i]] * 50, [jds[k] for k in top], lang).numpy()
    ndcg_u.append(ranking.ndcg_at_k(u, gains, 10))
    ndcg_lex.append(ranking.ndcg_at_k(S[i][top], gains, 10))
out = dict(tag=args.tag, args=vars(args), n_train=len(train), train_s=round(train_s),
           val_acc=round(ev["eval_accuracy"], 4), val_loss=round(ev["eval_loss"], 4), lexical_val_acc=round(float(lex.mean()), 4),
           best_vs_random=round((u_best > u_rand).float().mean().item(), 3),
           best_vs_other_field=round((u_best > u_other).float().mean().item(), 3),
           best_vs_same_field=round((u_best > u_same).float().mean().item(), 3),
           ndcg10_rerank50=round(float(np.nanmean(ndcg_u)), 4), lexical_ndcg10_top50=round(float(np.nanmean(ndcg_lex)), 4))
print(json.dumps(out), flush=True)
with open(args.log_to, "a") as f:
    f.write(json.dumps(out) + "\n")
