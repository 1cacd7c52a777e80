"""What every training script shares: the optimizer's parameter groups, the learning-rate schedule,
resumable state without pickles, the progress line, and torchrun's environment."""

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from girl import market
from girl.checkpoint import atomic_dir, write_json
from girl.data import read_jsonl


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay the weight matrices; not norms, biases or embeddings (nor a head tied to one)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, rest = [], []
    for p in model.parameters():  # a tied weight appears once
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in embeddings else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(step: int, max_steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup for `warmup` steps, then cosine decay to min_ratio·lr at max_steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_state(folder, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict):
    """AdamW moments as safetensors under parameter names, and the loop's counters as JSON (no pickles)."""
    folder = Path(folder)
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"{names[id(p)]}::{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    save_file(tensors, str(folder / "optimizer.safetensors"))
    write_json(folder / "trainer_state.json", state)


def load_state(folder, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore what save_state wrote into a freshly built optimizer; return the loop's counters."""
    folder = Path(folder)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        name, slot = key.split("::")
        p = params[name]
        optimizer.state[p][slot] = value.to(p.device) if slot != "step" else value
    return json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))


def step_indices(step: int, n: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world: int = 1) -> list[list[int]]:
    """The example indices of optimizer step `step`, as this rank's micro-batches.

    One fixed shuffle per epoch (seeded by seed + epoch), cut into steps of batch_size·grad_accum·world;
    rank r takes every world-th example of the step. A function of the step alone, so a resumed run
    continues with exactly the batches an uninterrupted run would have seen.
    """
    per_step = batch_size * grad_accum * world
    per_epoch = max(1, n // per_step)  # a set smaller than one step still makes one (short) step
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    chunk = order[k * per_step : (k + 1) * per_step][rank::world]
    return [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]


def load_rows(args, schema: str, rank: int = 0, world: int = 1):
    """(training rows, held-out rows, market folder or None) for a stage whose data is `schema`.

    --data given: that file, and --eval-data or else 5% of --data held out. Otherwise the synthetic
    market's <schema>_train.jsonl and <schema>_eval.jsonl, built on first use (by rank 0).
    """
    if args.data is None:
        folder = market.ensure(args.market_dir, args.lang, args.seed) if rank == 0 else Path(args.market_dir)
        if world > 1:
            torch.distributed.barrier()
        return read_jsonl(folder / f"{schema}_train.jsonl", schema), read_jsonl(folder / f"{schema}_eval.jsonl", schema), folder
    rows = read_jsonl(args.data, schema)
    if args.eval_data:
        return rows, read_jsonl(args.eval_data, schema), None
    random.Random(args.seed).shuffle(rows)
    cut = max(1, len(rows) // 20)
    return rows[cut:], rows[:cut], None


def save_checkpoint(folder, model, tokenizer, args, optimizer=None, state: dict | None = None):
    """An HF folder (model, tokenizer, train_args.json), plus the optimizer state when resumable; atomic."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "train_args.json", vars(args))
        if optimizer is not None:
            save_state(tmp, model, optimizer, state)


class Progress:
    """One line per `every` steps: step, loss, learning rate, tokens/s, elapsed and ETA."""

    def __init__(self, total_steps: int, every: int, enabled: bool = True, start_step: int = 0):
        self.total, self.every, self.enabled = total_steps, every, enabled
        self.t0, self.start, self.tokens = time.time(), start_step, 0

    def step(self, step: int, tokens: int, **values):
        self.tokens += tokens
        if not self.enabled or (step + 1) % self.every and step + 1 != self.total:
            return
        elapsed = time.time() - self.t0
        done = step + 1 - self.start
        eta = elapsed / done * (self.total - step - 1)
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        print(f"step {step + 1}/{self.total}  {shown}  {self.tokens / elapsed:,.0f} tok/s  "
              f"elapsed {elapsed:.0f}s  eta {eta:.0f}s", flush=True)


def distributed():
    """(rank, world_size, device) under torchrun (WORLD_SIZE > 1) or alone; starts the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return rank, world, device
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def log(*args, rank: int = 0):
    if rank == 0:
        print(*args, flush=True)


def fail(message: str):
    """End a script with a message for the user (no traceback) and a non-zero exit status."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
