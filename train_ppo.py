"""Stage 3, RLRF: align the generator G with the reward model U by PPO (GIRL §3.3).

    python train_ppo.py --init ckpt/                      # G = ckpt/sft, U = ckpt/rm; writes ckpt/ppo
    python train_ppo.py --sft my-g/ --rm my-u/ --data cvs.jsonl
    python train_ppo.py --init ckpt/ --resume             # continue an interrupted run
    torchrun --nproc_per_node 4 train_ppo.py --init ckpt/ # each process samples its share of each batch
    torchrun --nproc_per_node 4 train_ppo.py --init ckpt/ --fsdp   # actor and critic sharded (FSDP2)

Four models: the actor (starts as G, becomes the new G), a frozen reference copy of G, the frozen reward
model U, and the critic (U's backbone, its scalar head read at every token as V(s_t)). Each iteration
samples one J′ per CV, scores it with U, and makes K epochs of clipped updates on rewards
r_t = −β·KL_t (+ U's score at the last token), with GAE advantages (girl/ppo.py holds every formula).
The CVs are the market's PPO split: seekers never used by SFT or the reward model.

Before training and at the end the actor is evaluated on held-out CVs with fixed seeds: U's score, KL to
the reference, and on the market the oracle's score of each J′ (the reward hacking check U cannot do).
Writes --out (default ckpt/ppo): the actor as a Hugging Face folder with metrics.json and metrics.jsonl
(one line per iteration); --out-last holds actor, critic and optimizer states for --resume.
"""

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from girl import evaluation, market, ppo
from girl.cli import (COUNT, COUNT0, FINITE, NONNEGATIVE, POSITIVE, UNIT, add_fsdp_flag, add_market_flags, barrier,
                      check_out, check_out_last, fail, finish, log, parallel, parser, resuming, setup, stop_if_not_finite)
from girl.data import DataError, read_jsonl
from girl.files import CheckpointError, atomic_dir
from girl.lm.checkpoint import load_model, load_optimizer, save_model
from girl.lm.hub import HubError
from girl.lm.model import RewardModel
from girl.lm.sampling import decoded, rollout
from girl.lm.tokenizer import Tokenizer
from girl.reward import token_scores
from girl.template import prompt_ids
from girl.training import StopRequest, adamw, gathered, step_indices

p = parser(__doc__)
# Models
p.add_argument("--init", default="ckpt", help="folder holding sft/ (G) and rm/ (U) (default: ckpt)")
p.add_argument("--sft", help="G's checkpoint (default: INIT/sft)")
p.add_argument("--rm", help="U's checkpoint; must share G's tokenizer, since the critic reads G's tokens "
                            "(default: INIT/rm)")
# Data
p.add_argument("--data", help='JSONL of {"cv"} prompts (default: the market\'s ppo.jsonl)')
p.add_argument("--eval-data", help='held-out JSONL of {"cv"} (+ "seeker" for the oracle) (default: the market\'s validation seekers, val.jsonl)')
add_market_flags(p)
p.add_argument("--max-cv-tokens", type=COUNT, default=160, help="longer CVs are cut to this many tokens (default: 160)")
# Rollout
p.add_argument("--batch-size", type=COUNT, default=64,
               help="CVs (one J′ each) per iteration and process; under torchrun the batch is this x processes "
                    "(default: 64)")
p.add_argument("--temperature", type=POSITIVE, default=0.7, help="sampling temperature of rollouts and of π (default: 0.7)")
p.add_argument("--max-new-tokens", type=COUNT, default=96, help="J′ length limit (default: 96)")
p.add_argument("--no-eos-score", type=FINITE, default=-3.0,
               help="score of a J′ that does not end with EOS, in units of the normalised score (default: -3)")
# PPO
p.add_argument("--iterations", type=COUNT, default=75, help="rollout + update rounds (default: 75)")
p.add_argument("--ppo-epochs", type=COUNT, default=4, help="passes over each batch of rollouts (default: 4)")
p.add_argument("--minibatch-size", type=COUNT, default=16,
               help="rollouts per gradient step and process; x processes under torchrun (default: 16)")
