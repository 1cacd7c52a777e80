"""Stage 1, SFT: fine-tune the generator G on matched CV -> JD pairs (GIRL §3.1).

    python train_sft.py                                   # built-in model on the synthetic market, minutes on a CPU
    python train_sft.py --lang en                         # the English market
    python train_sft.py --model Qwen/Qwen2.5-0.5B --data pairs.jsonl --eval-data held_out.jsonl
    torchrun --nproc_per_node 4 train_sft.py ...           # data parallel on several GPUs
    python train_sft.py --resume                          # continue an interrupted run

Each pair is rendered with the paper's four-part prompt (girl/template.py); the loss covers the JD and
its EOS only. Writes --out (default ckpt/sft): the model with the best held-out loss as a Hugging Face
folder (config.json, model.safetensors, tokenizer.json, train_args.json, metrics.json), and --out-last
(default ckpt/sft-last): the latest weights with the optimizer state, which --resume reads.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from girl import market
from girl.checkpoint import CheckpointError, write_json
from girl.data import DataError, collate, read_jsonl, sft_example
from girl.hub import HubError
from girl.losses import sft_loss
from girl.model import Config, Transformer
from girl.sampling import generate
from girl.template import TEMPLATE, prompt_ids
from girl.tokenizer import Tokenizer
from girl.training import (Progress, distributed, fail, load_rows, load_state, log, lr_at, param_groups,
                           save_checkpoint, step_indices)

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
# Model
p.add_argument("--model", default="builtin",
               help="'builtin': a small Llama-style model trained from scratch with a byte-level BPE tokenizer "
                    "learned from the training data; or a local Hugging Face folder or hub id (gpt2/llama/qwen2)")
# Data
p.add_argument("--data", help='training JSONL of {"cv", "jd"} (default: the synthetic market\'s sft_train.jsonl)')
p.add_argument("--eval-data", help='held-out JSONL of {"cv", "jd"} (default: the market\'s sft_eval.jsonl; '
                                   "with --data and no --eval-data, 5%% of --data is held out)")
p.add_argument("--market-dir", default="data", help="folder of the synthetic market, built on first use (default: data)")
p.add_argument("--lang", default="zh", choices=list(TEMPLATE), help="prompt language and market language (default: zh)")
p.add_argument("--max-len", type=int, default=256, help="tokens per example; longer CVs, then JDs, are cut (default: 256)")
# Optimization
p.add_argument("--batch-size", type=int, default=16, help="examples per micro-batch (default: 16)")
p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
p.add_argument("--lr", type=float, help="peak learning rate (default: 3e-3 for builtin, 2e-5 for pretrained)")
p.add_argument("--warmup", type=int, default=30, help="linear warmup steps (default: 30)")
p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay of weight matrices (default: 0.1)")
p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (default: 1.0)")
p.add_argument("--epochs", type=float, default=1.0, help="passes over the training data (default: 1)")
p.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
p.add_argument("--seed", type=int, default=0, help="seed of the data order, the init and the market (default: 0)")
# Evaluation
p.add_argument("--eval-every", type=int, default=100, help="evaluate (and save) every N steps (default: 100)")
p.add_argument("--eval-examples", type=int, default=512, help="held-out pairs in the eval loss (default: 512)")
p.add_argument("--oracle-cvs", type=int, default=200,
               help="held-out market CVs whose greedy JDs the oracle scores at the end; 0 skips (default: 200)")
p.add_argument("--max-new-tokens", type=int, default=96, help="JD length limit when generating (default: 96)")
# Output
p.add_argument("--out", default="ckpt/sft", help="best checkpoint (default: ckpt/sft)")
p.add_argument("--out-last", help="latest checkpoint + optimizer state for --resume (default: OUT-last)")
p.add_argument("--resume", action="store_true", help="continue from --out-last")
p.add_argument("--log-every", type=int, default=10, help="progress line every N steps (default: 10)")
args = p.parse_args()
args.out_last = args.out_last or args.out.rstrip("/") + "-last"
builtin = args.model == "builtin"
args.lr = args.lr or (3e-3 if builtin else 2e-5)

rank, world, device = distributed()
torch.manual_seed(args.seed)
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

# ----------------------------------------------------------------------------- data
try:
    train_rows, eval_rows, mdir = load_rows(args, "sft", rank, world)
except DataError as e:
    fail(str(e))
on_market = mdir is not None

# ----------------------------------------------------------------------------- tokenizer and model
resuming = args.resume and (Path(args.out_last) / "trainer_state.json").is_file()
if args.resume and not resuming:
    log(f"--resume: no state in {args.out_last}, starting fresh", rank=rank)
try:
    if resuming:
        tok = Tokenizer.from_pretrained(args.out_last)
        model = Transformer.from_pretrained(args.out_last, dtype=torch.float32, device=device)
    elif builtin:
        # the template's words go in too, so the prompt does not cost 3 byte-tokens per Chinese character
        template_text = ["".join(TEMPLATE[args.lang].values())] * 100
        tok = Tokenizer.train([r["cv"] for r in train_rows] + [r["jd"] for r in train_rows] + template_text, 2048)
        config = Config(model_type="llama", vocab_size=tok.vocab_size, dim=192, n_layers=4, n_heads=6,
                        n_kv_heads=2, hidden_dim=512, max_seq_len=512, tie_embeddings=True,
                        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        model = Transformer(config).to(device)
    else:  # trained in float32 master weights; bf16 autocast on CUDA
        tok = Tokenizer.from_pretrained(args.model)
        model = Transformer.from_pretrained(args.model, dtype=torch.float32, device=device)
    tok.check_fits(model.config, args.model)
except (CheckpointError, HubError) as e:
    fail(str(e))
if tok.eos_id is None:
    fail(f"{args.model}: the tokenizer has no EOS token; G must learn to stop. Set eos_token in tokenizer_config.json")
pad_id = tok.pad_id if tok.pad_id is not None else tok.eos_id  # labels mask by position, so pad == EOS is safe
log(f"G: {model.config.model_type}, {model.num_parameters() / 1e6:.2f}M parameters, vocab {tok.vocab_size}", rank=rank)


def encode(rows):
    out, cv_cut, jd_cut = [], 0, 0
    for r in rows:
        example, a, b = sft_example(tok, r["cv"], r["jd"], args.lang, args.max_len)
        out.append(example)
        cv_cut, jd_cut = cv_cut + a, jd_cut + b
    return out, cv_cut, jd_cut


train, cv_cut, jd_cut = encode(train_rows)
evals, _, _ = encode(eval_rows[: args.eval_examples])
log(f"data: {len(train)} training pairs, {len(evals)} held-out; cut to --max-len {args.max_len}: "
    f"{cv_cut} CVs, {jd_cut} JDs", rank=rank)

# ----------------------------------------------------------------------------- optimizer
raw_model = model
if world > 1:
    model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.AdamW(param_groups(raw_model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95),
                              fused=device.type == "cuda")
per_step = args.batch_size * args.grad_accum * world
max_steps = args.max_steps or max(1, math.ceil(args.epochs * len(train) / per_step))
state = {"step": 0, "best_eval_loss": float("inf"), "train_tokens": 0, "initial_eval_loss": None}
if resuming:
    state = load_state(args.out_last, raw_model, optimizer)
    log(f"resuming at step {state['step']} from {args.out_last}", rank=rank)


@torch.no_grad()
def eval_loss() -> float:
    raw_model.eval()
    total, count = 0.0, 0
    for i in range(0, len(evals), args.batch_size):
        b = collate(evals[i : i + args.batch_size], pad_id)
        with autocast:
            logits = raw_model(b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
        labels = b["labels"].to(device)
        total += sft_loss(logits, labels, reduction="sum").item()
        count += (labels[:, 1:] != -100).sum().item()
    raw_model.train()
    return total / count


# ----------------------------------------------------------------------------- training loop
if state["initial_eval_loss"] is None:
    state["initial_eval_loss"] = eval_loss()
    log(f"initial eval loss {state['initial_eval_loss']:.4f} (ppl {math.exp(state['initial_eval_loss']):.1f})", rank=rank)
model.train()
progress = Progress(max_steps, args.log_every, enabled=rank == 0, start_step=state["step"])
t_start = time.time()
for step in range(state["step"], max_steps):
    lr = lr_at(step, max_steps, args.lr, args.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr
    micro = [collate([train[i] for i in idx], pad_id)
             for idx in step_indices(step, len(train), args.batch_size, args.grad_accum, args.seed, rank, world)]
    targets = sum((b["labels"][:, 1:] != -100).sum().item() for b in micro)  # JD tokens in this step
    loss_sum = 0.0
    for b in micro:
        with autocast:
            logits = model(b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
        loss = sft_loss(logits, b["labels"].to(device), reduction="sum") / targets  # mean over the whole step
        loss.backward()
        loss_sum += loss.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip).item()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in micro)
    state["train_tokens"] += tokens * world
    state["step"] = step + 1
    progress.step(step, tokens * world, loss=loss_sum, lr=lr, grad_norm=grad_norm)
    if (step + 1) % args.eval_every == 0 or step + 1 == max_steps:
        if rank == 0:
            loss = eval_loss()
            improved = loss < state["best_eval_loss"]
            if improved:
                state["best_eval_loss"] = loss
                save_checkpoint(args.out, raw_model, tok, args)
            save_checkpoint(args.out_last, raw_model, tok, args, optimizer, state)
            log(f"eval loss {loss:.4f} (ppl {math.exp(loss):.2f}){'  saved best to ' + args.out if improved else ''}")
        if world > 1:
            torch.distributed.barrier()
train_seconds = time.time() - t_start

# ----------------------------------------------------------------------------- final evaluation
if rank == 0:
    best = Transformer.from_pretrained(args.out, device=device)
    metrics = {
        "eval_loss": state["best_eval_loss"], "eval_ppl": math.exp(state["best_eval_loss"]),
        "initial_eval_loss": state["initial_eval_loss"], "initial_eval_ppl": math.exp(state["initial_eval_loss"]),
        "train_tokens": state["train_tokens"], "steps": state["step"], "train_seconds": train_seconds,
        "tokens_per_sec": progress.tokens / max(train_seconds, 1e-9), "parameters": best.num_parameters(),
        "cvs_cut": cv_cut, "jds_cut": jd_cut,
    }
    if on_market and args.oracle_cvs > 0:
        held = read_jsonl(mdir / "eval.jsonl", "ppo")[: args.oracle_cvs]
        seekers = [market.seeker_from_json(r["seeker"]) for r in held]
        prompts = [prompt_ids(tok, r["cv"], args.lang, args.max_len - args.max_new_tokens)[0] for r in held]
        texts = []
        for i in range(0, len(prompts), 100):
            out = generate(best, prompts[i : i + 100], args.max_new_tokens, eos_id=tok.eos_id, greedy=True)
            texts += [tok.decode(t[m].tolist()) for t, m in zip(out.tokens, out.mask)]
        jobs = [market.job_from_json(json.loads(line)["job"])
                for line in (mdir / "jobs.jsonl").read_text(encoding="utf-8").splitlines()]
        metrics |= market.oracle_eval(seekers, texts, args.lang) | market.references(seekers, jobs, args.seed)
        metrics["oracle_cvs"] = len(held)
        metrics["example"] = {"cv": held[0]["cv"], "jd": texts[0]}
    write_json(Path(args.out) / "metrics.json", metrics)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "example"}
    log(json.dumps(shown, ensure_ascii=False))
    log(f"wrote {args.out}/ (best by eval loss) and {args.out_last}/ (resumable)")
if world > 1:
    torch.distributed.destroy_process_group()
