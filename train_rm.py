"""Stage 2, RMT: train the reward model U on recruiter feedback (GIRL §3.2).

    python train_rm.py                                    # built-in U (smaller than G), recruiter comparisons of G's samples
    python train_rm.py --feedback log                     # the paper's data alone: the application log's triples
    python train_rm.py --model Qwen/Qwen2.5-0.5B --data triples.jsonl --sft ckpt/sft
    python train_rm.py --resume                           # continue an interrupted run

U(C, J) reads template(C, J) + EOS and gives one scalar. It learns from (C, J+, J−) triples, J+ accepted
and J− rejected by a recruiter for the same CV, with L_rmt = −log σ(U(C, J+) − U(C, J−)) (girl/losses.py).
On the market, by default, the triples are a recruiter's comparisons of G's own samples: K J′ per CV,
each pair judged by the market's simulated recruiter (InstructGPT's recipe). A U trained on the
application log alone never sees the kind of text PPO asks it to score, and PPO against it makes G
worse (README, stage 2 and 3).
The built-in U shares G's tokenizer (read from --sft) and is smaller than G. Writes --out (default
ckpt/rm): the best U by held-out loss as a Hugging Face *ForSequenceClassification folder (num_labels 1,
opens in transformers), with train_args.json and metrics.json; --out-last holds the resumable state.
"""

import argparse
import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from girl import market
from girl.checkpoint import CheckpointError, open_folder, write_json
from girl.data import DataError, right_pad, sft_example
from girl.hub import HubError
from girl.losses import rm_loss
from girl.model import RewardModel, Transformer
from girl.sampling import generate, response_texts
from girl.template import TEMPLATE, prompt_ids
from girl.tokenizer import Tokenizer
from girl.training import (Progress, distributed, fail, load_rows, load_state, log, lr_at, param_groups,
                           save_checkpoint, step_indices)

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
# Model
p.add_argument("--model", default="builtin",
               help="'builtin': a Llama-style U smaller than G, trained from scratch with G's tokenizer; or a local "
                    "HF folder / hub id (a language model gets a new scalar head; a reward model continues)")
p.add_argument("--u-layers", type=int, default=2, help="layers of the built-in U, taken from G's lowest (default: 2)")
p.add_argument("--sft", default="ckpt/sft", help="G's checkpoint: its tokenizer for the built-in U, its size for "
                                                 "comparison (default: ckpt/sft)")
# Data
p.add_argument("--data", help='training JSONL of {"cv", "jd_pos", "jd_neg"} (default: the market\'s rm_train.jsonl)')
p.add_argument("--eval-data", help="held-out triples (default: the market's rm_eval.jsonl; with --data and no "
                                   "--eval-data, 5%% of --data is held out)")
p.add_argument("--market-dir", default="data", help="folder of the synthetic market, built on first use (default: data)")
p.add_argument("--lang", default="zh", choices=list(TEMPLATE), help="prompt and market language (default: zh)")
p.add_argument("--max-len", type=int, default=256, help="tokens per scored sequence; longer CVs are cut (default: 256)")
p.add_argument("--feedback", choices=["samples", "log", "both"],
               help="what U learns from: 'samples', a simulated recruiter's comparisons of G's own J′ (market only); "
                    "'log', the (C, J+, J−) triples of --data or the market's application log; 'both' "
                    "(default: samples on the market, log with --data)")
p.add_argument("--samples-per-cv", type=int, default=4, help="J′ sampled from G per CV; every pair is compared (default: 4)")
p.add_argument("--sample-cvs", type=int, default=1200, help="training CVs given sampled J′ (the market has 1397); "
                                                       "200 held-out CVs get them too, for evaluation (default: 1200)")
p.add_argument("--sample-temperature", type=float, default=1.0,
               help="temperature of those samples: above PPO's, so that U also meets the unusable JDs PPO must "
                    "learn to avoid (default: 1.0)")