p.add_argument("--clip", type=POSITIVE, default=0.2, help="ε of the clipped policy ratio (default: 0.2)")
p.add_argument("--value-clip", type=POSITIVE, default=0.2, help="ε_v of the clipped value loss (default: 0.2)")
p.add_argument("--vf-coef", type=NONNEGATIVE, default=0.1, help="weight of the value loss (default: 0.1)")
p.add_argument("--gamma", type=UNIT, default=1.0, help="discount γ (default: 1)")
p.add_argument("--lam", type=UNIT, default=0.95, help="GAE λ (default: 0.95)")
p.add_argument("--kl-coef", type=NONNEGATIVE, default=0.2,
               help="β of the per-token KL penalty, or its start. Against the default U, chosen on the validation CVs: "
                    "0.2 lifts the oracle 0.430 -> 0.498 at a KL of 3.3 nats per J′, 0.05 only to 0.465 at 11.6, U's "
                    "score climbing twice as far (README, stage 3) (default: 0.2)")
p.add_argument("--kl-target", type=POSITIVE, help="adapt β toward this KL per sequence (default: β fixed)")
p.add_argument("--kl-horizon", type=COUNT, default=10000, help="the adaptive controller's horizon (default: 10000)")
p.add_argument("--kl-estimator", default="k1", choices=["k1", "k3"], help="per-token KL estimator (default: k1)")
p.add_argument("--lr", type=POSITIVE, help="actor learning rate (default: 1e-4 builtin-sized, 1e-6 over 100M parameters)")
p.add_argument("--critic-lr", type=POSITIVE, help="critic learning rate (default: 3x the actor's)")
p.add_argument("--weight-decay", type=NONNEGATIVE, default=0.0, help="AdamW decay of weight matrices (default: 0)")
p.add_argument("--grad-clip", type=POSITIVE, default=1.0, help="clip each model's gradient norm to this (default: 1)")
p.add_argument("--seed", type=COUNT0, default=0, help="seed of prompts order and sampling (default: 0)")
# Evaluation
p.add_argument("--eval-cvs", type=COUNT, default=200, help="held-out CVs scored before and after (default: 200)")
p.add_argument("--eval-every", type=COUNT0, default=0, help="also evaluate every N iterations; 0: only before/after")
p.add_argument("--save-every", type=COUNT, default=10, help="save the resumable state every N iterations (default: 10)")
# Output
p.add_argument("--out", default="ckpt/ppo", help="the trained actor, the new G (default: ckpt/ppo)")
p.add_argument("--out-last", help="actor + critic + optimizer states for --resume (default: OUT-last)")
p.add_argument("--resume", action="store_true", help="continue from --out-last")
add_fsdp_flag(p)
args = p.parse_args()
args.sft = args.sft or str(Path(args.init) / "sft")
args.rm = args.rm or str(Path(args.init) / "rm")
args.out_last = args.out_last or args.out.rstrip("/") + "-last"
check_out(args.out)
check_out(args.out_last, "--out-last")

run = setup(args.seed, fsdp=args.fsdp)
rank, world, device, autocast = run.rank, run.world, run.device, run.autocast

# ----------------------------------------------------------------------------- data
try:
    if args.data is None or args.eval_data is None:
        mdir = market.ensure(args.market_dir, args.lang, args.market_seed) if rank == 0 else Path(args.market_dir)
        barrier(world)  # rank 0 builds the market, once
    train_rows = read_jsonl(args.data or mdir / "ppo.jsonl", "ppo")
    eval_rows = read_jsonl(args.eval_data or mdir / "val.jsonl", "ppo")[: args.eval_cvs]
except (DataError, market.MarketError) as e:
    fail(str(e))
on_market = all("seeker" in r for r in eval_rows)
oracle = market.Oracle(market.seekers(eval_rows), args.lang) if on_market else None
log(f"data: {len(train_rows)} PPO CVs, {len(eval_rows)} held-out CVs" + (" (with the oracle)" if on_market else ""),
    rank=rank)
