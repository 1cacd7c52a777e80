"""train_sft.py as a user runs it: killed mid-run and resumed, it ends exactly where an uninterrupted run
ends; bad data stops it with the file and line, before anything is written."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from girl.lm.checkpoint import load_model
from girl.market import build

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("market")
    build(d, "en", seed=0, n_jobs=100, seekers=dict(sft=40, rm=0, ppo=0, test=10, val=10))
    return d / "sft_train.jsonl", d / "sft_val.jsonl"


def command(pairs, out, *extra):
    train, held = pairs
    return [sys.executable, "-u", str(ROOT / "train_sft.py"), "--data", str(train), "--eval-data", str(held),
            "--lang", "en", "--max-steps", "12", "--eval-every", "3", "--batch-size", "8", "--eval-examples", "8",
            "--log-every", "1", "--out", str(out), *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in every run


@pytest.fixture(scope="module")
def uninterrupted(pairs, tmp_path_factory):
    """The 12-step run that interrupted ones must end equal to."""
    a = tmp_path_factory.mktemp("uninterrupted") / "a"
    subprocess.run(command(pairs, a), check=True, env=ENV, capture_output=True, timeout=300)
    return a


def same_weights(a, b) -> bool:
    a, b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_and_resumed_run_equals_uninterrupted_run(pairs, uninterrupted, tmp_path):
    proc = subprocess.Popen(command(pairs, tmp_path / "b"), stdout=subprocess.PIPE, text=True, env=ENV)
    evals = []
    for line in proc.stdout:
        if line.startswith("eval loss"):
            evals.append(line)
        if len(evals) == 2:  # step 6 saved: pull the plug
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    state = json.loads((tmp_path / "b-last" / "trainer_state.json").read_text())
    assert 6 <= state["step"] < 12, "the run was not interrupted before its end"
    # what the killed run left are whole checkpoints: the best (step 6's, its eval loss still falling) and the
    # resumable state of the same step, the same weights
    assert "saved best" in evals[1] and state["step"] == 6, (evals, state["step"])
    best = load_file(str(tmp_path / "b" / "model.safetensors"))
    last = load_file(str(tmp_path / "b-last" / "model.safetensors"))
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    load_model(tmp_path / "b")

    done = subprocess.run(command(pairs, tmp_path / "b", "--resume"), check=True, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert f"resuming at step {state['step']}" in done.stdout
    assert same_weights(uninterrupted.with_name("a-last"), tmp_path / "b-last")
    for run in (uninterrupted, tmp_path / "b"):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == 12 and metrics["eval_loss"] < metrics["initial_eval_loss"]
        assert {"config.json", "model.safetensors", "tokenizer.json", "train_args.json"} <= {p.name for p in run.iterdir()}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_at_the_step_boundary_and_resume_goes_on_exactly(pairs, uninterrupted, tmp_path, sig):
    """Ctrl-C, or the SIGTERM a scheduler sends before it kills a job, mid-run (eval, and so saving, only every
    3 steps): the step in progress is finished and saved, the run exits 128 + the signal's number without a
    traceback, and --resume ends with the uninterrupted run's weights, bit for bit."""
    proc = subprocess.Popen(command(pairs, tmp_path / "b"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    for line in proc.stdout:
        if line.startswith("step 4/12"):  # between the saves of steps 3 and 6
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    state = json.loads((tmp_path / "b-last" / "trainer_state.json").read_text())
    assert 4 <= state["step"] < 12 and state["step"] % 3 != 0  # saved because of the signal, not an eval
    assert f"stopped by {sig.name} after step {state['step']}" in out and "Traceback" not in err
    done = subprocess.run(command(pairs, tmp_path / "b", "--resume"), check=True, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert f"resuming at step {state['step']}" in done.stdout
    assert same_weights(uninterrupted.with_name("a-last"), tmp_path / "b-last")
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 12


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(pairs, tmp_path):
    """A learning rate of 1e30 blows the weights up within a few steps: the run stops at the first step whose
    loss or gradient is not finite, names it, and the state saved before it (every step here) still loads,
    finite, at the step before."""
    r = subprocess.run(command(pairs, tmp_path / "o", "--lr", "1e30", "--warmup", "0", "--eval-every", "1"),
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    step = int(r.stderr.split("error: step ")[1].split(":")[0])
    assert "the loss is not finite (loss" in r.stderr and "grad_norm" in r.stderr and "--resume" in r.stderr
    state = json.loads((tmp_path / "o-last" / "trainer_state.json").read_text())
    assert state["step"] == step - 1
    assert all(torch.isfinite(t).all() for t in load_file(str(tmp_path / "o-last" / "model.safetensors")).values())


def test_bad_data_stops_with_file_and_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"cv": "a", "jd": "b"}\n{"cv": "c"}\n')
    r = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--data", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert f"error: {bad}:2: field 'jd' is missing" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_help_explains_every_flag():
    r = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for flag in ("--model", "--data", "--eval-data", "--lang", "--max-len", "--batch-size", "--grad-accum", "--lr",
                 "--warmup", "--weight-decay", "--grad-clip", "--epochs", "--max-steps", "--seed", "--eval-every",
                 "--out", "--resume"):
        assert flag in r.stdout


@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "-1", "argument --lr: must be finite and > 0, got -1"),
    ("--lr", "nan", "argument --lr: must be finite and > 0, got nan"),
    ("--batch-size", "0", "argument --batch-size: must be >= 1, got 0"),
    ("--warmup", "ten", "argument --warmup: expected an integer, got 'ten'"),
])
def test_bad_numbers_stop_at_parse_time(tmp_path, flag, value, message):
    r = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), flag, value, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
