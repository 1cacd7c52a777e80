"""N processes compute what one does: train_sft.py and train_rm.py under torchrun (2 CPU processes, gloo) against
one process with the same global batch, from the same weights.

What may differ is the order of float32 additions: each rank sums its half of a step's gradient, then gloo adds
the halves. That is ~1e-7 relative on a gradient's large components, and the logged losses and the held-out
loss must agree to 1e-5 relative. The weights need a looser bound. AdamW's first steps move each weight by
about lr·g/(|g| + ε). For a weight whose gradient is near ε (1e-8), made of terms that cancel, a rounding
difference becomes a sizeable share of lr. Such weights are few, so the bound is 1e-2 of the distance training
moved the weights. Measured: 2.8e-6 (SFT) and 8.8e-4 (U). Wrong arithmetic is far above this: before the
step's token count was summed over the ranks, SFT's two runs differed by 4.3e-2 of that distance. Their held-out
losses also differed by 4.5e-5 relative, and their logged losses from the first step on.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from girl.market import build

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def python(*args):
    return subprocess.run([sys.executable, *map(str, args)], check=True, capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=ENV)


def torchrun(*args):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def distance(a: dict, b: dict) -> float:
    return sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a).sqrt().item()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny market and G after one SFT step: the weights both runs start from."""
    d = tmp_path_factory.mktemp("ddp")
    build(d / "data", "en", seed=0, n_jobs=100, seekers=dict(sft=40, rm=40, ppo=0, eval=10))
    python(ROOT / "train_sft.py", "--data", d / "data" / "sft_train.jsonl", "--lang", "en", "--max-steps", "1",
           "--eval-every", "1", "--out", d / "g0")
    return d


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


def logged_losses(out: str) -> list[str]:
    return [line.split("loss ")[1].split()[0] for line in out.splitlines() if line.startswith("step ")]


def assert_same_run(one: Path, two: Path, start: dict, out_one: str, out_two: str, moved_at_least: float):
    assert logged_losses(out_one) == logged_losses(out_two) and len(logged_losses(out_one)) == 4
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], rel=1e-5)
    a, b = weights(one.with_name(one.name + "-last")), weights(two.with_name(two.name + "-last"))
    moved = distance(a, start)
    assert moved > moved_at_least and distance(a, b) <= 1e-2 * moved, (distance(a, b), moved)


def test_sft_two_processes_equal_one(world, tmp_path):
    common = [ROOT / "train_sft.py", "--model", world / "g0", "--data", world / "data" / "sft_train.jsonl",
              "--eval-data", world / "data" / "sft_eval.jsonl", "--lang", "en", "--lr", "1e-3", "--warmup", "1",
              "--max-steps", "4", "--eval-every", "4", "--oracle-cvs", "0", "--eval-examples", "8", "--log-every", "1"]
    one = python(*common, "--batch-size", "8", "--out", tmp_path / "one")
    two = torchrun(*common, "--batch-size", "4", "--out", tmp_path / "two")
    assert_same_run(tmp_path / "one", tmp_path / "two", weights(world / "g0"), one.stdout, two.stdout, 1.0)


def test_rm_two_processes_equal_one(world, tmp_path):
    common = [ROOT / "train_rm.py", "--sft", world / "g0", "--data", world / "data" / "rm_train.jsonl",
              "--eval-data", world / "data" / "rm_eval.jsonl", "--lang", "en", "--warmup", "1", "--eval-every", "4",
              "--log-every", "1"]
    start = python(*common, "--batch-size", "8", "--max-steps", "1", "--out", tmp_path / "start")  # after step 1
    one = python(*common, "--batch-size", "8", "--max-steps", "4", "--out", tmp_path / "one")
    two = torchrun(*common, "--batch-size", "4", "--max-steps", "4", "--out", tmp_path / "two")
    assert start.returncode == 0
    assert_same_run(tmp_path / "one", tmp_path / "two", weights(tmp_path / "start-last"), one.stdout, two.stdout, 1e-2)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "one", tmp_path / "two"))
    assert m1["eval_accuracy"] == m2["eval_accuracy"]