if world > 1 and len(train_rows) < args.batch_size * world:  # every process must get the same share of a batch
    fail(f"{len(train_rows)} PPO CVs make less than one batch of --batch-size {args.batch_size} x {world} processes; "
         "lower --batch-size")

# ----------------------------------------------------------------------------- the four models
check_out_last(args.out_last, "actor/trainer_state.json")
resume = resuming(args, "actor/trainer_state.json", rank)
for name, folder, script in (("G", args.sft, "train_sft.py"), ("U", args.rm, "train_rm.py")):
    if not Path(folder).is_dir():
        fail(f"{folder}: no checkpoint of {name}; run python {script} first (or pass --{'sft' if name == 'G' else 'rm'} DIR)")
try:
    tok = Tokenizer.from_pretrained(args.sft)
    tok_u = Tokenizer.from_pretrained(args.rm)
    actor_dir, critic_dir = (Path(args.out_last) / "actor", Path(args.out_last) / "critic") if resume else (args.sft, args.rm)
    # trained weights in float32 (bf16 autocast on CUDA); the frozen ones may stay in bf16 on CUDA
    actor = load_model(actor_dir, dtype=torch.float32, device=device)
    critic = load_model(critic_dir, RewardModel, dtype=torch.float32, device=device)
    ref = load_model(args.sft, device=device).requires_grad_(False)
    U = load_model(args.rm, RewardModel, device=device).requires_grad_(False)
except (CheckpointError, HubError) as e:
    fail(str(e))
if tok.eos_id is None:
    fail(f"{args.sft}: the tokenizer has no EOS token; J′ could never end")
if not tok.same_as(tok_u):
    fail(f"{args.rm} has another tokenizer than {args.sft}: the critic (U's backbone) must read G's tokens. "
         "Train U with train_rm.py --sft pointing at this G, or use a U of the same family")
n_actor = actor.num_parameters()
log(f"actor/reference: {actor.config.model_type} {n_actor / 1e6:.2f}M; U/critic: {U.config.model_type} "
    f"{U.num_parameters() / 1e6:.2f}M" + (f"; {world} processes" if world > 1 else ""), rank=rank)
args.lr = args.lr or (1e-4 if n_actor < 1e8 else 1e-6)
args.critic_lr = args.critic_lr or 3 * args.lr
# the trained models as the update calls them: themselves in one process; under torchrun wrapped by DDP, or with
# --fsdp sharded in place (the reference and U are frozen: each process holds a whole copy)
actor_train, critic_train = parallel(actor, run), parallel(critic, run)
actor_opt = adamw(actor, args.lr, args.weight_decay)
critic_opt = adamw(critic, args.critic_lr, args.weight_decay)
cfg = ppo.PPOConfig(epochs=args.ppo_epochs, minibatch_size=args.minibatch_size * world, clip=args.clip,
                    value_clip=args.value_clip, vf_coef=args.vf_coef, gamma=args.gamma, lam=args.lam,
                    kl_estimator=args.kl_estimator, temperature=args.temperature, grad_clip=args.grad_clip)
encoded = [prompt_ids(tok, r["cv"], args.lang, args.max_cv_tokens) for r in train_rows + eval_rows]
if cut := sum(c for _, c in encoded):
    log(f"{cut} CVs are longer than --max-cv-tokens {args.max_cv_tokens} and are cut to it", rank=rank)
train_prompts, eval_prompts = [ids for ids, _ in encoded[: len(train_rows)]], [ids for ids, _ in encoded[len(train_rows) :]]
if max(map(len, train_prompts)) + args.max_new_tokens + 1 > U.config.max_seq_len:  # U reads prompt + J′ + EOS
    fail(f"a prompt of --max-cv-tokens {args.max_cv_tokens} plus --max-new-tokens {args.max_new_tokens} does not fit "
         f"U's context of {U.config.max_seq_len} tokens; lower either")
# the policy on the held-out CVs, sampled at the rollout temperature from a fixed seed, before, during and after
eval_args = dict(cvs=[r["cv"] for r in eval_rows], U=U, tok_u=tok_u, lang=args.lang, seed=args.seed + 12345,
                 max_new_tokens=args.max_new_tokens, temperature=args.temperature, ref=ref, autocast=autocast,
                 oracle=oracle)

