"""N processes compute what one does: train_sft.py, train_rm.py and train_ppo.py under torchrun (2 CPU processes,
gloo) against one process with the same global batch, from the same weights.

What may differ is the order of float32 additions: each rank sums its half of a step's gradient, then gloo adds
the halves. That is ~1e-7 relative on a gradient's large components, and the logged losses and the held-out
loss must agree to 1e-5 relative. The weights need a looser bound. AdamW's first steps move each weight by
about lr·g/(|g| + ε). For a weight whose gradient is near ε (1e-8), made of terms that cancel, a rounding
difference becomes a sizeable share of lr. Such weights are few, so the bound is 1e-2 of the distance training
moved the weights. Measured: 2.8e-6 (SFT) and 8.8e-4 (U). Wrong arithmetic is far above this: before the
step's token count was summed over the ranks, SFT's two runs differed by 4.3e-2 of that distance. Their held-out
losses also differed by 4.5e-5 relative, and their logged losses from the first step on.

PPO's two runs sample the same J′ (each CV has its own generator), so the same bounds hold for the actor and the
critic. Every statistic of every iteration must agree to 1e-5 relative or 1e-5 absolute: the losses are means of
whitened advantages, O(1) terms that cancel (policy_loss ~0.04 differed by 1.1e-6). Measured after 3 iterations:
the actor and the critic 1.9e-6 and 2.2e-6 of the distance training moved them, G's logits 3e-6 of theirs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from girl.lm.checkpoint import load_model
from girl.lm.model import RewardModel
from girl.market import build

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def python(*args):
    return subprocess.run([sys.executable, *map(str, args)], check=True, capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=ENV)


def torchrun(*args):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    told = [line for line in r.stderr.splitlines() if any(w in line for w in ("[rank", "rror", "terminate", "exitcode"))]
    assert r.returncode == 0, "\n".join(told)[-6000:]
    return r


def distance(a: dict, b: dict) -> float:
    return sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a).sqrt().item()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny market and G after one SFT step: the weights both runs start from."""
    d = tmp_path_factory.mktemp("ddp")
    build(d / "data", "en", seed=0, n_jobs=100, seekers=dict(sft=40, rm=40, ppo=0, test=10, val=10))
    python(ROOT / "train_sft.py", "--data", d / "data" / "sft_train.jsonl", "--lang", "en", "--max-steps", "1",
           "--eval-every", "1", "--out", d / "g0")
    return d


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


def tokens_of(folder) -> torch.Tensor:
    """4 random sequences of 40 ids of the model in folder, to compare two checkpoints' outputs on."""
    vocab = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
    return torch.randint(0, vocab, (4, 40), generator=torch.Generator().manual_seed(0))


def logged_losses(out: str) -> list[str]:
    return [line.split("loss ")[1].split()[0] for line in out.splitlines() if line.startswith("step ")]


def assert_same_run(one: Path, two: Path, start: dict, out_one: str, out_two: str, moved_at_least: float):
    assert logged_losses(out_one) == logged_losses(out_two) and len(logged_losses(out_one)) == 4
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], rel=1e-5)
    a, b = weights(one.with_name(one.name + "-last")), weights(two.with_name(two.name + "-last"))
    moved = distance(a, start)
    assert moved > moved_at_least and distance(a, b) <= 1e-2 * moved, (distance(a, b), moved)


def sft_args(world, *extra):
    return [ROOT / "train_sft.py", "--model", world / "g0", "--data", world / "data" / "sft_train.jsonl",
            "--eval-data", world / "data" / "sft_val.jsonl", "--lang", "en", "--lr", "1e-3", "--warmup", "1",
            "--eval-every", "4", "--oracle-cvs", "0", "--eval-examples", "8", "--log-every", "1", *extra]


