"""Stage 2, RMT: train the reward model U on recruiter feedback (GIRL §3.2).

    python train_rm.py                                    # built-in U (smaller than G): the log + comparisons of G's samples
    python train_rm.py --feedback log                     # the paper's data alone: the application log's triples
    python train_rm.py --model Qwen/Qwen2.5-0.5B --data triples.jsonl --sft ckpt/sft
    python train_rm.py --resume                           # continue an interrupted run
    torchrun --nproc_per_node 4 train_rm.py [--fsdp]      # several GPUs: DDP, or U sharded (FSDP2)

U(C, J) reads template(C, J), a line of the tokens of J that C holds, and EOS, and gives one scalar
(girl/reward.py). It learns from (C, J+, J−) triples, J+ accepted and J− rejected by a recruiter for the same
CV, with L_rmt = −log σ(U(C, J+) − U(C, J−)) (girl/losses.py). On the market, by default, the triples are
the application log's (the paper's data) and a recruiter's comparisons of G's own samples: K J′ per CV, each
pair judged by the market's simulated recruiter (InstructGPT's recipe), so that U has seen the kind of text
PPO asks it to score. For every training CV the recruiter can also compare a JD it accepted with random JDs
of the market (--random-jobs), mostly of another field: the negatives no application log holds. At the end
the best U stands beside the training-free lexical score and the oracle on the validation seekers
(metrics.json "judges"): their held-out triples, their best market job against a random one, and the jobs
the lexical score retrieves for them, re-ranked.
The built-in U shares G's tokenizer (read from --sft) and is smaller than G. Writes --out (default
ckpt/rm): the best U by held-out loss as a Hugging Face *ForSequenceClassification folder (num_labels 1,
opens in transformers), with train_args.json and metrics.json; --out-last holds the resumable state.
"""

import json
import random
import time
from pathlib import Path

import torch

from girl import evaluation, market
from girl.cli import (COUNT, COUNT0, NONNEGATIVE, POSITIVE, add_market_flags, add_training_flags, barrier, fail, finish,
                      judge_u, load_rows, log, optimizer_step, parser, resuming, save_at_eval, save_state, setup,
                      start_training, training_args)
from girl.files import CheckpointError, write_json
from girl.lm.checkpoint import load_model, open_folder
from girl.lm.hub import HubError
from girl.lm.model import RewardModel, Transformer
from girl.lm.tokenizer import Tokenizer
from girl.losses import rm_loss
from girl.reward import encode_triples, pair_scores
from girl.template import prompt_ids
from girl.training import Progress, StopRequest, global_sum, lr_at, set_lr, step_indices

p = parser(__doc__)
# Model
p.add_argument("--model", default="builtin",
               help="'builtin': a Llama-style U smaller than G, trained from scratch with G's tokenizer; or a local "
                    "HF folder / hub id (a language model gets a new scalar head; a reward model continues)")
p.add_argument("--u-layers", type=COUNT, default=2, help="layers of the built-in U, taken from G's lowest (default: 2)")
p.add_argument("--sft", default="ckpt/sft", help="G's checkpoint: its tokenizer for the built-in U, its size for "
                                                 "comparison (default: ckpt/sft)")
# Data
p.add_argument("--data", help='training JSONL of {"cv", "jd_pos", "jd_neg"} (default: the market\'s rm_train.jsonl)')
p.add_argument("--eval-data", help="held-out triples (default: the market's rm_val.jsonl; with --data and no "
                                   "--eval-data, 5%% of --data is held out)")
add_market_flags(p)
p.add_argument("--max-len", type=COUNT, default=256, help="tokens per scored sequence; longer CVs are cut (default: 256)")
p.add_argument("--feedback", choices=["samples", "log", "both"],
               help="what U learns from: 'samples', a simulated recruiter's comparisons of G's own J′ (market only); "
                    "'log', the (C, J+, J−) triples of --data or the market's application log; 'both' "
                    "(default: both on the market, log with --data)")
p.add_argument("--samples-per-cv", type=COUNT0, default=4, help="J′ sampled from G per CV; every pair is compared (default: 4)")
p.add_argument("--sample-cvs", type=COUNT0, default=1200, help="training CVs given sampled J′ (the market has 1397); "
                                                       "200 held-out CVs get them too, for evaluation (default: 1200)")
