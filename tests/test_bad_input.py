"""Bad input a user can give any script: a number out of range, too little data, a resumable state that is not
one. Each stops with exit status 2 and one `error:` line that names the flag or file and the fix, with no
traceback and nothing written; or, for too little data, runs with a notice that says which flag to raise.

Interruptions are tested beside the scripts they interrupt (test_train_sft.py, test_train_ppo.py,
test_generate.py, test_model.py), downloads in test_hub.py."""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from girl.cli import COUNT, FINITE, POSITIVE, PROBABILITY_MASS, RATE, UNIT
from girl.market import build

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_number_types_take_what_they_say_and_nothing_else():
    assert POSITIVE("1e-3") == 1e-3 and COUNT("3") == 3 and isinstance(COUNT("3"), int) and FINITE("-3") == -3
    assert UNIT("0") == 0 and UNIT("1") == 1 and PROBABILITY_MASS("1") == 1 and RATE("0") == 0
    for kind, text in ((POSITIVE, "0"), (POSITIVE, "-1e-3"), (POSITIVE, "nan"), (POSITIVE, "inf"), (FINITE, "-inf"),
                       (COUNT, "0"), (COUNT, "2.5"), (UNIT, "1.0001"), (UNIT, "-0.1"), (PROBABILITY_MASS, "0"),
                       (RATE, "1"), (POSITIVE, "1e-3x")):
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)
    assert math.isclose(POSITIVE("1e308"), 1e308)


