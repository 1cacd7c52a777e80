"""Stage 1, SFT: fine-tune the generator G on matched CV -> JD pairs (GIRL §3.1).

    python train_sft.py                                   # built-in model on the synthetic market, minutes on a CPU
    python train_sft.py --lang en                         # the English market
    python train_sft.py --model Qwen/Qwen2.5-0.5B --data pairs.jsonl --eval-data held_out.jsonl
    torchrun --nproc_per_node 4 train_sft.py ...           # data parallel on several GPUs (DDP)
    torchrun --nproc_per_node 4 train_sft.py --fsdp ...    # the model sharded over them (FSDP2)
    python train_sft.py --resume                          # continue an interrupted run

Each pair is rendered with the paper's four-part prompt (girl/template.py); the loss covers the JD and
its EOS only. Writes --out (default ckpt/sft): the model with the best held-out loss as a Hugging Face
folder (config.json, model.safetensors, tokenizer.json, train_args.json, metrics.json), and --out-last
(default ckpt/sft-last): the latest weights with the optimizer state, which --resume reads.
"""

import json
import math
import time
from pathlib import Path

import torch

from girl import evaluation, market
from girl.cli import (COUNT, COUNT0, add_market_flags, add_training_flags, barrier, fail, finish, load_rows, log, optimizer_step,
                      parser, resuming, save_at_eval, save_state, setup, start_training, training_args)
from girl.data import IGNORE, collate, sft_examples
from girl.files import CheckpointError, write_json
from girl.lm.checkpoint import load_model
from girl.lm.hub import HubError
from girl.lm.model import Config, Transformer
from girl.lm.tokenizer import Tokenizer
from girl.losses import sft_loss
from girl.template import TEMPLATE, prompt_ids
from girl.training import Progress, StopRequest, global_sum, lr_at, set_lr, step_indices

p = parser(__doc__)
# Model
p.add_argument("--model", default="builtin",
               help="'builtin': a small Llama-style model trained from scratch with a byte-level BPE tokenizer "
                    "learned from the training data; or a local Hugging Face folder or hub id (gpt2/llama/qwen2)")
# Data
p.add_argument("--data", help='training JSONL of {"cv", "jd"} (default: the synthetic market\'s sft_train.jsonl)')
p.add_argument("--eval-data", help='held-out JSONL of {"cv", "jd"} (default: the market\'s sft_val.jsonl; '
                                   "with --data and no --eval-data, 5%% of --data is held out)")
add_market_flags(p)
p.add_argument("--max-len", type=COUNT, default=256, help="tokens per example; longer CVs, then JDs, are cut (default: 256)")
# Optimization, evaluation, output
add_training_flags(p, "pairs", lr_builtin=3e-3, lr_pretrained=2e-5, eval_every=100, out="ckpt/sft")
p.add_argument("--eval-examples", type=COUNT, default=512, help="held-out pairs in the eval loss (default: 512)")
p.add_argument("--oracle-cvs", type=COUNT0, default=200,
               help="validation CVs of the market whose greedy JDs the oracle scores at the end; 0 skips (default: 200)")
p.add_argument("--max-new-tokens", type=COUNT, default=96, help="JD length limit when generating (default: 96)")
args = training_args(p)
builtin = args.model == "builtin"

run = setup(args.seed, fsdp=args.fsdp)
rank, world, device, autocast = run.rank, run.world, run.device, run.autocast

# ----------------------------------------------------------------------------- data
train_rows, eval_rows, mdir = load_rows(args, "sft", run)
on_market = mdir is not None

# ----------------------------------------------------------------------------- tokenizer and model
resume = resuming(args, rank=rank)
try:
    if resume:
        tok = Tokenizer.from_pretrained(args.out_last)
        model = load_model(args.out_last, dtype=torch.float32, device=device)
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
        model = load_model(args.model, dtype=torch.float32, device=device)
    tok.check_fits(model.config, args.model)
except (CheckpointError, HubError) as e:
    fail(str(e))
if tok.eos_id is None:
    fail(f"{args.model}: the tokenizer has no EOS token; G must learn to stop. Set eos_token in tokenizer_config.json")
pad_id = tok.pad_or_eos_id
log(f"G: {model.config.model_type}, {model.num_parameters() / 1e6:.2f}M parameters, vocab {tok.vocab_size}", rank=rank)
train, cv_cut, jd_cut = sft_examples(tok, train_rows, args.lang, args.max_len)
evals, _, _ = sft_examples(tok, eval_rows[: args.eval_examples], args.lang, args.max_len)
log(f"data: {len(train)} training pairs, {len(evals)} held-out; cut to --max-len {args.max_len}: "
    f"{cv_cut} CVs, {jd_cut} JDs", rank=rank)