p.add_argument("--sample-temperature", type=POSITIVE, default=1.0,
               help="temperature of those samples: above PPO's, so that U also meets the unusable JDs PPO must "
                    "learn to avoid (default: 1.0)")
p.add_argument("--max-new-tokens", type=COUNT, default=96, help="J′ length limit when sampling (default: 96)")
p.add_argument("--random-jobs", type=COUNT0, default=0,
               help="comparisons per training CV of a JD accepted for it with a random JD of the market, judged by the "
                    "simulated recruiter (market only): most are of another field, a negative no application log holds "
                    "(default: 0; reading the shared line, U orders a seeker's best job above a random one 0.955-0.985 "
                    "of the time without them, README stage 2)")
p.add_argument("--report-seekers", type=COUNT0, default=200,
               help="validation seekers on whose real jobs the final U is reported beside the lexical reference and "
                    "the oracle (market only; 0: none) (default: 200)")
p.add_argument("--candidates", type=COUNT, default=50,
               help="jobs the lexical score retrieves for each of them, which U then re-ranks (default: 50)")
# Optimization, evaluation, output
add_training_flags(p, "triples", lr_builtin=1e-3, lr_pretrained=1e-5, eval_every=200, out="ckpt/rm")
p.add_argument("--margin", type=NONNEGATIVE, default=0.0, help="m in −log σ(r+ − r− − m) (default: 0, the paper's loss)")
p.add_argument("--center-coef", type=NONNEGATIVE, default=0.0, help="η of the η·(r+ + r−)² centering term (default: 0)")
args = training_args(p)
builtin = args.model == "builtin"

run = setup(args.seed, fsdp=args.fsdp)
rank, world, device, autocast = run.rank, run.world, run.device, run.autocast

# ----------------------------------------------------------------------------- data
train_rows, eval_rows, mdir = load_rows(args, "rm", run)
on_market = mdir is not None
args.feedback = args.feedback or ("both" if on_market else "log")
if args.feedback != "log" and not on_market:
    fail(f"--feedback {args.feedback} needs the market's simulated recruiter; with your own --data use --feedback log "
         "(or collect recruiters' comparisons of G's samples as (C, J+, J−) triples yourself)")
if args.random_jobs and not on_market:
    fail("--random-jobs needs the market's simulated recruiter and its jobs; with your own --data, add the "
         "negatives you have to its triples")
sampling = on_market and args.samples_per_cv > 1  # held-out comparisons of samples are measured whatever U learns from

# ----------------------------------------------------------------------------- tokenizer, G and U
resume = resuming(args, rank=rank)
G, g_parameters = None, None
try:
    if Path(args.sft).is_dir():
        with torch.device("meta"):
            g_parameters = Transformer(open_folder(args.sft)[1]).num_parameters()
    elif builtin or sampling:
        fail(f"{args.sft}: no G checkpoint; the built-in U shares G's tokenizer and U learns from comparisons of G's "
             "samples: run python train_sft.py first (or pass --sft DIR; with --model, --samples-per-cv 0)")
    if builtin or sampling:
        G, g_tok = load_model(args.sft, dtype=torch.float32, device=device), Tokenizer.from_pretrained(args.sft)
    if resume:
        tok = Tokenizer.from_pretrained(args.out_last)
        model = load_model(args.out_last, RewardModel, dtype=torch.float32, device=device)
    elif builtin:
        # U is G's family and width with fewer layers, started from G's embeddings and lower layers: the
        # built-in stand-in for the paper's smaller pretrained model (nothing pretrained is smaller than G here)
        tok = g_tok
        model = RewardModel.from_generator(G, args.u_layers)
    else:
        tok = Tokenizer.from_pretrained(args.model)
        if open_folder(args.model)[2]:  # a reward model: go on training it
            model = load_model(args.model, RewardModel, dtype=torch.float32, device=device)
        else:
            model = RewardModel.from_generator(load_model(args.model, dtype=torch.float32, device=device))
    tok.check_fits(model.config, args.model)
except (CheckpointError, HubError) as e:
    fail(str(e))
if tok.eos_id is None:
    fail(f"{args.model}: the tokenizer has no EOS token; U reads its score at the EOS after the JD")
