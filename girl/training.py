"""What the training loops share: AdamW and its parameter groups, the learning-rate schedule, the data
order of a step, sums over processes, FSDP2's sharding, the progress line, and stopping cleanly on a signal."""

import math
import os
import signal
import sys
import time
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor


def param_groups(model: nn.Module, weight_decay: float, fast: nn.Module | None = None, fast_scale: float = 1.0) -> list[dict]:
    """AdamW groups: decay the weight matrices; not norms, biases or embeddings (nor a head tied to one).
    fast: a few weights that learn at fast_scale × the learning rate, undecayed (a head over a handful of
    scores, whose start is a prior the data must be able to overturn within a run)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    own = {id(p) for p in fast.parameters()} if fast is not None else set()
    decay, rest = [], []
    for p in model.parameters():  # a tied weight appears once
        if p.requires_grad and id(p) not in own:
            (decay if p.ndim >= 2 and id(p) not in embeddings else rest).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return groups + ([{"params": list(fast.parameters()), "weight_decay": 0.0, "lr_scale": fast_scale}] if own else [])


def adamw(model: nn.Module, lr: float, weight_decay: float, fast: nn.Module | None = None,
          fast_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW with β = (0.9, 0.95), decaying only the weight matrices; the fused kernel on CUDA."""
    cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay, fast, fast_scale), lr=lr, betas=(0.9, 0.95), fused=cuda)


def lr_at(step: int, max_steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup for `warmup` steps, then cosine decay to min_ratio·lr at max_steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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


def global_sum(x: float | dict, world: int, device=None) -> float | dict:
    """x summed over every process (x itself with one): a step's token count or loss, the same on every rank;
    a dict of them is summed key by key, in one all-reduce."""
    if world == 1:
        return x
    values = list(x.values()) if isinstance(x, dict) else [x]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(x, t.tolist())) if isinstance(x, dict) else t.item()


def shard(model: nn.Module, world: int, device: torch.device) -> nn.Module:
    """FSDP2: split the parameters over the `world` processes, each block as one unit (gathered for its forward
    and backward, then freed), then the rest (embeddings, final norm, heads). Gradients are reduce-scattered
    (averaged, as DDP averages them) and AdamW keeps the moments of its shard only. In place; returns model."""
    mesh = init_device_mesh(device.type, (world,))
    backbone = getattr(model, "backbone", model)  # a RewardModel's blocks are its backbone's
    for block in backbone.layers:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


@contextmanager
def gathered(model: nn.Module, sharded: bool):
    """A model sharded by FSDP2, whole on every process for a while (entering is a collective: every process
    must): its forward passes then need no other process, so each may sample a different number of tokens,
    or rank 0 alone evaluate. It costs the whole model's weights on each device meanwhile."""
    if not sharded:
        yield model
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)
    for m in units:
        m.unshard()
    try:
        yield model
    finally:
        for m in units:
            m.reshard()
        model.set_reshard_after_forward(True)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the gradient's global norm to max_norm; return the norm before clipping (over every shard's part)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return (norm.full_tensor() if isinstance(norm, DTensor) else norm).item()


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


def stop_on_signal(kept: str):
    """For a script with nothing to save mid-way (it writes its results atomically at the end): SIGINT (Ctrl-C)
    and SIGTERM end it at once with one line saying what is kept, no traceback, and status 128 + the signal's
    number, as a shell reports a killed job; what it was writing is cleaned up on the way out."""
    def handle(signum, frame):
        print(f"stopped by {signal.Signals(signum).name}: {kept}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handle)


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it kills a job) do not kill a training
    loop mid-step: they raise a flag, the loop saves its resumable state at the next step boundary and exits
    with status 128 + the signal's number, as a shell reports a killed job. A second signal stops at once.

        stop = StopRequest()
        for step in ...:
            ...
            if stop.requested(world, device):
                stop.exit(f"step {step + 1}", out_last, rank, world, save=lambda: save_state(...))
    """

    def __init__(self):
        self.name, self.code = None, 0
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.name is not None:
            raise KeyboardInterrupt
        self.name, self.code = signal.Signals(signum).name, 128 + signum
        print(f"{self.name}: finishing this step, then saving a resumable state (again to stop at once)",
              file=sys.stderr, flush=True)

    def requested(self, world: int = 1, device=None) -> bool:
        """Whether to stop now; with several processes, all stop at the same step if any was signalled."""
        if world == 1:
            return self.name is not None
        flag = torch.tensor([float(self.name is not None)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def exit(self, after: str, out_last, rank: int = 0, world: int = 1, save=None):
        """Every process runs save() (when the state is not saved already; it writes from rank 0 alone, and a
        sharded model's save needs every process); no rank leaves before it is done, since torchrun would stop
        the others; then say how to go on and exit."""
        if save is not None:
            save()
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            print(f"stopped by {self.name or 'a signal'} after {after}; {out_last} holds it: run the same command "
                  "with --resume to go on", flush=True)
        code = self.code or 128 + signal.SIGTERM
        if world > 1:
            leave(code)
        raise SystemExit(code)


def leave(code: int):
    """End a process of a torchrun job: destroy the process group, flush the output, and exit at once. Left to
    the interpreter's teardown, torch 2.13 with gloo sometimes aborts while a DDP model is destroyed after its
    process group ("terminate called without an active exception", SIGABRT): 10 of 80 runs of a 10-line DDP
    script on this CPU, 0 of 80 when it leaves this way."""
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
