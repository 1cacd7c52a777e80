"""The transformer agrees with Hugging Face's reference on tiny random models of every family it claims,
and its checkpoint loader says clearly what is wrong with a bad folder."""

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from girl.files import CheckpointError, atomic_dir
from girl.lm.checkpoint import load_model, save_model

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ["llama", "qwen2", "gpt2"]


def reference(family):
    return load_file(str(FIXTURES / f"tiny-{family}" / "reference_logits.safetensors"))


def tolerance(family) -> float:
    """How far float32 logits may be from transformers' float32 logits: 1e-5 of the largest |logit|.

    Both sides run the same float32 arithmetic; only the order of additions can differ (sdpa against eager
    attention, fused against unfused ops), which moves a 2-layer model's output by a few units of float32's
    1.2e-7 relative rounding per layer. llama and qwen2 agree to 0 here and gpt2 to 4e-8 (tanh-GELU and
    LayerNorm kernels), under 1e-5 · ~0.5 = ~5e-6 with room for another torch build. Wrong arithmetic is
    far above it: an RMSNorm eps outside the square root moves qwen2's logits by 2.6e-4."""
    return 1e-5 * reference(family)["logits"].abs().max().item()


def copy_fixture(family, tmp_path) -> Path:
    dest = tmp_path / family
    shutil.copytree(FIXTURES / f"tiny-{family}", dest)
    (dest / "reference_logits.safetensors").unlink()
    return dest


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family):
    ref = reference(family)
    model = load_model(FIXTURES / f"tiny-{family}")
    with torch.no_grad():
        logits = model(ref["input_ids"])
    assert logits.shape == ref["logits"].shape
    assert (logits - ref["logits"]).abs().max().item() <= tolerance(family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_logits_match_transformers(family, side):
    ref = reference(family)
    mask = ref[f"{side}_mask"]
    model = load_model(FIXTURES / f"tiny-{family}")
    with torch.no_grad():
        logits = model(ref["input_ids"], attention_mask=mask)
    assert torch.isfinite(logits).all()  # padding queries must not produce NaN
    real = mask.bool()
    assert (logits[real] - ref[f"{side}_logits"][real]).abs().max().item() <= tolerance(family)


def test_left_padded_row_equals_the_row_alone():
    ref = reference("llama")
    model = load_model(FIXTURES / "tiny-llama")
    mask = ref["left_mask"]
    with torch.no_grad():
        batch = model(ref["input_ids"], attention_mask=mask)
        for i in range(len(mask)):
            real = mask[i].bool()
            alone = model(ref["input_ids"][i : i + 1, real])[0]
            assert (batch[i, real] - alone).abs().max().item() <= 1e-5


def test_families_differ_as_documented():
    llama, qwen2, gpt2 = (load_model(FIXTURES / f"tiny-{f}") for f in FAMILIES)
    assert llama.lm_head.weight is not llama.tok_emb.weight  # untied
    assert qwen2.lm_head.weight is qwen2.tok_emb.weight and gpt2.lm_head.weight is gpt2.tok_emb.weight
    assert llama.config.n_kv_heads < llama.config.n_heads  # the fixture exercises GQA
    assert qwen2.layers[0].attn.q.bias is not None and qwen2.layers[0].attn.o.bias is None
    assert llama.layers[0].attn.q.bias is None and gpt2.layers[0].mlp.gate is None
    assert gpt2.pos_emb is not None and llama.pos_emb is None


def test_config_defaults_are_transformers_defaults():
    """A key a config.json leaves out takes the value transformers' LlamaConfig / Qwen2Config / GPT2Config give it
    (tie_word_embeddings: False, False, True; max_position_embeddings 2048, 32768; n_positions 1024)."""
    from girl.lm.hf import config_from_hf

    llama = dict(model_type="llama", vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32)
    for family, tied, positions in (("llama", False, 2048), ("qwen2", False, 32768)):
        c = config_from_hf({**llama, "model_type": family})
        assert (c.tie_embeddings, c.max_seq_len, c.norm_eps) == (tied, positions, 1e-6), family
    c = config_from_hf(dict(model_type="gpt2", vocab_size=32, n_embd=16, n_layer=1, n_head=2))
    assert (c.tie_embeddings, c.max_seq_len, c.norm_eps) == (True, 1024, 1e-5)


def test_an_untied_qwen2_without_the_key_reads_its_lm_head(tmp_path):
    """A Qwen2 checkpoint with its own lm_head.weight whose config.json does not say tie_word_embeddings is untied
    (transformers' default): its logits are those of the same checkpoint saying "tie_word_embeddings": false,
    not those of the tied embeddings with lm_head.weight dropped."""
    d = copy_fixture("qwen2", tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    torch.manual_seed(0)
    tensors["lm_head.weight"] = torch.randn_like(tensors["model.embed_tokens.weight"])
    save_file(tensors, str(d / "model.safetensors"))
    config = json.loads((d / "config.json").read_text())
    ids = reference("qwen2")["input_ids"]
    logits = {}
    for name, tie in (("explicit", {"tie_word_embeddings": False}), ("left out", {})):
        (d / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "tie_word_embeddings"} | tie))
        with torch.no_grad():
            logits[name] = load_model(d)(ids)
    assert torch.equal(logits["left out"], logits["explicit"])
    with torch.no_grad():  # and they are not the tied model's
        assert not torch.allclose(logits["explicit"], load_model(FIXTURES / "tiny-qwen2")(ids))


