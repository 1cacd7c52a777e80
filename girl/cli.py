"""What the stage scripts share: their common flags, the run's set-up (torchrun, device, autocast), the
data a stage reads, the pieces of a supervised training loop, and how a script stops on bad input.

    run = setup(args.seed)              # run.rank, run.world, run.device, run.autocast()
    train, held_out, market_dir = load_rows(args, "sft", run)
    model, optimizer, max_steps, state = start_training(raw_model, args, run, len(train), "pairs", state, resume)
"""

import argparse
import contextlib
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from girl import evaluation, market
from girl.data import DataError, read_jsonl
from girl.files import CheckpointError, lock_output, recover
from girl.lexical import TfIdf
from girl.lm.checkpoint import load_model, load_optimizer, save_model
from girl.lm.hub import HubError
from girl.lm.tokenizer import Tokenizer
from girl.reward import u_scores
from girl.template import TEMPLATE, prompt_ids, template_overhead
from girl.training import adamw, clip_grad_norm, leave, shard


def parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as the description, the rest (usage) as the epilog."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def number(kind: type = float, low: float = 0.0, inclusive: bool = False, high: float | None = None,
           high_inclusive: bool = True):
    """An argparse type: a finite number of `kind` above `low` (or at it, with inclusive) and at most `high` (or
    below it, without high_inclusive).
    A bad value stops at parse time with the flag's name (argparse adds it) and what it must be."""
    bounds = ([f">= {low:g}" if inclusive else f"> {low:g}"] if low != -math.inf else []) + (
        [f"<= {high:g}" if high_inclusive else f"< {high:g}"] if high is not None else [])

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        above = value >= low if inclusive else value > low
        below = high is None or (value <= high if high_inclusive else value < high)
        if not (math.isfinite(value) and above and below):
            must = (["finite"] if kind is float else []) + bounds
            raise argparse.ArgumentTypeError(f"must be {' and '.join(must)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE, NONNEGATIVE, FINITE = number(), number(inclusive=True), number(low=-math.inf, inclusive=True)
UNIT = number(inclusive=True, high=1.0)  # in [0, 1]: a discount, a probability
PROBABILITY_MASS = number(high=1.0)  # in (0, 1]: top-p
RATE = number(inclusive=True, high=1.0, high_inclusive=False)  # in [0, 1): a dropout rate
COUNT, COUNT0 = number(int, 1, inclusive=True), number(int, 0, inclusive=True)  # >= 1, >= 0


def add_market_flags(p):
    p.add_argument("--market-dir", default="data", help="folder of the synthetic market, built on first use (default: data)")
    p.add_argument("--lang", default="zh", choices=list(TEMPLATE), help="prompt and market language (default: zh)")
    p.add_argument("--market-seed", type=COUNT0, help="seed of the market: the one built when --market-dir holds none "
                   "(default: 0), refused if the folder holds another; unset, the market there is used whatever its seed")


def add_training_flags(p, unit: str, lr_builtin: float, lr_pretrained: float, eval_every: int, out: str):
    """# Optimization, # Evaluation and # Output flags of a supervised stage (train_sft.py, train_rm.py).
    The learning rate's defaults, one for the built-in model and one for pretrained weights, are kept on
    the parser for training_args."""
    p.lr_defaults = {"builtin": lr_builtin, "pretrained": lr_pretrained}
    p.add_argument("--batch-size", type=COUNT, default=16, help=f"{unit} per micro-batch (default: 16)")
    p.add_argument("--grad-accum", type=COUNT, default=1, help="micro-batches per optimizer step (default: 1)")
    p.add_argument("--lr", type=POSITIVE, help=f"peak learning rate (default: {lr_builtin:g} for builtin, "
                                            f"{lr_pretrained:g} for pretrained)")
    p.add_argument("--warmup", type=COUNT0, default=30, help="linear warmup steps (default: 30)")
    p.add_argument("--weight-decay", type=NONNEGATIVE, default=0.1, help="AdamW decay of weight matrices (default: 0.1)")
    p.add_argument("--grad-clip", type=POSITIVE, default=1.0, help="clip the gradient norm to this (default: 1.0)")
    p.add_argument("--epochs", type=POSITIVE, default=1.0, help=f"passes over the training {unit} (default: 1)")
    p.add_argument("--max-steps", type=COUNT, help="optimizer steps; overrides --epochs")
    p.add_argument("--seed", type=COUNT0, default=0, help="seed of the data order and the init (default: 0)")
    p.add_argument("--eval-every", type=COUNT, default=eval_every,
                   help=f"evaluate (and save) every N steps (default: {eval_every})")
    p.add_argument("--out", default=out, help=f"best checkpoint (default: {out})")
    p.add_argument("--out-last", help="latest checkpoint + optimizer state for --resume (default: OUT-last)")
    p.add_argument("--resume", action="store_true", help="continue from --out-last")
    p.add_argument("--log-every", type=COUNT, default=10, help="progress line every N steps (default: 10)")
    add_fsdp_flag(p)


def add_fsdp_flag(p):
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the trained model's weights, gradients and AdamW moments over the "
                        "processes (FSDP2, fully_shard per block) instead of a whole copy on each (DDP)")