# ----------------------------------------------------------------------------- before
state = {"iteration": 0, "kl_coef": args.kl_coef, "score_mean": None, "score_std": None, "before": None}
if resume:
    try:
        state = load_optimizer(Path(args.out_last) / "actor", actor, actor_opt)
        load_optimizer(Path(args.out_last) / "critic", critic, critic_opt)
    except CheckpointError as e:
        fail(str(e))
    log(f"resuming at iteration {state['iteration']} from {args.out_last}", rank=rank)
if state["before"] is None:
    with gathered(actor, run.sharded):  # rank 0 evaluates the whole actor
        if rank == 0:
            t0 = time.time()
            state["before"] = evaluation.policy_eval(actor, tok, eval_prompts, **eval_args)
            log(f"before: {json.dumps({k: round(v, 4) for k, v in state['before'].items() if k != 'example'})} "
                f"({time.time() - t0:.0f}s)")
kl_ctl = ppo.KLController(state["kl_coef"], args.kl_target, args.kl_horizon)
metrics_path = Path(args.out_last.rstrip("/") + ".metrics.jsonl")  # one line per iteration, beside --out-last
kept = metrics_path.read_text(encoding="utf-8").splitlines() if resume and metrics_path.is_file() else []
kept = [line for line in kept if json.loads(line)["iteration"] <= state["iteration"]]  # drop what the crash lost
if rank == 0:
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

# ----------------------------------------------------------------------------- PPO
t_start, first_iteration = time.time(), state["iteration"]
stop = StopRequest()  # SIGINT/SIGTERM: save at the end of the iteration and exit
for it in range(state["iteration"], args.iterations):
    # the CVs and the sampling seeds are functions of the iteration alone, so a resumed run goes on exactly: each
    # epoch is one shuffle of the CVs cut into batches (the few left over wait for another epoch's shuffle).
    # Process `rank` samples rows rank::world of the batch, each CV from its own generator: a J′ is the same
    # whichever process samples it
    picked = step_indices(it, len(train_rows), args.batch_size * world, 1, args.seed)[0]
    rows, prompts = [train_rows[i] for i in picked], [train_prompts[i] for i in picked]
    mine = picked[rank::world]
    my_prompts = [train_prompts[i] for i in mine]
    rngs = [torch.Generator(device=device).manual_seed((args.seed * 100003 + it) * 1_000_003 + i) for i in mine]
    t0 = time.time()
    with gathered(actor, run.sharded):  # each process samples for as many steps as its J′ need
        batch = rollout(actor, my_prompts, args.max_new_tokens, tok.eos_id, tok.pad_or_eos_id,
                        args.temperature, rngs)
    tokens, _, _ = decoded(tok, batch.response, batch.mask)
    my_cvs = [train_rows[i]["cv"] for i in mine]
    raw = token_scores(U, tok, my_prompts, my_cvs, tokens, args.lang, autocast)  # U reads G's tokens
    batch = ppo.gather_rollout(batch, max(map(len, prompts)), tok.pad_or_eos_id, world)  # the whole batch, everywhere
    raw = ppo.gather_rows(raw, world)
    if state["score_mean"] is None:  # U's scale, measured once on G's first rollouts (see ppo.shaped_scores)
        state["score_mean"], state["score_std"] = raw.mean().item(), max(raw.std().item(), 1e-6)
    scores = ppo.shaped_scores(raw, batch.ended, state["score_mean"], state["score_std"], args.no_eos_score)
    t_rollout = time.time() - t0
    g = torch.Generator(device=device).manual_seed(args.seed * 100003 + it)  # the minibatches' order
    stats = ppo.update(actor_train, critic_train, ref, batch, scores, kl_ctl.beta, cfg, actor_opt, critic_opt, autocast, g,
                       rank, world)
    stats["u_score_raw"] = raw.mean().item()
    stop_if_not_finite(it + 1, args.out_last, "iteration", u_score=stats["u_score_raw"], policy_loss=stats["policy_loss"],
                       value_loss=stats["value_loss"], kl=stats["kl"])
    kl_ctl.update(stats["kl"], len(rows))
    state.update(iteration=it + 1, kl_coef=kl_ctl.beta)
    stopping = stop.requested(world, device) and it + 1 < args.iterations
    if rank == 0:  # the statistics are the whole batch's on every process; one writes them
        if on_market and rows[0].get("seeker"):
            o = market.oracle_eval(market.seekers(rows), decoded(tok, batch.response, batch.mask)[1], args.lang)
            stats.update(oracle=o["oracle_mean"], parse_rate=o["parse_rate"])
        stats.update(iteration=it + 1, seconds=time.time() - t0, rollout_seconds=t_rollout)
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(stats) + "\n")
        elapsed = time.time() - t_start
        eta = elapsed / (it + 1 - first_iteration) * (args.iterations - it - 1)
        log(f"iter {it + 1}/{args.iterations}  score {stats['score_mean']:+.3f}  kl {stats['kl']:.2f}  "
            f"entropy {stats['entropy']:.2f}  clip {stats['clip_frac']:.3f}  vloss {stats['value_loss']:.3f}  "
            f"ev {stats['explained_variance']:.2f}  len {stats['response_length']:.0f}  eos {stats['eos_rate']:.2f}"
            + (f"  oracle {stats['oracle']:.3f}" if "oracle" in stats else "")
            + f"  {stats['seconds']:.1f}s/iter  eta {eta:.0f}s")
    if args.eval_every and (it + 1) % args.eval_every == 0 and it + 1 < args.iterations:
        with gathered(actor, run.sharded):
            if rank == 0:
                e = evaluation.policy_eval(actor, tok, eval_prompts, **eval_args)
                log(f"eval: {json.dumps({k: round(v, 4) for k, v in e.items() if k != 'example'})}")
    if (it + 1) % args.save_every == 0 or it + 1 == args.iterations or stopping:
        # actor and critic, whole or not at all; rank 0 writes, and a sharded model's save needs every process
        if run.takes_part:
            with atomic_dir(args.out_last) if rank == 0 else nullcontext(Path(args.out_last)) as tmp:
                save_model(tmp / "actor", actor, tok, args, optimizer=actor_opt, state=state)
                save_model(tmp / "critic", critic, tok_u, args, optimizer=critic_opt, state=state)
    if stopping:  # saved just above
        stop.exit(f"iteration {it + 1}", args.out_last, rank, world)