def test_default_dtype_and_explicit_dtype():
    model = load_model(FIXTURES / "tiny-qwen2")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    half = load_model(FIXTURES / "tiny-qwen2", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.lm_head.weight is half.tok_emb.weight


@pytest.mark.parametrize("family", FAMILIES)
def test_save_model_round_trip(family, tmp_path):
    src = FIXTURES / f"tiny-{family}"
    model = load_model(src)
    out = tmp_path / "out"
    save_model(out, model)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(src / "model.safetensors"), "pt") as a, safe_open(str(out / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())  # the same Hugging Face names
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
    ref = reference(family)
    again = load_model(out)
    with torch.no_grad():
        assert torch.equal(model(ref["input_ids"]), again(ref["input_ids"]))


def test_sharded_checkpoint(tmp_path):
    folder = copy_fixture("llama", tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
        weight_map |= {k: shard for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ref = reference("llama")
    with torch.no_grad():
        logits = load_model(folder)(ref["input_ids"])
    assert (logits - ref["logits"]).abs().max().item() <= tolerance("llama")

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_model(folder)


def test_openai_gpt2_layout(tmp_path):
    """The original gpt2 checkpoints have no "transformer." prefix and carry causal-mask buffers."""
    folder = copy_fixture("gpt2", tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    renamed["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    save_file(renamed, str(folder / "model.safetensors"))
    ref = reference("gpt2")
    with torch.no_grad():
        logits = load_model(folder)(ref["input_ids"])
    assert (logits - ref["logits"]).abs().max().item() <= tolerance("gpt2")


# ----------------------------------------------------------------------------- bad input

def edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def edit_tensors(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def test_unknown_model_type(tmp_path):
    folder = copy_fixture("llama", tmp_path)
    edit_config(folder, model_type="mamba")
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'mamba' is not supported.*gpt2, llama, qwen2"):
        load_model(folder)


def test_unsupported_option(tmp_path):
    folder = copy_fixture("llama", tmp_path)
    edit_config(folder, rope_scaling={"rope_type": "llama3", "factor": 8.0}, rope_parameters=None)
    with pytest.raises(CheckpointError, match="RoPE scaling 'llama3' is not supported"):
        load_model(folder)


def test_missing_config(tmp_path):
    folder = copy_fixture("llama", tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=f"{folder}: no config.json"):
        load_model(folder)


def test_missing_config_field(tmp_path):
    folder = copy_fixture("llama", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["hidden_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json: required field 'hidden_size' is missing"):
        load_model(folder)


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    folder = copy_fixture("llama", tmp_path)

    def damage(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.2.mlp.up_proj.weight"] = torch.zeros(1)

    edit_tensors(folder, damage)
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    assert "missing 1: model.layers.1.mlp.up_proj.weight" in str(e.value)
    assert "unexpected 1: model.layers.2.mlp.up_proj.weight" in str(e.value)


@pytest.mark.parametrize("family, change, message", [
    ("qwen2", {"intermediate_size": 48},
     r"model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape \(64, 32\), but config.json "
     r"implies \(48, 32\)"),
    # GPT-2's Conv1D weights are reported in their stored [in, out] layout, as the file has them
    ("gpt2", {"n_inner": 48},
     r"model.safetensors: tensor transformer.h.0.mlp.c_fc.weight has shape \(32, 128\), but config.json "
     r"implies \(32, 48\)"),
])
def test_shape_mismatch_names_tensor_and_file(family, change, message, tmp_path):
    folder = copy_fixture(family, tmp_path)
    edit_config(folder, **change)
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)


@pytest.mark.parametrize("keep", [0.5, 4 / 1000])
def test_weights_cut_short_name_the_file(tmp_path, keep):
    """An interrupted download or copy leaves the first part of model.safetensors: a clear error that names the
    file and says to fetch it again, not safetensors' own traceback."""
    folder = copy_fixture("llama", tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: max(2, int(len(data) * keep))])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file .*fetch or copy it again"):
        load_model(folder)


def test_pickles_are_refused(tmp_path):
    folder = copy_fixture("llama", tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: pickles are never loaded"):
        load_model(folder)


def test_atomic_dir_keeps_old_checkpoint_on_crash(tmp_path):
    model = load_model(FIXTURES / "tiny-llama")
    save_model(tmp_path / "ckpt", model)
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "ckpt") as out:
            (out / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folders left behind


def test_a_save_killed_between_its_renames_is_recovered(tmp_path):
    """The one instant atomic_dir cannot make atomic: the old folder renamed to .ckpt.old, the new one not yet in
    place (and a half-written .ckpt.tmp-* beside). Loading reads the old version; the next save restores it first,
    then replaces it, and leaves no debris."""
    model = load_model(FIXTURES / "tiny-llama")
    save_model(tmp_path / "ckpt", model)
    (tmp_path / "ckpt").rename(tmp_path / ".ckpt.old")
    (tmp_path / ".ckpt.tmp-abc").mkdir()
    (tmp_path / ".ckpt.tmp-abc" / "model.safetensors").write_bytes(b"half")
    again = load_model(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    save_model(tmp_path / "ckpt", again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


KILLED_SAVER = """
import sys, torch
from girl.lm.checkpoint import load_model, save_model
model = load_model(sys.argv[1])
base = [p.detach().clone() for p in model.parameters()]
for i in range(10**9):  # version i % 2: every weight times 1 or times 2
    with torch.no_grad():
        for p, b in zip(model.parameters(), base):
            p.copy_(b * (1 + i % 2))
    save_model(sys.argv[2], model)
    print("saved", flush=True)
"""


def test_kill_9_at_any_moment_of_saving_leaves_a_whole_checkpoint(tmp_path):
    """A real process saves a checkpoint over and over, alternating two versions, and is killed with SIGKILL at
    6 seeded moments: each time the folder loads and holds one version whole, never a mix or a torn file."""
    model = load_model(FIXTURES / "tiny-llama")
    base = [p.detach().clone() for p in model.parameters()]
    rng = random.Random(0)
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(FIXTURES / "tiny-llama"), str(tmp_path / "ckpt")],
                                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        assert proc.stdout.readline() == "saved\n"  # at least one whole save exists
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        proc.wait(timeout=30)
        loaded = list(load_model(tmp_path / "ckpt").parameters())
        factor = (loaded[0] / base[0]).flatten()[0].round().item()
        assert factor in (1, 2), attempt
        assert all(torch.equal(p, b * factor) for p, b in zip(loaded, base)), attempt