# ----------------------------------------------------------------------------- optimizer
state = {"step": 0, "best_eval_loss": float("inf"), "train_tokens": 0, "initial_eval_loss": None}
raw_model = model
model, optimizer, max_steps, state = start_training(raw_model, args, run, len(train), "pairs", state, resume)

# ----------------------------------------------------------------------------- training loop
if state["initial_eval_loss"] is None:
    state["initial_eval_loss"] = evaluation.sft_eval_loss(raw_model, evals, pad_id, args.batch_size, autocast)
    log(f"initial eval loss {state['initial_eval_loss']:.4f} (ppl {math.exp(state['initial_eval_loss']):.1f})", rank=rank)
model.train()
progress = Progress(max_steps, args.log_every, enabled=rank == 0, start_step=state["step"])
stop = StopRequest()  # SIGINT/SIGTERM: save at the end of the step and exit
t_start = time.time()
for step in range(state["step"], max_steps):
    lr = lr_at(step, max_steps, args.lr, args.warmup)
    set_lr(optimizer, lr)
    micro = [collate([train[i] for i in idx], pad_id)
             for idx in step_indices(step, len(train), args.batch_size, args.grad_accum, args.seed, rank, world)]
    # JD tokens in the whole step, over every rank: L_sft is their mean, whichever rank holds them (DDP averages
    # the ranks' gradients, hence the factor world)
    targets = global_sum(sum((b["labels"][:, 1:] != IGNORE).sum().item() for b in micro), world, device)
    loss_sum = 0.0
    for b in micro:
        with autocast():
            logits = model(b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
        loss = sft_loss(logits, b["labels"].to(device), reduction="sum") * world / targets
        loss.backward()
        loss_sum += loss.item() / world
    step_sums = global_sum({"loss": loss_sum, "tokens": sum(int(b["attention_mask"].sum()) for b in micro)}, world, device)
    loss_sum, tokens = step_sums["loss"], int(step_sums["tokens"])
    grad_norm = optimizer_step(raw_model, optimizer, args, step, loss_sum)
    state["train_tokens"] += tokens
    state["step"] = step + 1
    progress.step(step, tokens, loss=loss_sum, lr=lr, grad_norm=grad_norm)
    if (step + 1) % args.eval_every == 0 or step + 1 == max_steps:
        if run.takes_part:
            loss = evaluation.sft_eval_loss(raw_model, evals, pad_id, args.batch_size, autocast)
            improved = save_at_eval(args, run, state, loss, raw_model, tok, optimizer)
            log(f"eval loss {loss:.4f} (ppl {math.exp(loss):.2f}){'  saved best to ' + args.out if improved else ''}",
                rank=rank)
        barrier(world)
    if stop.requested(world, device) and step + 1 < max_steps:
        stop.exit(f"step {step + 1}", args.out_last, rank, world,
                  save=lambda: save_state(args, run, raw_model, tok, optimizer, state))
train_seconds = time.time() - t_start

# ----------------------------------------------------------------------------- final evaluation
if rank == 0:
    best = load_model(args.out, device=device)
    metrics = {
        "eval_loss": state["best_eval_loss"], "eval_ppl": math.exp(state["best_eval_loss"]),
        "initial_eval_loss": state["initial_eval_loss"], "initial_eval_ppl": math.exp(state["initial_eval_loss"]),
        "train_tokens": state["train_tokens"], "steps": state["step"], "train_seconds": train_seconds,
        "tokens_per_sec": progress.tokens / max(train_seconds, 1e-9), "parameters": best.num_parameters(),
        "cvs_cut": cv_cut, "jds_cut": jd_cut,
    }
    if on_market and args.oracle_cvs > 0:
        held = market.heldout(mdir, args.oracle_cvs, "val")
        seekers = market.seekers(held)
        prompts = [prompt_ids(tok, r["cv"], args.lang, args.max_len - args.max_new_tokens)[0] for r in held]
        texts = evaluation.greedy_jds(best, tok, prompts, args.max_new_tokens, autocast, batch_size=100).texts
        metrics |= market.oracle_eval(seekers, texts, args.lang) | market.references(seekers, market.load_jobs(mdir)[1], args.seed)
        metrics["oracle_cvs"] = len(held)
        metrics["example"] = {"cv": held[0]["cv"], "jd": texts[0]}
    write_json(Path(args.out) / "metrics.json", metrics)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "example"}
    log(json.dumps(shown, ensure_ascii=False))
    log(f"wrote {args.out}/ (best by eval loss) and {args.out_last}/ (resumable)")
finish(world)