p.add_argument("--max-new-tokens", type=int, default=96, help="J′ length limit when sampling (default: 96)")
# Optimization
p.add_argument("--batch-size", type=int, default=16, help="triples per micro-batch (default: 16)")
p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
p.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3 for builtin, 1e-5 for pretrained)")
p.add_argument("--warmup", type=int, default=30, help="linear warmup steps (default: 30)")
p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay of weight matrices (default: 0.1)")
p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (default: 1.0)")
p.add_argument("--epochs", type=float, default=1.0, help="passes over the training triples (default: 1)")
p.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
p.add_argument("--margin", type=float, default=0.0, help="m in −log σ(r+ − r− − m) (default: 0, the paper's loss)")
p.add_argument("--center-coef", type=float, default=0.0, help="η of the η·(r+ + r−)² centering term (default: 0)")
p.add_argument("--seed", type=int, default=0, help="seed of the data order, the init and the market (default: 0)")
# Evaluation
p.add_argument("--eval-every", type=int, default=200, help="evaluate (and save) every N steps (default: 200)")
# Output
p.add_argument("--out", default="ckpt/rm", help="best checkpoint (default: ckpt/rm)")
p.add_argument("--out-last", help="latest checkpoint + optimizer state for --resume (default: OUT-last)")
p.add_argument("--resume", action="store_true", help="continue from --out-last")
p.add_argument("--log-every", type=int, default=10, help="progress line every N steps (default: 10)")
args = p.parse_args()
args.out_last = args.out_last or args.out.rstrip("/") + "-last"
builtin = args.model == "builtin"
args.lr = args.lr or (1e-3 if builtin else 1e-5)

rank, world, device = distributed()
torch.manual_seed(args.seed)
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

# ----------------------------------------------------------------------------- data
try:
    train_rows, eval_rows, mdir = load_rows(args, "rm", rank, world)
except DataError as e:
    fail(str(e))
on_market = mdir is not None

# ----------------------------------------------------------------------------- tokenizer and U
resuming = args.resume and (Path(args.out_last) / "trainer_state.json").is_file()
if args.resume and not resuming:
    log(f"--resume: no state in {args.out_last}, starting fresh", rank=rank)
g_parameters = None
try:
    if Path(args.sft).is_dir():
        _, g_config, _ = open_folder(args.sft)
        with torch.device("meta"):
            g_parameters = Transformer(g_config).num_parameters()
    if resuming:
        tok = Tokenizer.from_pretrained(args.out_last)
        model = RewardModel.from_pretrained(args.out_last, dtype=torch.float32, device=device)
    elif builtin:
        if g_parameters is None:
            fail(f"{args.sft}: no G checkpoint; the built-in U shares G's tokenizer: run python train_sft.py first "
                 "(or pass --sft DIR)")
        # U is G's family and width with half its layers, started from G's embeddings and lower layers: the
        # built-in stand-in for the paper's smaller pretrained model (nothing pretrained is smaller than G here)
        tok = Tokenizer.from_pretrained(args.sft)
        config = replace(g_config, n_layers=args.u_layers, pad_token_id=tok.pad_id)
        model = RewardModel(config).to(device)
        g_state = Transformer.from_pretrained(args.sft, dtype=torch.float32, device=device).state_dict()
        wanted = model.backbone.state_dict().keys()  # G's embeddings, norm and its lowest u_layers layers
        model.backbone.load_state_dict({k: v for k, v in g_state.items() if k in wanted})
    else:
        tok = Tokenizer.from_pretrained(args.model)
        model = RewardModel.from_pretrained(args.model, dtype=torch.float32, device=device)
    tok.check_fits(model.config, args.model)
except (CheckpointError, HubError) as e:
    fail(str(e))
if tok.eos_id is None:
    fail(f"{args.model}: the tokenizer has no EOS token; U reads its score at the EOS after the JD")
pad_id = tok.pad_id if tok.pad_id is not None else tok.eos_id
model.config.pad_token_id = pad_id  # transformers' sequence classifier finds the last token by it
u_parameters = model.num_parameters()
log(f"U: {model.config.model_type}, {u_parameters / 1e6:.2f}M parameters"
    + (f" (G: {g_parameters / 1e6:.2f}M)" if g_parameters else ""), rank=rank)


