"""Hugging Face folders in and out: config.json <-> Config, safetensors names <-> our parameter names.

A checkpoint is an ordinary Hugging Face folder (config.json, model.safetensors or sharded
model.safetensors.index.json, tokenizer.json), so transformers, TRL or vLLM can open what we write.
Weights are read from safetensors only: pickled .bin files can run code when loaded.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from girl.model import FAMILIES, Config


class CheckpointError(ValueError):
    """A folder or file that cannot be loaded; the message names it and says what to do."""


# ----------------------------------------------------------------------------- config.json

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _rope_theta(hf: dict, where: str) -> float:
    # transformers < 5 writes rope_theta and rope_scaling; transformers >= 5 writes rope_parameters
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise CheckpointError(f"{where}: RoPE scaling {rope_type!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, where: str = "config.json") -> Config:
    """Translate a Hugging Face config dict; refuse the options this implementation does not have."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(
            f"{where}: model_type {family!r} is not supported; this loader knows {', '.join(FAMILIES)}"
        )

    def unsupported(field, value):
        raise CheckpointError(f"{where}: {field}={value!r} is not supported for {family}")

    ids = {k: hf.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    for k, v in ids.items():  # some configs list several stop tokens; the first is the one we use
        ids[k] = v[0] if isinstance(v, list) and v else v
    if family == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            unsupported("activation_function", hf["activation_function"])
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(flag):
                unsupported(flag, hf[flag])
        if hf.get("scale_attn_weights") is False:
            unsupported("scale_attn_weights", False)
        return Config(
            model_type="gpt2",
            vocab_size=hf["vocab_size"],
            dim=hf["n_embd"],
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            n_kv_heads=hf["n_head"],
            hidden_dim=hf.get("n_inner") or 4 * hf["n_embd"],
            max_seq_len=hf.get("n_positions", 1024),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            **ids,
        )
    if hf.get("hidden_act", "silu") != "silu":
        unsupported("hidden_act", hf["hidden_act"])
    for flag in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(flag):
            unsupported(flag, hf[flag])
    return Config(
        model_type=family,
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or 0,
        hidden_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf, where),
        tie_embeddings=hf.get("tie_word_embeddings", family == "qwen2"),
        **ids,
    )


def config_to_hf(c: Config, dtype: torch.dtype = torch.float32, score_head: bool = False) -> dict:
    ids = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id}
    architecture = ARCHITECTURES[c.model_type]
    if score_head:  # a reward model: transformers' sequence classifier with one label
        architecture = architecture.replace("LMHeadModel", "ForSequenceClassification").replace(
            "ForCausalLM", "ForSequenceClassification")
        ids |= {"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    common = {"architectures": [architecture], "model_type": c.model_type,
              "vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings,
              "torch_dtype": str(dtype).removeprefix("torch."), **ids}
    if c.gpt2:
        return {**common, "n_embd": c.dim, "n_layer": c.n_layers, "n_head": c.n_heads,
                "n_inner": c.hidden_dim, "n_positions": c.max_seq_len, "layer_norm_epsilon": c.norm_eps,
                "activation_function": "gelu_new", "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0}
    return {**common, "hidden_size": c.dim, "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
            "intermediate_size": c.hidden_dim, "max_position_embeddings": c.max_seq_len,
            "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "hidden_act": "silu",
            "attention_bias": False, "attention_dropout": 0.0}


def open_folder(name_or_path) -> tuple[Path, Config, bool]:
    """(folder, config, whether it holds a reward model) of a local folder or hub id."""
    from girl import hub

    folder = hub.resolve(name_or_path)
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: no config.json; pass a Hugging Face model folder (config.json + model.safetensors)"
        )
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    try:
        config = config_from_hf(hf, str(path))
    except KeyError as e:
        raise CheckpointError(f"{path}: required field {e.args[0]!r} is missing") from None
    is_reward_model = any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or [])
    if is_reward_model and hf.get("num_labels", len(hf.get("id2label") or {0: 0})) != 1:
        raise CheckpointError(f"{path}: a sequence classifier with several labels is not a reward model (num_labels must be 1)")
    return folder, config, is_reward_model


# ----------------------------------------------------------------------------- weight names

