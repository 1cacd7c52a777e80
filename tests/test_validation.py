"""Validation is not test: the training scripts choose on the market's validation seekers and never read its
test seekers. The test seekers' files are made unreadable, and stages 1–3 still run on their defaults; the
validation seekers are a part of their own. (Stage 4 reads its test seekers for its final report only: see
test_train_rec.py's test_train_rec_chooses_nothing_on_the_test_seekers.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from girl.market import build

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ("test", "sft_test", "rm_test", "interactions_test")


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A tiny market whose test files are not JSON: a script that opens one stops with an error naming it."""
    d = tmp_path_factory.mktemp("poisoned")
    build(d / "data", "en", seed=0, n_jobs=100, seekers=dict(sft=40, rm=40, ppo=8, test=6, val=6))
    for name in TEST_FILES:
        (d / "data" / f"{name}.jsonl").write_text("the test seekers: not for training scripts\n")
    return d


def test_the_training_scripts_never_open_the_test_seekers(poisoned):
    d, common = poisoned, ["--market-dir", poisoned / "data", "--lang", "en"]
    steps = []
    for script, extra in (
            ("train_sft.py", ["--max-steps", "2", "--eval-every", "1", "--oracle-cvs", "4", "--max-new-tokens", "8",
                              "--out", d / "ckpt" / "sft"]),
            ("train_rm.py", ["--sft", d / "ckpt" / "sft", "--feedback", "both", "--max-steps", "2", "--eval-every", "1", "--samples-per-cv", "2",
                             "--sample-cvs", "8", "--max-new-tokens", "8", "--out", d / "ckpt" / "rm"]),
            ("train_ppo.py", ["--init", d / "ckpt", "--iterations", "1", "--batch-size", "4", "--minibatch-size", "2",
                              "--max-new-tokens", "8", "--eval-cvs", "4", "--out", d / "ckpt" / "ppo"])):
        r = run(ROOT / script, *common, *extra)
        assert r.returncode == 0, (script, r.stderr[-2000:])
        steps.append(r.stdout)
    assert "eval loss" in steps[0] and "eval loss" in steps[1]  # each chose a checkpoint on the validation seekers
    assert json.loads((d / "ckpt" / "sft" / "metrics.json").read_text())["oracle_cvs"] == 4  # of the validation CVs
    # and the poison is real: a script told to read the test seekers stops at them
    r = run(ROOT / "train_sft.py", *common, "--data", d / "data" / "sft_train.jsonl", "--eval-data",
            d / "data" / "sft_test.jsonl", "--max-steps", "1", "--out", d / "ckpt" / "x")
    assert r.returncode == 2 and "sft_test.jsonl:1: not valid JSON" in r.stderr


def test_validation_and_test_seekers_are_different_people(poisoned):
    read = lambda name: [json.loads(line) for line in (poisoned / "data" / f"{name}.jsonl").read_text().splitlines()]
    val = {r["cv"] for r in read("val")}
    train = {r["cv"] for r in read("sft_train") + read("rec_train") + read("ppo")}
    assert len(val) == 6 and not val & train
    assert {r["cv"] for r in read("sft_val") + read("interactions_val")} <= val