@torch.no_grad()
def feedback_on_samples(G, g_tok, rows: list[dict], n_cvs: int) -> list[dict]:
    """(C, J+, J−) triples from a recruiter's comparisons of G's own samples: K J′ for each of the first
    n_cvs distinct CVs of rows, every pair of them judged by market.recruiter_prefers (ties dropped)."""
    cvs = list({r["cv"]: r["seeker"] for r in rows}.items())[:n_cvs]
    K, rng = args.samples_per_cv, random.Random(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = []
    for i in range(0, len(cvs), 64):
        chunk = cvs[i : i + 64]
        prompts = [prompt_ids(g_tok, cv, args.lang, args.max_len // 2)[0] for cv, _ in chunk for _ in range(K)]
        with autocast:
            o = generate(G, prompts, args.max_new_tokens, eos_id=g_tok.eos_id, pad_id=g_tok.pad_id or 0,
                         temperature=args.sample_temperature, generator=gen)
        texts = response_texts(g_tok, o.tokens, o.mask)
        for j, (cv, seeker) in enumerate(chunk):
            s, jds = market.seeker_from_json(seeker), texts[j * K : (j + 1) * K]
            for a in range(K):
                for b in range(a + 1, K):
                    prefers_a = market.recruiter_prefers(s, jds[a], jds[b], args.lang, rng)
                    if prefers_a is not None:
                        win, lose = (a, b) if prefers_a else (b, a)
                        out.append({"cv": cv, "jd_pos": jds[win], "jd_neg": jds[lose], "seeker": seeker})
    return out


args.feedback = args.feedback or ("samples" if on_market else "log")
if args.feedback != "log" and not on_market:
    fail(f"--feedback {args.feedback} needs the market's simulated recruiter; with your own --data use --feedback log "
         "(or collect recruiters' comparisons of G's samples as (C, J+, J−) triples yourself)")
sample_train_rows, sample_eval_rows = [], []
if on_market and args.samples_per_cv > 1:  # held-out comparisons of samples are measured whatever U learns from
    if not Path(args.sft).is_dir():
        fail(f"{args.sft}: no G checkpoint to sample J′ from; run python train_sft.py first (or --samples-per-cv 0)")
    t0 = time.time()
    G, g_tok = Transformer.from_pretrained(args.sft, device=device), Tokenizer.from_pretrained(args.sft)
    sample_train_rows = feedback_on_samples(G, g_tok, train_rows, args.sample_cvs) if args.feedback != "log" else []
    sample_eval_rows = feedback_on_samples(G, g_tok, eval_rows, 200)
    del G
    log(f"recruiter comparisons of G's samples: {len(sample_train_rows)} training, {len(sample_eval_rows)} held-out "
        f"({args.samples_per_cv} per CV, T={args.sample_temperature}, {time.time() - t0:.0f}s)", rank=rank)


def encode(rows):
    """Each triple as two token sequences, template(C, J+) + EOS and template(C, J−) + EOS."""
    out, cut = [], 0
    for r in rows:
        pair = []
        for jd in (r["jd_pos"], r["jd_neg"]):
            example, cv_cut, jd_cut = sft_example(tok, r["cv"], jd, args.lang, args.max_len)
            pair.append(example["input_ids"])
            cut += cv_cut or jd_cut
        out.append(pair)
    return out, cut


train, cut = encode((train_rows if args.feedback != "samples" else []) + sample_train_rows)
if not train:
    fail("no training triples: the recruiter found every pair of G's samples equally good (none may parse); "
         "train G longer, or use --feedback log")
evals, _ = encode(eval_rows)
sample_evals, _ = encode(sample_eval_rows)
log(f"data: {len(train)} training triples, {len(evals)} + {len(sample_evals)} held-out; sequences cut to --max-len "
    f"{args.max_len}: {cut}", rank=rank)

# ----------------------------------------------------------------------------- optimizer
raw_model = model
if world > 1:
    model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.AdamW(param_groups(raw_model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95),
                              fused=device.type == "cuda")
per_step = args.batch_size * args.grad_accum * world
max_steps = args.max_steps or max(1, math.ceil(args.epochs * len(train) / per_step))
state = {"step": 0, "best_eval_loss": float("inf"), "train_tokens": 0, "initial_eval": None}
if resuming:
    state = load_state(args.out_last, raw_model, optimizer)
    log(f"resuming at step {state['step']} from {args.out_last}", rank=rank)


def scores(net, pairs):
    """U(C, J+) and U(C, J−) of a batch of encoded triples, in one forward pass."""
    ids, mask = right_pad([p for p, _ in pairs] + [n for _, n in pairs], pad_id)
    with autocast:
        r = net(ids.to(device), attention_mask=mask.to(device)).float()
    return r[: len(pairs)], r[len(pairs) :]


@torch.no_grad()
def evaluate_on(triples, prefix: str) -> dict:
    pos, neg = [], []
    for i in range(0, len(triples), args.batch_size):
        a, b = scores(raw_model, triples[i : i + args.batch_size])
        pos.append(a)
        neg.append(b)
    pos, neg = torch.cat(pos), torch.cat(neg)
    both = torch.cat([pos, neg])
    return {f"{prefix}eval_loss": rm_loss(pos, neg, args.margin, args.center_coef).item(),
            f"{prefix}eval_accuracy": (pos > neg).float().mean().item(),
            f"{prefix}reward_mean": both.mean().item(), f"{prefix}reward_std": both.std().item()}


def evaluate() -> dict:
    """Held-out loss and accuracy on real JDs and, when there are any, on G's samples; `loss` (the mean of
    the two) picks the best checkpoint."""
    raw_model.eval()
    e = evaluate_on(evals, "")
    if sample_evals:
        e.update(evaluate_on(sample_evals, "samples_"))
    raw_model.train()
    e["loss"] = (e["eval_loss"] + e.get("samples_eval_loss", e["eval_loss"])) / 2
    return e


# ----------------------------------------------------------------------------- training loop
if state["initial_eval"] is None:
    state["initial_eval"] = evaluate()
    log(f"initial eval: {json.dumps({k: round(v, 4) for k, v in state['initial_eval'].items()})}", rank=rank)
model.train()
progress = Progress(max_steps, args.log_every, enabled=rank == 0, start_step=state["step"])
t_start = time.time()
for step in range(state["step"], max_steps):
    lr = lr_at(step, max_steps, args.lr, args.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr
    micro = [[train[i] for i in idx]
             for idx in step_indices(step, len(train), args.batch_size, args.grad_accum, args.seed, rank, world)]
    loss_sum, correct, tokens = 0.0, 0, 0
    for pairs in micro:
        r_pos, r_neg = scores(model, pairs)
        loss = rm_loss(r_pos, r_neg, args.margin, args.center_coef) * len(pairs) / sum(map(len, micro))
        loss.backward()
        loss_sum += loss.item()
        correct += (r_pos > r_neg).sum().item()
        tokens += sum(len(p) + len(n) for p, n in pairs)
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip).item()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state["train_tokens"] += tokens * world
    state["step"] = step + 1
    progress.step(step, tokens * world, loss=loss_sum, acc=correct / sum(map(len, micro)), lr=lr, grad_norm=grad_norm)
    if (step + 1) % args.eval_every == 0 or step + 1 == max_steps:
        if rank == 0:
            e = evaluate()
            improved = e["loss"] < state["best_eval_loss"]
            if improved:
                state["best_eval_loss"], state["best_eval"] = e["loss"], e
                save_checkpoint(args.out, raw_model, tok, args)
            save_checkpoint(args.out_last, raw_model, tok, args, optimizer, state)
            log(f"eval loss {e['eval_loss']:.4f}  accuracy {e['eval_accuracy']:.4f}"
                + (f"  on G's samples: loss {e['samples_eval_loss']:.4f}  accuracy {e['samples_eval_accuracy']:.4f}"
                   if sample_evals else "")
                + (f"  saved best to {args.out}" if improved else ""))
        if world > 1:
            torch.distributed.barrier()
train_seconds = time.time() - t_start

# ----------------------------------------------------------------------------- final metrics
if rank == 0:
    metrics = {**state["best_eval"],
               **{f"initial_{k}": v for k, v in state["initial_eval"].items() if k.endswith(("eval_loss", "eval_accuracy"))},
               "eval_pairs": len(evals), "samples_eval_pairs": len(sample_evals), "samples_train_pairs": len(sample_train_rows), "u_parameters": u_parameters, "g_parameters": g_parameters,
               "steps": state["step"], "train_tokens": state["train_tokens"], "train_seconds": train_seconds,
               "tokens_per_sec": progress.tokens / max(train_seconds, 1e-9), "sequences_cut": cut}
    def oracle_accuracy(rows):
        """How often the true f agrees with the recruiter on these pairs: the ceiling their noise allows."""
        agree = []
        for r in rows:
            s = market.seeker_from_json(r["seeker"])
            a, b = (market.oracle_score(s, r[k], args.lang) or 0.0 for k in ("jd_pos", "jd_neg"))
            agree.append(1.0 if a > b else 0.5 if a == b else 0.0)
        return sum(agree) / len(agree)

    if on_market:
        metrics["oracle_accuracy"] = oracle_accuracy(eval_rows)
        metrics["accuracy_vs_oracle"] = metrics["eval_accuracy"] / metrics["oracle_accuracy"]
    if sample_evals:
        metrics["samples_oracle_accuracy"] = oracle_accuracy(sample_eval_rows)
        metrics["samples_accuracy_vs_oracle"] = metrics["samples_eval_accuracy"] / metrics["samples_oracle_accuracy"]
    write_json(Path(args.out) / "metrics.json", metrics)
    log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    log(f"wrote {args.out}/ (best by eval loss) and {args.out_last}/ (resumable)")
if world > 1:
    torch.distributed.destroy_process_group()