@pytest.mark.parametrize("script, flag, value, message", [
    ("train_rm.py", "--margin", "-1", "argument --margin: must be finite and >= 0, got -1"),
    ("train_rm.py", "--sample-temperature", "0", "argument --sample-temperature: must be finite and > 0, got 0"),
    ("train_rec.py", "--proj", "0", "argument --proj: must be >= 1, got 0"),
    ("train_rec.py", "--lr", "inf", "argument --lr: must be finite and > 0, got inf"),
    ("generate.py", "--top-p", "1.5", "argument --top-p: must be finite and > 0 and <= 1, got 1.5"),
    ("generate.py", "--num-return", "0", "argument --num-return: must be >= 1, got 0"),
    ("train_ppo.py", "--kl-coef", "nan", "argument --kl-coef: must be finite and >= 0, got nan"),
    ("train_rec.py", "--seed", "-1", "argument --seed: must be >= 0, got -1"),  # numpy's generator takes no -1
    ("train_sft.py", "--seed", "-1", "argument --seed: must be >= 0, got -1"),
    ("train_ppo.py", "--market-seed", "-2", "argument --market-seed: must be >= 0, got -2"),
])
def test_every_script_checks_its_numbers_at_parse_time(tmp_path, script, flag, value, message):
    r = run(script, flag, value, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    d = tmp_path_factory.mktemp("market")
    build(d, "en", seed=0, n_jobs=60, seekers=dict(sft=12, rm=0, ppo=0, test=4, val=4))
    return d


def test_too_little_data_for_the_schedule_is_said_with_the_flag_to_raise(market, tmp_path):
    r = run("train_sft.py", "--data", market / "sft_train.jsonl", "--eval-data", market / "sft_val.jsonl", "--lang", "en",
            "--oracle-cvs", "0", "--out", tmp_path / "o")
    pairs = len((market / "sft_train.jsonl").read_text().splitlines())
    assert r.returncode == 0, r.stderr
    assert (f"notice: {pairs} training pairs make only {math.ceil(pairs / 16)} optimizer steps (--epochs 1, "
            f"--batch-size 16 x --grad-accum 1), fewer than --warmup 30") in r.stdout and "Raise --epochs" in r.stdout
    r = run("train_sft.py", "--data", market / "sft_train.jsonl", "--eval-data", market / "sft_val.jsonl", "--lang", "en",
            "--oracle-cvs", "0", "--warmup", "2", "--out", tmp_path / "p")
    assert r.returncode == 0 and "notice" not in r.stdout


def test_a_resumable_state_without_its_optimizer_is_refused(market, tmp_path):
    common = ["--data", market / "sft_train.jsonl", "--eval-data", market / "sft_val.jsonl", "--lang", "en",
              "--oracle-cvs", "0", "--eval-every", "1", "--out", tmp_path / "o"]
    assert run("train_sft.py", *common, "--max-steps", "1").returncode == 0
    state = tmp_path / "o-last"
    (state / "optimizer.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # cut short
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    r = run("train_sft.py", *common, "--max-steps", "2", "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {state / 'optimizer.safetensors'}: no readable optimizer state" in r.stderr
    assert "run without --resume" in r.stderr
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before
    assert json.loads((state / "trainer_state.json").read_text())["step"] == 1


def test_out_last_that_holds_something_else_is_not_overwritten(market, tmp_path):
    """--out-last ckpt/sft by mistake (a model, not a resumable state): nothing is trained or written over it."""
    model = tmp_path / "sft"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tiny-llama", model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    for script, extra in (("train_sft.py", ["--data", market / "sft_train.jsonl"]),
                          ("train_ppo.py", ["--data", market / "val.jsonl"])):
        r = run(script, *extra, "--out-last", model, "--out", tmp_path / "o")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"error: --out-last {model} holds something else than a resumable state" in r.stderr
        assert {p.name: p.read_bytes() for p in model.iterdir()} == before and not (tmp_path / "o").exists()


def test_metrics_without_a_number_are_valid_json(tmp_path):
    """A metric that is nan (no seeker with both labels) is written null: metrics.json stays JSON that strict
    readers accept, not Python's bare NaN."""
    from girl.files import write_json
    write_json(tmp_path / "metrics.json", {"auc": float("nan"), "ranking": {"ndcg@10": [1.0, float("inf"), np.float64("nan")]}})
    strict = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert strict == {"auc": None, "ranking": {"ndcg@10": [1.0, None, None]}}


@pytest.mark.parametrize("script, flag", [("train_sft.py", "--out"), ("train_rm.py", "--out-last"), ("train_ppo.py", "--out"),
                                          ("train_rec.py", "--out"), ("generate.py", "--output")])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, script, flag):
    """--out a file (a folder goes there), or a path under a file: refused at once, naming the flag, and the
    user's file is neither moved nor changed (train_sft.py --out FILE once moved it aside, then crashed)."""
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    extra = ["--input", tmp_path / "cvs.jsonl"] if script == "generate.py" else []
    targets = ([tmp_path / "notes.txt" / "out.jsonl", tmp_path] if script == "generate.py"
               else [mine, tmp_path / "notes.txt" / "ckpt"])
    for target in targets:
        r = run(script, *extra, flag, target, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"error: {flag} {target}" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and mine.read_text() == "mine"


def test_a_script_on_a_market_of_the_other_language_says_so(market, tmp_path):
    """train_sft.py --market-dir of an en market with --lang zh: one error line, and the market untouched."""
    before = {p.name: p.read_bytes() for p in market.iterdir()}
    r = run("train_sft.py", "--market-dir", market, "--lang", "zh", "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {market / 'market.json'}: this folder holds the market of lang en, seed 0, not zh" in r.stderr
    assert {p.name: p.read_bytes() for p in market.iterdir()} == before


def test_the_training_seed_is_not_the_market_seed(market, tmp_path):
    """--seed 1 trains on the seed-0 market already in --market-dir (a seed of the run, not of its data: a spread
    over training seeds on one market); --market-seed 1 asks for another market and is refused, the folder untouched."""
    before = {p.name: p.read_bytes() for p in market.iterdir()}
    common = ["--market-dir", market, "--lang", "en", "--oracle-cvs", "0", "--max-steps", "1", "--eval-every", "1"]
    r = run("train_sft.py", *common, "--seed", "1", "--out", tmp_path / "o")
    assert r.returncode == 0 and (tmp_path / "o" / "model.safetensors").is_file(), r.stderr
    r = run("train_sft.py", *common, "--market-seed", "1", "--out", tmp_path / "p")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "holds the market of lang en, seed 0, not en, seed 1; give --lang en (and --market-seed 0)" in r.stderr
    assert not (tmp_path / "p").exists() and {p.name: p.read_bytes() for p in market.iterdir()} == before


HOLD = "import sys; from girl.files import lock_output; assert lock_output(sys.argv[1]) is None; print('held', flush=True); input()"


@pytest.mark.parametrize("script, flag", [("train_ppo.py", "--out-last"), ("generate.py", "--output")])
def test_two_runs_cannot_write_one_output(tmp_path, script, flag):
    """One writer per output: while another process writes it, a second run stops at once, naming the flag and
    the other's pid, and writes nothing; the lock ends with its process (here killed), leaving the output free.
    Every script checks its outputs with the same girl.cli.check_out: a folder (PPO's second one) and a file."""
    target = tmp_path / ("out.jsonl" if script == "generate.py" else "ckpt")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "held\n"
        extra = ["--input", tmp_path / "cvs.jsonl"] if script == "generate.py" else []
        r = run(script, *extra, flag, target, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"error: {flag} {target} is being written by another run (pid {holder.pid})" in r.stderr, r.stderr
        assert not target.exists()
    finally:
        holder.kill()
        holder.wait()
    again = subprocess.run([sys.executable, "-c", HOLD, str(target)], input="\n", capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and again.stdout == "held\n", again.stderr


# ----------------------------------------------------------------------------- damaged checkpoint folders

@pytest.fixture(scope="module")
def g_folder(tmp_path_factory):
    """A tiny G as the scripts save it: config.json, model.safetensors, tokenizer files, train_args.json."""
    import torch
    from girl.lm.checkpoint import save_model
    from girl.lm.model import Config, Transformer
    from girl.lm.tokenizer import Tokenizer
    tok = Tokenizer.train(["Name: A\nSkills: Python", "Role: Data Analyst"], 300)
    torch.manual_seed(0)
    G = Transformer(Config(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                           max_seq_len=256, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    d = tmp_path_factory.mktemp("g") / "g"
    save_model(d, G, tok, args=argparse.Namespace(lang="en"))
    return d


def damaged(g_folder, tmp_path, name, change):
    folder = tmp_path / "g"
    shutil.copytree(g_folder, folder)
    path = folder / name
    path.write_text(change(path.read_text()) if callable(change) else change)
    return folder


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", "32", "hidden_size is '32'; it must be a whole number >= 1"),
    ("num_hidden_layers", 0, "num_hidden_layers is 0; it must be a whole number >= 1"),
    ("vocab_size", True, "vocab_size is True; it must be a whole number >= 1"),
    ("num_key_value_heads", 3, "num_key_value_heads is 3; it must be a divisor of num_attention_heads (4)"),
    ("rms_norm_eps", -1e-5, "rms_norm_eps is -1e-05; it must be a number > 0"),
    ("rope_theta", "big", "rope_theta is 'big'; it must be a number > 0"),
    ("eos_token_id", 10**6, "eos_token_id is 1000000; it must be null or a token id below vocab_size"),
])
def test_a_config_with_a_wrong_field_names_it(g_folder, tmp_path, field, value, message):
    from girl.files import CheckpointError
    from girl.lm.checkpoint import load_model
    folder = damaged(g_folder, tmp_path, "config.json", lambda t: json.dumps(json.loads(t) | {field: value}))
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{folder / 'config.json'}: {message}")):
        load_model(folder)


def test_a_config_whose_heads_do_not_divide_the_width_is_refused(g_folder, tmp_path):
    from girl.files import CheckpointError
    from girl.lm.checkpoint import load_model
    folder = damaged(g_folder, tmp_path, "config.json", lambda t: json.dumps(
        {k: v for k, v in json.loads(t).items() if k != "head_dim"} | {"num_attention_heads": 6, "num_key_value_heads": 6}))
    with pytest.raises(CheckpointError, match="num_attention_heads is 6; it must be a divisor of hidden_size"):
        load_model(folder)


def test_non_finite_weights_are_refused_naming_the_file_and_tensor(g_folder, tmp_path):
    from safetensors.torch import load_file, save_file
    from girl.files import CheckpointError
    from girl.lm.checkpoint import load_model
    folder = tmp_path / "g"
    shutil.copytree(g_folder, folder)
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{folder / 'model.safetensors'}: tensor model.layers.1.mlp.up_proj.weight "
                                              "holds nan or inf values"):
        load_model(folder)


def test_the_tokenizer_of_another_model_beside_the_weights_is_refused(g_folder, tmp_path):
    """Another tokenizer with the same special tokens and fewer ids fits the embedding table, so only the
    vocabulary save_model records in config.json tells it apart; a folder without that record (as transformers
    writes them) keeps loading with the tokenizer beside it."""
    from girl.files import CheckpointError
    from girl.lm.tokenizer import Tokenizer
    folder = tmp_path / "g"
    shutil.copytree(g_folder, folder)
    own = Tokenizer.from_pretrained(folder)
    foreign = Tokenizer.train(["Role: Nurse\nCity: Lyon", "Skills: triage"], 280)
    assert foreign.vocab_size < own.vocab_size and foreign.eos_token == own.eos_token
    foreign.save_pretrained(folder)
    r = run("generate.py", "--ckpt", folder, "--cv", "Name: A", "--max-new-tokens", "4")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert f"error: {folder / 'tokenizer.json'}: not the tokenizer the weights beside it were trained with" in r.stderr
    with pytest.raises(CheckpointError, match="put back the tokenizer.json saved with the weights"):
        Tokenizer.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("girl_tokenizer_vocab") == own.vocab_digest
    (folder / "config.json").write_text(json.dumps(config))  # as transformers writes it: no record, nothing to check
    assert Tokenizer.from_pretrained(folder).vocab_digest == foreign.vocab_digest


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_a_broken_json_file_of_a_checkpoint_names_file_and_line(g_folder, tmp_path, name):
    from girl.files import CheckpointError
    from girl.lm.checkpoint import load_model
    from girl.lm.tokenizer import Tokenizer
    folder = damaged(g_folder, tmp_path, name, '{\n  "lang": "en",\n  oops\n}')
    with pytest.raises(CheckpointError, match=re.escape(f"{folder / name}:3: not valid JSON at column 3")):
        load_model(folder) if name == "config.json" else Tokenizer.from_pretrained(folder)


def test_a_damaged_file_a_script_reads_outside_a_try_is_one_error_line(g_folder, tmp_path):
    """generate.py reads train_args.json for the language, outside any try: the last resort (sys.excepthook)
    still ends it with exit 2 and one line naming file:line."""
    name = "train_args.json"
    folder = damaged(g_folder, tmp_path, name, '{\n  "lang": "en",\n  oops\n}')
    r = run("generate.py", "--ckpt", folder, "--cv", "Name: A", "--max-new-tokens", "4")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {folder / name}:3: not valid JSON at column 3" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_a_broken_shard_index_is_named(g_folder, tmp_path):
    from girl.files import CheckpointError
    from girl.lm.checkpoint import load_model
    folder = damaged(g_folder, tmp_path, "model.safetensors.index.json", '{"metadata": {}}')
    with pytest.raises(CheckpointError, match=rf"{folder / 'model.safetensors.index.json'}: no weight_map object"):
        load_model(folder)