def schedule_notice(n: int, unit: str, max_steps: int, args, rank: int = 0):
    """Say so when the data are too few for the schedule: fewer optimizer steps than --warmup means the learning
    rate never reaches --lr (68 pairs at the defaults make 5 steps of 30 warm-up steps)."""
    if args.max_steps is None and max_steps < args.warmup:
        log(f"notice: {n} training {unit} make only {max_steps} optimizer steps (--epochs {args.epochs:g}, --batch-size "
            f"{args.batch_size} x --grad-accum {args.grad_accum}), fewer than --warmup {args.warmup}: the learning "
            f"rate never reaches --lr. Raise --epochs (or set --max-steps), or lower --warmup", rank=rank)


def check_out_last(out_last, state_file: str):
    """Before anything is read from or written to --out-last: finish a save of it killed mid-way (kill -9), and
    refuse a folder that holds something else than a resumable state of this kind (ckpt/sft passed by mistake,
    say), which the saves would replace."""
    recover(out_last)
    folder = Path(out_last)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / state_file).is_file():
        fail(f"--out-last {folder} holds something else than a resumable state of this script ({state_file} is "
             "missing), and would be overwritten; give another --out-last")


def check_out(path, flag: str = "--out", folder: bool = True):
    """Before any long work, refuse an output this process could not write at the end: a file where a folder
    goes (or a folder where a file goes), a place under a file or a folder it may not write to, or one that
    another run is writing (then lock it for this one, until it ends)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        fail(f"{flag} {path} is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'} path")
    above = next(p for p in path.absolute().parents if p.exists())  # the deepest part that exists already
    if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
        fail(f"{flag} {path}: {above} is {'a file' if not above.is_dir() else 'not writable'}, so nothing could be "
             "written there; give another path")
    if int(os.environ.get("RANK", 0)) == 0:  # one writer: torchrun's other processes write through rank 0
        holder = lock_output(path)
        if holder is not None:
            fail(f"{flag} {path} is being written by another run (pid {holder or 'unknown'}); wait for it to end, "
                 f"or give another {flag}")


def training_args(p):
    """Parse the flags; fill in --out-last and the learning rate of the model chosen."""
    args = p.parse_args()
    args.out_last = args.out_last or args.out.rstrip("/") + "-last"
    recover(args.out)  # a save killed mid-way (kill -9) is finished before anything else
    check_out(args.out)
    check_out(args.out_last, "--out-last")
    check_out_last(args.out_last, "trainer_state.json")
    args.lr = args.lr or p.lr_defaults["builtin" if args.model == "builtin" else "pretrained"]
    return args


@dataclass
class Run:
    rank: int
    world: int
    device: torch.device
    autocast: Callable  # autocast() is a context: bf16 on CUDA, nothing on CPU (bf16 matmul is slow there)
    sharded: bool = False  # FSDP2: a trained model's forward, evaluation and save need every process

    @property
    def takes_part(self) -> bool:
        """Whether this process runs an evaluation or a save of the whole model: rank 0 alone, or every process
        when the model is sharded (its forward and its gathering are collectives)."""
        return self.rank == 0 or self.sharded


def setup(seed: int | None = None, distributed: bool = True, fsdp: bool = False) -> Run:
    """The device, and under torchrun (WORLD_SIZE > 1) the process group and this process's rank; with fsdp,
    the trained models are to be sharded over the processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if world > 1:
        if not distributed:
            fail(f"{Path(sys.argv[0]).name} runs in one process; start it with python, not torchrun")
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if seed is not None:
        torch.manual_seed(seed)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else (lambda: torch.autocast("cpu", enabled=False))
    return Run(rank, world, device, autocast, sharded=fsdp and world > 1)


def log(*args, rank: int = 0):
    if rank == 0:
        print(*args, flush=True)