@pytest.fixture(scope="module")
def sft_one(world):
    """One process's 4 SFT steps, batch 8: what each two-process run must compute. (folder, stdout)"""
    r = python(*sft_args(world, "--max-steps", "4"), "--batch-size", "8", "--out", world / "sft-one")
    return world / "sft-one", r.stdout


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_sft_two_processes_equal_one(world, sft_one, tmp_path, parallel):
    one = sft_one[0]
    two = torchrun(*sft_args(world, "--max-steps", "4", *(["--fsdp"] if parallel == "fsdp" else [])),
                   "--batch-size", "4", "--out", tmp_path / "two")
    assert_same_run(one, tmp_path / "two", weights(world / "g0"), sft_one[1], two.stdout, 1.0)
    if parallel == "fsdp":  # sharded indeed: each process holds about half of the parameters
        held, total = (float(v.rstrip("M")) for v in two.stdout.split("processes holds ")[1].split()[:4:3])
        assert abs(held / total - 0.5) < 0.01, (held, total)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, tmp_path / "two"))
    assert m1["train_tokens"] == m2["train_tokens"]
    # the saved G opens as any G does and computes what one process's does
    x = tokens_of(world / "g0")
    g0, g1, g2 = (load_model(f)(x) for f in (world / "g0", one, tmp_path / "two"))
    assert (g1 - g2).abs().max() <= 1e-2 * (g1 - g0).abs().max()
    # AdamW's moments, gathered from the shards under FSDP, are one process's
    a, b = (load_file(str(d / "optimizer.safetensors")) for d in (world / "sft-one-last", tmp_path / "two-last"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert distance(a, b) <= 1e-2 * distance(a, {k: torch.zeros_like(v) for k, v in a.items()})


def test_sft_fsdp_resumes_exactly(world, tmp_path):
    """Two FSDP processes stopped after step 2 and resumed (each process's shard of AdamW's moments cut from
    the whole state in --out-last) end bit for bit where an uninterrupted FSDP run ends."""
    torchrun(*sft_args(world, "--max-steps", "4", "--fsdp"), "--batch-size", "4", "--out", tmp_path / "a")
    torchrun(*sft_args(world, "--max-steps", "2", "--fsdp"), "--batch-size", "4", "--out", tmp_path / "b")
    r = torchrun(*sft_args(world, "--max-steps", "4", "--fsdp", "--resume"), "--batch-size", "4", "--out", tmp_path / "b")
    assert "resuming at step 2" in r.stdout
    for f in ("model", "optimizer"):
        a, b = (load_file(str(tmp_path / d / f"{f}.safetensors")) for d in ("a-last", "b-last"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


RM_ARGS = ["--data", "data/rm_train.jsonl", "--eval-data", "data/rm_val.jsonl", "--lang", "en", "--warmup", "1",
           "--eval-every", "2", "--log-every", "1"]


def rm_args(world, *extra):
    return [ROOT / "train_rm.py", "--sft", world / "g0", *(world / a if a.startswith("data/") else a for a in RM_ARGS),
            *extra]


@pytest.fixture(scope="module")
def rm_one(world):
    """U after one step of L_rmt (the start the distance is measured from) and one process's 4 steps, batch 8."""
    python(*rm_args(world, "--batch-size", "8", "--max-steps", "1", "--out", world / "rm-start"))
    r = python(*rm_args(world, "--batch-size", "8", "--max-steps", "4", "--out", world / "rm-one"))
    return world / "rm-one", r.stdout


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_rm_two_processes_equal_one(world, rm_one, tmp_path, parallel):
    one = rm_one[0]
    two = torchrun(*rm_args(world, "--batch-size", "4", "--max-steps", "4", "--out", tmp_path / "two",
                            *(["--fsdp"] if parallel == "fsdp" else [])))
    start = world / "rm-start-last"
    assert_same_run(one, tmp_path / "two", weights(start), rm_one[1], two.stdout, 1e-2)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, tmp_path / "two"))
    assert m1["eval_accuracy"] == m2["eval_accuracy"] and m1["train_tokens"] == m2["train_tokens"]
    x = tokens_of(world / "g0")
    u0, u1, u2 = (load_model(f, RewardModel)(x) for f in (start, one, tmp_path / "two"))
    assert (u1 - u2).abs().max() <= 1e-2 * (u1 - u0).abs().max()


@pytest.fixture(scope="module")
def ppo_init(world):
    """G that writes a one-line JD and ends it (30 SFT steps on the JDs' first lines), and U from G after two steps
    on the application log: J′ end with EOS, so U's score, not the no-EOS score, drives PPO."""
    rows = [json.loads(line) for line in (world / "data" / "sft_train.jsonl").read_text().splitlines()]
    (world / "short.jsonl").write_text("".join(json.dumps({"cv": r["cv"], "jd": r["jd"].split("\n")[0]}) + "\n"
                                               for r in rows))
    python(ROOT / "train_sft.py", "--data", world / "short.jsonl", "--lang", "en", "--max-steps", "30", "--warmup", "5",
           "--eval-every", "30", "--oracle-cvs", "0", "--out", world / "g1")
    python(ROOT / "train_rm.py", "--sft", world / "g1", "--data", world / "data" / "rm_train.jsonl", "--eval-data",
           world / "data" / "rm_val.jsonl", "--lang", "en", "--feedback", "log", "--samples-per-cv", "0",
           "--max-steps", "2", "--eval-every", "2", "--out", world / "u1")
    return world


def ppo_args(d, *extra):
    return [ROOT / "train_ppo.py", "--sft", d / "g1", "--rm", d / "u1", "--data", d / "data" / "sft_train.jsonl",
            "--eval-data", d / "data" / "sft_val.jsonl", "--lang", "en", "--ppo-epochs", "2", "--max-new-tokens", "12",
            "--eval-cvs", "4", "--save-every", "1", *extra]


@pytest.fixture(scope="module")
def ppo_one(ppo_init):
    """One process's 3 PPO iterations of 8 CVs, minibatches of 4."""
    python(*ppo_args(ppo_init, "--iterations", "3", "--batch-size", "8", "--minibatch-size", "4", "--out",
                     ppo_init / "ppo-one"))
    return ppo_init / "ppo-one"


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ppo_two_processes_equal_one(ppo_init, ppo_one, tmp_path, parallel):
    d = ppo_init
    (tmp_path / "one").symlink_to(ppo_one)
    (tmp_path / "one-last").symlink_to(ppo_one.with_name("ppo-one-last"))
    torchrun(*ppo_args(d, "--iterations", "3", "--batch-size", "4", "--minibatch-size", "2", "--out", tmp_path / "two",
                       *(["--fsdp"] if parallel == "fsdp" else [])))
    one, two = ([json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
                for r in ("one", "two"))
    assert len(one) == len(two) == 3 and one[0]["eos_rate"] > 0.5 and one[0]["score_std"] > 0.1
    for a, b in zip(one, two):
        for k, v in a.items():
            if k not in ("seconds", "rollout_seconds"):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-5), (a["iteration"], k, v, b[k])
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    for k in ("reward_before", "reward_after", "kl_after", "eos_rate_after", "length_after"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-5), k
    for model, start in (("actor", d / "g1"), ("critic", d / "u1")):
        a, b = (weights(tmp_path / r / model) for r in ("one-last", "two-last"))
        moved = distance(a, weights(start))
        assert moved > 0.1 and distance(a, b) <= 1e-2 * moved, (model, distance(a, b), moved)
    # the checkpoints open as any G and U do, and give what one process's give
    x = tokens_of(d / "g1")
    g0, g1, g2 = (load_model(f)(x) for f in (d / "g1", tmp_path / "one", tmp_path / "two"))
    assert (g1 - g2).abs().max() <= 1e-2 * (g1 - g0).abs().max()
    u0, u1, u2 = (load_model(f, RewardModel)(x) for f in (d / "u1", tmp_path / "one-last" / "critic",
                                                          tmp_path / "two-last" / "critic"))
    assert (u1 - u2).abs().max() <= 1e-2 * (u1 - u0).abs().max()


def test_ppo_two_processes_resume_exactly(ppo_init, tmp_path):
    """Stopped after iteration 2 and resumed, two FSDP processes end where an uninterrupted run does: the actor's
    and the critic's AdamW moments, saved whole, are cut into the same shards again."""
    d = ppo_init
    common = ppo_args(d, "--batch-size", "4", "--minibatch-size", "2", "--fsdp")
    torchrun(*common, "--iterations", "3", "--out", tmp_path / "a")
    torchrun(*common, "--iterations", "2", "--out", tmp_path / "b")
    r = torchrun(*common, "--iterations", "3", "--resume", "--out", tmp_path / "b")
    assert "resuming at iteration 2" in r.stdout and r.stdout.count("resuming at") == 1  # said once, by rank 0
    for model in ("actor", "critic"):
        a, b = (weights(tmp_path / r / model) for r in ("a-last", "b-last"))
        assert all(torch.equal(a[k], b[k]) for k in a), model
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == 3
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3]