pad_id = tok.pad_or_eos_id
model.config.pad_token_id = pad_id  # transformers' sequence classifier finds the last token by it
u_parameters = model.num_parameters()
log(f"U: {model.config.model_type}, {u_parameters / 1e6:.2f}M parameters"
    + (f" (G: {g_parameters / 1e6:.2f}M)" if g_parameters else ""), rank=rank)

# ----------------------------------------------------------------------------- recruiter feedback on G's samples
# K J′ for each of the first N distinct CVs, every pair of them judged by the market's simulated recruiter:
# InstructGPT's recipe, U learns from comparisons of the policy's own outputs
comparisons = {"train": [], "eval": []}
if sampling:
    t0, K = time.time(), args.samples_per_cv
    for split, rows, n in (("train", train_rows, args.sample_cvs if args.feedback != "log" else 0), ("eval", eval_rows, 200)):
        cvs = list({r["cv"]: r for r in rows}.values())[:n]
        if not cvs:
            continue
        prompts = [prompt_ids(g_tok, r["cv"], args.lang, args.max_len // 2)[0] for r in cvs for _ in range(K)]
        gen = torch.Generator(device=device).manual_seed(args.seed)
        s = evaluation.sample_jds(G, g_tok, prompts, args.max_new_tokens, args.sample_temperature, gen,
                                  autocast=autocast, batch_size=64 * K)
        comparisons[split] = market.recruiter_comparisons(cvs, [s.texts[i * K : (i + 1) * K] for i in range(len(cvs))],
                                                          args.lang, random.Random(args.seed))
    log(f"recruiter comparisons of G's samples: {len(comparisons['train'])} training, {len(comparisons['eval'])} "
        f"held-out ({K} per CV, T={args.sample_temperature}, {time.time() - t0:.0f}s)", rank=rank)
del G
# easy negatives: a JD accepted for the CV against a random JD of the market, judged by the same recruiter
if args.random_jobs:
    comparisons["random_jobs"] = market.random_job_comparisons(train_rows, market.load_jobs(mdir)[0], args.random_jobs,
                                                               args.lang, random.Random(args.seed))
    log(f"recruiter comparisons of accepted JDs with random market JDs: {len(comparisons['random_jobs'])}", rank=rank)

train_triples = ((train_rows if args.feedback != "samples" else []) + comparisons["train"]
                 + comparisons.get("random_jobs", []))
train, cut = encode_triples(tok, train_triples, args.lang, args.max_len)
if not train:
    fail("no training triples: the recruiter found every pair of G's samples equally good (none may parse); "
         "train G longer, or use --feedback log")
evals = {"": encode_triples(tok, eval_rows, args.lang, args.max_len)[0]}
if comparisons["eval"]:
    evals["samples_"] = encode_triples(tok, comparisons["eval"], args.lang, args.max_len)[0]
log(f"data: {len(train)} training triples, {' + '.join(str(len(e)) for e in evals.values())} held-out; sequences cut "
    f"to --max-len {args.max_len}: {cut}", rank=rank)

# ----------------------------------------------------------------------------- optimizer
state = {"step": 0, "best_eval_loss": float("inf"), "train_tokens": 0, "initial_eval": None}
raw_model = model
model, optimizer, max_steps, state = start_training(raw_model, args, run, len(train), "triples", state, resume)

# ----------------------------------------------------------------------------- training loop
# held-out loss and accuracy on real JDs and, when there are any, on G's samples; `loss` (their mean) picks the best U
if state["initial_eval"] is None:
    state["initial_eval"] = evaluation.rm_eval(raw_model, evals, pad_id, args.batch_size, args.margin, args.center_coef, autocast)
    log(f"initial eval: {json.dumps({k: round(v, 4) for k, v in state['initial_eval'].items()})}", rank=rank)
model.train()
progress = Progress(max_steps, args.log_every, enabled=rank == 0, start_step=state["step"])
stop = StopRequest()  # SIGINT/SIGTERM: save at the end of the step and exit


t_start = time.time()
for step in range(state["step"], max_steps):
    indices = step_indices(step, len(train), args.batch_size, args.grad_accum, args.seed, rank, world)
    lr = lr_at(step, max_steps, args.lr, args.warmup)
    set_lr(optimizer, lr)
    micro = [[train[i] for i in idx] for idx in indices]
    n_pairs = global_sum(sum(map(len, micro)), world, device)  # the step's pairs over every rank (see train_sft.py)
    loss_sum, correct, tokens = 0.0, 0, 0
    for pairs in micro:
        r_pos, r_neg = pair_scores(model, pairs, pad_id, autocast)
        loss = rm_loss(r_pos, r_neg, args.margin, args.center_coef) * len(pairs) * world / n_pairs
        loss.backward()
        loss_sum += loss.item() / world
        correct += (r_pos > r_neg).sum().item()
        tokens += sum(len(p) + len(n) for p, n in pairs)
    step_sums = global_sum({"loss": loss_sum, "correct": correct, "tokens": tokens}, world, device)
    loss_sum, tokens = step_sums["loss"], int(step_sums["tokens"])
    grad_norm = optimizer_step(raw_model, optimizer, args, step, loss_sum)
    state["train_tokens"] += tokens
    state["step"] = step + 1
    progress.step(step, tokens, loss=loss_sum, acc=step_sums["correct"] / n_pairs, lr=lr, grad_norm=grad_norm)
    if (step + 1) % args.eval_every == 0 or step + 1 == max_steps:
        if run.takes_part:
            e = evaluation.rm_eval(raw_model, evals, pad_id, args.batch_size, args.margin, args.center_coef, autocast)
            improved = save_at_eval(args, run, state, e["loss"], raw_model, tok, optimizer, best_eval=e)
            log(f"eval loss {e['eval_loss']:.4f}  accuracy {e['eval_accuracy']:.4f}"
                + (f"  on G's samples: loss {e['samples_eval_loss']:.4f}  accuracy {e['samples_eval_accuracy']:.4f}"
                   if "samples_" in evals else "")
                + (f"  saved best to {args.out}" if improved else ""), rank=rank)
        barrier(world)
    if stop.requested(world, device) and step + 1 < max_steps:
        stop.exit(f"step {step + 1}", args.out_last, rank, world,
                  save=lambda: save_state(args, run, raw_model, tok, optimizer, state))
train_seconds = time.time() - t_start

# ----------------------------------------------------------------------------- final metrics
if rank == 0:
    metrics = {**state["best_eval"],
               **{f"initial_{k}": v for k, v in state["initial_eval"].items() if k.endswith(("eval_loss", "eval_accuracy"))},
               "eval_pairs": len(evals[""]), "samples_eval_pairs": len(evals.get("samples_", [])),
               "samples_train_pairs": len(comparisons["train"]), "random_job_pairs": len(comparisons.get("random_jobs", [])),
               "train_pairs": len(train), "u_parameters": u_parameters, "g_parameters": g_parameters,
               "steps": state["step"], "train_tokens": state["train_tokens"], "train_seconds": train_seconds,
               "tokens_per_sec": progress.tokens / max(train_seconds, 1e-9), "sequences_cut": cut}
    # how often the true f agrees with the recruiter on these pairs: the ceiling their noise allows
    for prefix, rows in (("", eval_rows if on_market else []), ("samples_", comparisons["eval"])):
        if rows:
            metrics[f"{prefix}oracle_accuracy"] = market.oracle_accuracy(rows, args.lang)
            metrics[f"{prefix}accuracy_vs_oracle"] = metrics[f"{prefix}eval_accuracy"] / metrics[f"{prefix}oracle_accuracy"]
    if on_market and args.report_seekers:  # the best U on the validation seekers (the test seekers': generate.py --eval)
        metrics["judges"] = judge_u(load_model(args.out, RewardModel, dtype=torch.float32, device=device), tok, mdir,
                                    "val", args.report_seekers, args.candidates, args.lang, args.seed, autocast)
    write_json(Path(args.out) / "metrics.json", metrics)
    log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if not isinstance(v, dict)}))
    if "judges" in metrics:
        log("\n" + evaluation.judges_markdown(metrics["judges"], "U as a judge of fit, validation seekers"))
    log(f"wrote {args.out}/ (best by eval loss) and {args.out_last}/ (resumable)")
finish(world)