def fail(message: str):
    """End a script with a message for the user (no traceback) and a non-zero exit status."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _input_errors_in_one_line(kind, value, traceback):
    """The last resort of every script (sys.excepthook): a damaged file or folder that reached no `fail`
    (CheckpointError, DataError, MarketError: their messages name the file and what to do) ends as `fail` ends
    it, one line and exit 2; any other exception is a bug, shown with its traceback."""
    if not isinstance(value, (CheckpointError, DataError, market.MarketError)):
        return sys.__excepthook__(kind, value, traceback)
    print(f"error: {value}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


sys.excepthook = _input_errors_in_one_line


def stop_if_not_finite(step: int, out_last, unit: str = "step", **losses: float):
    """A NaN or infinite loss ends the run before anything of its step is saved, naming the step and every
    loss term; the resumable state last saved in out_last, if any, stays as it was."""
    if all(math.isfinite(v) for v in losses.values()):
        return
    terms = ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
    fail(f"{unit} {step}: the loss is not finite ({terms}); nothing of this {unit} was saved, and the last state "
         f"saved in {out_last}, if any, is as it was. Lower --lr or --grad-clip, or look for a broken row in the "
         "data, then run again (with --resume to go on from that state)")


# ----------------------------------------------------------------------------- a supervised training loop
# (train_sft.py and train_rm.py; PPO's iterations differ and keep their own)

def resuming(args, state_file: str = "trainer_state.json", rank: int = 0) -> bool:
    """Whether --resume finds a resumable state in --out-last (and a notice when it does not)."""
    found = args.resume and (Path(args.out_last) / state_file).is_file()
    if args.resume and not found:
        log(f"--resume: no state in {args.out_last}, starting fresh", rank=rank)
    return found


def start_training(raw_model, args, run: Run, n: int, unit: str, state: dict, resume: bool):
    """(the model to call, AdamW, the number of optimizer steps, the loop's state): under torchrun DDP, or with
    --fsdp the model sharded in place; with --resume the optimizer's moments and the state saved in --out-last."""
    model = parallel(raw_model, run)
    if run.sharded:
        mine = sum(p.to_local().numel() for p in raw_model.parameters())
        log(f"FSDP: each of {run.world} processes holds {mine / 1e6:.3f}M of the {raw_model.num_parameters() / 1e6:.3f}M "
            "parameters, their gradients and AdamW moments", rank=run.rank)
    optimizer = adamw(raw_model, args.lr, args.weight_decay)
    max_steps = args.max_steps or max(1, math.ceil(args.epochs * n / (args.batch_size * args.grad_accum * run.world)))
    schedule_notice(n, unit, max_steps, args, run.rank)
    if resume:
        try:
            state = load_optimizer(args.out_last, raw_model, optimizer)
        except CheckpointError as e:
            fail(str(e))
        log(f"resuming at step {state['step']} from {args.out_last}", rank=run.rank)
    return model, optimizer, max_steps, state


def optimizer_step(raw_model, optimizer, args, step: int, loss: float) -> float:
    """Clip the gradient's norm to --grad-clip, stop on a loss or norm that is not finite (before anything of
    the step is applied), then step and zero the gradients; the norm before clipping."""
    grad_norm = clip_grad_norm(raw_model, args.grad_clip)
    stop_if_not_finite(step + 1, args.out_last, loss=loss, grad_norm=grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def parallel(raw_model, run: Run):
    """The trained model as the loop calls it: itself in one process; under torchrun wrapped by DDP, which
    averages the gradients, or sharded in place by FSDP2 (run.sharded), which reduce-scatters them."""
    if run.sharded:
        return shard(raw_model, run.world, run.device)
    if run.world > 1:
        return torch.nn.parallel.DistributedDataParallel(raw_model, broadcast_buffers=False)
    return raw_model


def save_at_eval(args, run: Run, state: dict, loss: float, raw_model, tok, optimizer, **best) -> bool:
    """At an evaluation (rank 0, or every process of a sharded model): the model to --out if its held-out loss
    is the best so far (`best` goes into the state with it), then the resumable state to --out-last. Whether
    it was the best."""
    best_so_far = state["best_eval_loss"]  # None in a state saved before any evaluation: JSON has no infinity
    improved = best_so_far is None or loss < best_so_far
    if improved:
        state.update(best_eval_loss=loss, **best)
        save_model(args.out, raw_model, tok, args)
    save_state(args, run, raw_model, tok, optimizer, state)
    return improved


def save_state(args, run: Run, raw_model, tok, optimizer, state: dict):
    """The resumable state (weights, AdamW's moments, the loop's counters) to --out-last, written by rank 0;
    every process may call it, and every process must when the model is sharded."""
    if run.takes_part:
        save_model(args.out_last, raw_model, tok, args, optimizer=optimizer, state=state)


def barrier(world: int):
    """Every process waits here for the others (nothing to wait for in one)."""
    if world > 1:
        torch.distributed.barrier()


def finish(world: int):
    """Every rank waits for rank 0's final evaluation and save, then all leave together (see leave)."""
    if world > 1:
        torch.distributed.barrier()
        leave(0)


# ----------------------------------------------------------------------------- data and models

def load_rows(args, schema: str, run: Run):
    """(training rows, held-out rows, market folder or None) for a stage whose data is `schema`.

    --data given: that file, and --eval-data or else 5% of --data held out. Otherwise the synthetic
    market's <schema>_train.jsonl and <schema>_val.jsonl (its validation seekers: a stage chooses its
    checkpoint on them, never on the test seekers), built on first use (by rank 0).
    """
    try:
        if args.data is None:
            folder = market.ensure(args.market_dir, args.lang, args.market_seed) if run.rank == 0 else Path(args.market_dir)
            barrier(run.world)
            return (read_jsonl(folder / f"{schema}_train.jsonl", schema),
                    read_jsonl(folder / f"{schema}_val.jsonl", schema), folder)
        rows = read_jsonl(args.data, schema)
        if args.eval_data:
            return rows, read_jsonl(args.eval_data, schema), None
    except (DataError, market.MarketError) as e:
        fail(str(e))
    random.Random(args.seed).shuffle(rows)
    cut = max(1, len(rows) // 20)
    return rows[cut:], rows[:cut], None


MAKES = {"sft": "python train_sft.py", "rm": "python train_rm.py", "ppo": "python train_ppo.py --init ckpt/"}


def open_model(folder, cls, role: str, device=None):
    """A trained model and its tokenizer from one folder (or hub id), or a message that says which script
    makes it. ckpt/sft and the like are ours: never looked up on the hub."""
    folder = str(folder)
    made_by = MAKES.get(Path(folder).name)
    if made_by and not Path(folder).exists():
        fail(f"{folder}: no checkpoint of {role}; run {made_by} first")
    try:
        model = load_model(folder, cls, device=device)
        tok = Tokenizer.from_pretrained(folder)
        tok.check_fits(model.config, folder)
    except (CheckpointError, HubError) as e:
        fail(str(e))
    if tok.eos_id is None:
        fail(f"{folder}: the tokenizer has no EOS token, so a J′ could never end; use the tokenizer G was trained with")
    return model, tok


def newest_generator() -> str:
    """ckpt/ppo or ckpt/sft, whichever was written last: the end of the pipeline as it was last run."""
    found = [Path("ckpt") / n for n in ("ppo", "sft") if (Path("ckpt") / n / "config.json").is_file()]
    if not found:
        fail("no generator in ckpt/ppo or ckpt/sft; run python train_sft.py first (then python train_rm.py and "
             "python train_ppo.py --init ckpt/), or pass --ckpt DIR")
    return str(max(found, key=lambda d: (d / "config.json").stat().st_mtime))


def cv_room(tok, config, lang: str, max_new_tokens: int) -> int:
    """The CV tokens that fit G's context beside the template and --max-new-tokens; none: stop, saying so."""
    room = config.max_seq_len - max_new_tokens - template_overhead(tok, lang)
    if room < 1:
        fail(f"--max-new-tokens {max_new_tokens} leaves no room for a CV in G's context of "
             f"{config.max_seq_len} tokens; ask for fewer")
    return room


def prompts_for(tok, config, cvs: list[str], names: list[str], lang: str, max_new_tokens: int) -> list[list[int]]:
    """The prompt of each CV; a CV too long for G's context is cut, with a notice (on stderr)."""
    room = cv_room(tok, config, lang, max_new_tokens)
    out = []
    for cv, name in zip(cvs, names):
        ids, cut = prompt_ids(tok, cv, lang, room)
        if cut:
            print(f"notice: {name} has {len(tok.encode(cv))} tokens; only its first {room} fit G's context "
                  f"({config.max_seq_len} tokens with --max-new-tokens {max_new_tokens}), the rest is not read",
                  file=sys.stderr)
        out.append(ids)
    return out


def judge_u(U, tok_u, folder, part: str, n: int, candidates: int, lang: str, seed: int = 0,
            autocast=contextlib.nullcontext) -> dict:
    """U beside the training-free lexical score and the oracle on a held-out part of the market ("val" while
    training, "test" for the final report): evaluation.judges_report on market.judge_bench's triples and real
    jobs of its first n seekers, the candidates being the jobs the lexical score retrieves."""
    lexical = TfIdf().fit(market.load_jobs(folder)[0])
    bench = market.judge_bench(folder, part, n, lexical.cosine_all, candidates, lang, seed)
    judges = {"U": lambda c, j: u_scores(U, tok_u, c, j, lang, autocast).numpy(), "lexical C→J": lexical.cosine,
              "oracle f (ceiling)": bench.oracle}
    return evaluation.judges_report(judges, bench, [("U", "lexical C→J")], seed=seed)
