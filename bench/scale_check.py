"""Scale-out check for a GPU machine: SFT and a few PPO iterations of a Qwen2.5-0.5B-shaped random model
under torchrun, DDP and FSDP2, with tokens/s and MFU for SFT. One run of a few minutes.

    python bench/scale_check.py                          # every GPU of this machine, bf16 autocast
    python bench/scale_check.py --shape tiny --nproc 2   # rehearses it on a CPU (gloo), in seconds

It writes a random model of the shape (weights from the seed; a byte-level BPE tokenizer learned from the
market's texts, whose ids fit the larger embedding table), U from its lowest layers, then runs
train_sft.py (once with DDP, once with --fsdp) and train_ppo.py on the synthetic market. MFU counts
6·P FLOPs per trained token (forward and backward of the weights; attention's extra is left out) against
the GPU's dense bf16 peak (--peak-tflops, default 989 for an H100/H200 SXM).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from girl.data import read_jsonl  # noqa: E402
from girl.lm.checkpoint import save_model  # noqa: E402
from girl.lm.model import Config, RewardModel, Transformer  # noqa: E402
from girl.lm.tokenizer import Tokenizer  # noqa: E402
from girl.market import ensure  # noqa: E402

SHAPES = {  # Qwen2.5-0.5B's config.json; tiny for the CPU rehearsal
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2,
                         hidden_dim=4864, max_seq_len=1024, tie_embeddings=True, rope_theta=1e6),
    "tiny": dict(model_type="qwen2", vocab_size=4096, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                 max_seq_len=512, tie_embeddings=True, rope_theta=1e6),
}
p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--shape", default="qwen2.5-0.5b", choices=list(SHAPES))
p.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()), help="processes (default: every GPU)")
p.add_argument("--sft-steps", type=int, default=30)
p.add_argument("--batch-size", type=int, default=8, help="SFT pairs per process and micro-batch")
p.add_argument("--ppo-iterations", type=int, default=3)
p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU, TFLOP/s")
p.add_argument("--work", default="ckpt/scale-check", help="folder for the models and runs")
args = p.parse_args()

work = Path(args.work)
market = ensure(work / "data", "zh", 0)
rows = read_jsonl(market / "sft_train.jsonl", "sft")
tok = Tokenizer.train([r["cv"] for r in rows[:2000]] + [r["jd"] for r in rows[:2000]], 2048)
torch.manual_seed(0)
config = Config(**SHAPES[args.shape], bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
G = Transformer(config)
save_model(work / "g", G, tok)
save_model(work / "u", RewardModel.from_generator(G, max(1, config.n_layers // 4)), tok)
P = G.num_parameters()
print(f"{args.shape}: {P / 1e6:.1f}M parameters; {args.nproc} processes; torch {torch.__version__}", flush=True)
del G

launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run(name: str, *script_args):
    t0 = time.time()
    r = subprocess.run([*launch, *map(str, script_args)], cwd=ROOT, env=env, capture_output=True, text=True)
    (work / f"{name}.log").write_text(r.stdout + r.stderr)
    print(f"{name}: exit {r.returncode}, {time.time() - t0:.0f}s (log: {work / name}.log)", flush=True)
    if r.returncode:
        print(r.stderr[-3000:])
        raise SystemExit(1)


common = ["--model", work / "g", "--market-dir", market, "--max-steps", args.sft_steps, "--batch-size", args.batch_size,
          "--eval-every", args.sft_steps, "--eval-examples", 64, "--oracle-cvs", 0, "--log-every", 5, "--warmup", 5]
for mode in ("ddp", "fsdp"):
    run(f"sft-{mode}", "train_sft.py", *common, "--out", work / f"sft-{mode}", *(["--fsdp"] if mode == "fsdp" else []))
    m = json.loads((work / f"sft-{mode}" / "metrics.json").read_text())
    mfu = 6 * P * m["tokens_per_sec"] / (args.nproc * args.peak_tflops * 1e12)
    print(f"SFT {mode}: {m['tokens_per_sec']:,.0f} tokens/s over {args.nproc} processes, MFU {mfu:.1%} "
          f"(6·P FLOPs per token, peak {args.peak_tflops:g} TFLOP/s each); held-out loss {m['initial_eval_loss']:.3f} "
          f"→ {m['eval_loss']:.3f}", flush=True)
for mode in ("ddp", "fsdp"):
    run(f"ppo-{mode}", "train_ppo.py", "--sft", work / "sft-ddp", "--rm", work / "u", "--market-dir", market,
        "--iterations", args.ppo_iterations, "--batch-size", 8, "--minibatch-size", 4, "--eval-cvs", 16,
        "--max-new-tokens", 64, "--out", work / f"ppo-{mode}", *(["--fsdp"] if mode == "fsdp" else []))
    lines = [json.loads(line) for line in (work / f"ppo-{mode}" / "metrics.jsonl").read_text().splitlines()]
    print(f"PPO {mode}: " + "; ".join(f"iteration {x['iteration']} {x['seconds']:.1f}s (rollout {x['rollout_seconds']:.1f}s),"
                                      f" kl {x['kl']:.3f}" for x in lines), flush=True)