train_seconds = time.time() - t_start

# ----------------------------------------------------------------------------- after
with gathered(actor, run.sharded):
    after = evaluation.policy_eval(actor, tok, eval_prompts, **eval_args) if rank == 0 else None
metrics, files = None, None
if rank == 0:
    before = state["before"]
    metrics = {"reward_before": before["reward"], "reward_after": after["reward"],
               "reward_std_before": before["reward_std"], "kl_after": after["kl"],
               "eos_rate_before": before["eos_rate"], "eos_rate_after": after["eos_rate"],
               "length_before": before["response_length"], "length_after": after["response_length"],
               "iterations": state["iteration"], "train_seconds": train_seconds, "eval_cvs": len(eval_rows),
               "score_norm": [state["score_mean"], state["score_std"]], "final_kl_coef": kl_ctl.beta,
               "processes": world, "example_before": before["example"], "example_after": after["example"]}
    if on_market:
        metrics.update(oracle_before=before["oracle"], oracle_after=after["oracle"],
                       oracle_sem_before=before["oracle_sem"], oracle_sem_after=after["oracle_sem"],
                       parse_rate_before=before["parse_rate"], parse_rate_after=after["parse_rate"])
    files = {"metrics.jsonl": metrics_path.read_bytes()}
if run.takes_part:
    save_model(args.out, actor, tok, args, metrics=metrics, files=files)
if rank == 0:
    log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                    if not k.startswith("example")}))
    log(f"wrote {args.out}/ (the new G) and {args.out_last}/ (resumable)")
if rank == 0 and math.isnan(after["reward"]):
    fail("the reward became NaN; lower --lr")  # torchrun stops the other processes
finish(world)