def hf_layout(c: Config, score_head: bool = False) -> list[tuple[str, list[str], bool]]:
    """(HF name, our names, transposed) for every stored tensor.

    An HF tensor maps to one of ours, or to several concatenated along dim 0. `transposed` marks GPT-2's
    Conv1D layers, which store the weight as [in, out], the transpose of nn.Linear's [out, in].
    score_head: a RewardModel, whose backbone is stored as the LM's without its head, plus "score".
    """
    if score_head:
        layout = [(hf, [f"backbone.{n}" for n in ours], t) for hf, ours, t in hf_layout(c) if hf != "lm_head.weight"]
        return layout + [("score.weight", ["head.weight"], False)]
    layout = []
    if c.gpt2:
        layout += [("transformer.wte.weight", ["tok_emb.weight"], False),
                   ("transformer.wpe.weight", ["pos_emb.weight"], False)]
        for i in range(c.n_layers):
            hf, us = f"transformer.h.{i}.", f"layers.{i}."
            for p in ("weight", "bias"):
                layout += [
                    (hf + f"ln_1.{p}", [us + f"attn_norm.{p}"], False),
                    # c_attn is q, k and v fused along the output dimension
                    (hf + f"attn.c_attn.{p}", [us + f"attn.{x}.{p}" for x in "qkv"], p == "weight"),
                    (hf + f"attn.c_proj.{p}", [us + f"attn.o.{p}"], p == "weight"),
                    (hf + f"ln_2.{p}", [us + f"mlp_norm.{p}"], False),
                    (hf + f"mlp.c_fc.{p}", [us + f"mlp.up.{p}"], p == "weight"),
                    (hf + f"mlp.c_proj.{p}", [us + f"mlp.down.{p}"], p == "weight"),
                ]
        layout += [("transformer.ln_f.weight", ["norm.weight"], False),
                   ("transformer.ln_f.bias", ["norm.bias"], False)]
    else:  # llama and qwen2 share one layout; qwen2 adds q/k/v biases
        layout.append(("model.embed_tokens.weight", ["tok_emb.weight"], False))
        for i in range(c.n_layers):
            hf, us = f"model.layers.{i}.", f"layers.{i}."
            layout.append((hf + "input_layernorm.weight", [us + "attn_norm.weight"], False))
            layout += [(hf + f"self_attn.{x}_proj.weight", [us + f"attn.{x}.weight"], False) for x in "qkvo"]
            if c.qkv_bias:
                layout += [(hf + f"self_attn.{x}_proj.bias", [us + f"attn.{x}.bias"], False) for x in "qkv"]
            layout.append((hf + "post_attention_layernorm.weight", [us + "mlp_norm.weight"], False))
            layout += [(hf + f"mlp.{x}_proj.weight", [us + f"mlp.{x}.weight"], False) for x in ("gate", "up", "down")]
        layout.append(("model.norm.weight", ["norm.weight"], False))
    if not c.tie_embeddings:
        layout.append(("lm_head.weight", ["lm_head.weight"], False))
    return layout


def _ignorable(name: str, c: Config, score_head: bool) -> bool:
    """Tensors some public checkpoints carry that are not weights, or duplicate a tied one, or (for a reward
    model started from a language model) the LM head it does not use."""
    return (name.endswith((".attn.bias", ".attn.masked_bias"))  # GPT-2's causal-mask buffers
            or name.endswith("rotary_emb.inv_freq")  # old Llama exports saved the RoPE table
            or ((c.tie_embeddings or score_head) and name == "lm_head.weight"))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard files missing from the folder: {', '.join(missing)}")
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
    hint = (f" It has {', '.join(pickles)}: pickles are never loaded; convert them to safetensors first."
            if pickles else "")
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json.{hint}")


def load_state_dict(folder, c: Config, expected_shapes: dict, score_head: bool = False,
                    head_optional: bool = False) -> dict:
    """Read the safetensors of `folder` into a state dict under our names, checked against the model.

    score_head: for a RewardModel; head_optional: the folder is a language model, so "score" is absent.
    """
    folder = Path(folder)
    files = _weight_files(folder)
    tensors, where = {}, {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                # The original gpt2 checkpoints omit the "transformer." prefix that GPT2LMHeadModel adds
                key = f"transformer.{name}" if c.gpt2 and not name.startswith(("transformer.", "lm_head.", "score.")) else name
                tensors[key], where[key] = f.get_tensor(name), path.name
    layout = hf_layout(c, score_head)
    if head_optional and "score.weight" not in tensors:
        layout = layout[:-1]
    known = {hf for hf, _, _ in layout}
    missing = sorted(known - tensors.keys())
    unexpected = sorted(k for k in tensors.keys() - known if not _ignorable(k, c, score_head))
    if missing or unexpected:
        def some(names):
            return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        problems = ([f"missing {len(missing)}: {some(missing)}"] if missing else []) + (
            [f"unexpected {len(unexpected)}: {some(unexpected)}"] if unexpected else [])
        raise CheckpointError(
            f"{folder}: the tensors do not match what config.json ({c.model_type}, {c.n_layers} layers) "
            f"describes; {'; '.join(problems)}. Check that config.json belongs to these weights."
        )
    state = {}
    for hf, ours, transposed in layout:
        t = tensors[hf].t() if transposed else tensors[hf]
        want = sum(expected_shapes[n][0] for n in ours), *expected_shapes[ours[0]][1:]
        if tuple(t.shape) != tuple(want):
            stored = tuple(tensors[hf].shape)
            raise CheckpointError(
                f"{folder / where[hf]}: tensor {hf} has shape {stored}, but config.json implies "
                f"{tuple(reversed(want)) if transposed else tuple(want)}. Check that config.json belongs to these weights."
            )
        state.update(zip(ours, t.split([expected_shapes[n][0] for n in ours], dim=0)))
    if c.tie_embeddings and "lm_head.weight" in expected_shapes:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


# ----------------------------------------------------------------------------- saving

def write_json(path, obj):
    """Write JSON through a temporary file and a rename, so a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save(model, out_dir):
    """config.json + model.safetensors under Hugging Face names (each file written atomically)."""
    from girl.model import RewardModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    score_head = isinstance(model, RewardModel)
    ours = model.state_dict()
    tensors = {}
    for hf, names, transposed in hf_layout(c, score_head):
        t = torch.cat([ours[n] for n in names], dim=0)
        tensors[hf] = (t.t() if transposed else t).detach().cpu().contiguous()
    dtype = next(model.parameters()).dtype
    tmp = out / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    write_json(out / "config.json", config_to_hf(c, dtype, score_head))


@contextmanager
def atomic_dir(out_dir):
    """Build a checkpoint folder in a temporary sibling and move it into place only when complete.

        with atomic_dir("ckpt/sft") as tmp:
            model.save_pretrained(tmp); tokenizer.save_pretrained(tmp)

    An interrupted save leaves the previous checkpoint untouched (and a .tmp-* folder to delete).
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
