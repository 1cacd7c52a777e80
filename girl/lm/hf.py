"""Hugging Face names in and out: config.json <-> Config, and safetensors tensor names <-> our parameters.

One explicit map per family (hf_layout), with the transposes and fused tensors commented. Pure
translation: files are read and written by girl/lm/checkpoint.py.
"""

import torch

from girl.files import CheckpointError
from girl.lm.model import FAMILIES, Config

# ----------------------------------------------------------------------------- config.json

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _rope_theta(hf: dict, where: str) -> float:
    # transformers < 5 writes rope_theta and rope_scaling; transformers >= 5 writes rope_parameters
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise CheckpointError(f"{where}: RoPE scaling {rope_type!r} is not supported (only plain RoPE)")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta) if type(theta) in (int, float) else theta  # anything else: refused by _checked


GPT2_NAMES = {"vocab_size": "vocab_size", "dim": "n_embd", "n_layers": "n_layer", "n_heads": "n_head", "n_kv_heads": "n_head",
              "hidden_dim": "n_inner", "max_seq_len": "n_positions", "norm_eps": "layer_norm_epsilon"}
LLAMA_NAMES = {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
               "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
               "hidden_dim": "intermediate_size", "max_seq_len": "max_position_embeddings", "norm_eps": "rms_norm_eps",
               "rope_theta": "rope_theta"}
SIZES = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len")


def _checked(where: str, names: dict, **fields) -> Config:
    """Config(**fields), once every size is a whole number ≥ 1 (head_dim ≥ 0), eps and θ positive numbers, the
    heads divide as attention needs and the special ids index the vocabulary; else a CheckpointError naming
    config.json's field."""
    def bad(field, what):
        raise CheckpointError(f"{where}: {names.get(field, field)} is {fields[field]!r}; it must be {what}")

    for field in SIZES + ("head_dim",):
        if field in fields and (type(fields[field]) is not int or fields[field] < (field != "head_dim")):
            bad(field, "a whole number >= 1" if field != "head_dim" else "a whole number >= 0")
    for field in ("norm_eps", "rope_theta"):
        v = fields.get(field, 1.0)
        if type(v) not in (int, float) or not 0 < v < float("inf"):
            bad(field, "a number > 0")
    if fields["n_heads"] % fields["n_kv_heads"]:
        bad("n_kv_heads", f"a divisor of {names['n_heads']} ({fields['n_heads']})")
    if not fields.get("head_dim") and fields["dim"] % fields["n_heads"]:
        bad("n_heads", f"a divisor of {names['dim']} ({fields['dim']}), or head_dim must be given")
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = fields.get(field)
        if v is not None and (type(v) is not int or not 0 <= v < fields["vocab_size"]):
            bad(field, f"null or a token id below vocab_size ({fields['vocab_size']})")
    return Config(**fields)


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
        return _checked(where, GPT2_NAMES,
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
    return _checked(where, LLAMA_NAMES,
        model_type=family,
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or 0,
        hidden_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 32768 if family == "qwen2" else 2048),  # transformers' defaults
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf, where),
        tie_embeddings=hf.get("tie_word_embeddings", False),  # LlamaConfig's and Qwen2Config's default
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


def ignorable(name: str, c: Config, score_head: bool) -> bool:
    """Tensors some public checkpoints carry that are not weights, or duplicate a tied one, or (for a reward
    model started from a language model) the LM head it does not use."""
    return (name.endswith((".attn.bias", ".attn.masked_bias"))  # GPT-2's causal-mask buffers
            or name.endswith("rotary_emb.inv_freq")  # old Llama exports saved the RoPE table
            or ((c.tie_embeddings or score_head) and name == "lm_head.weight"))


def hf_name(name: str, c: Config) -> str:
    """The name transformers gives a stored tensor: the original gpt2 checkpoints omit the "transformer."
    prefix that GPT2LMHeadModel adds."""
    if c.gpt2 and not name.startswith(("transformer.", "lm_head.", "score.")):
        return f"transformer.{name}"
    return name


def to_hf(state: dict, c: Config, score_head: bool = False) -> dict:
    """Our state dict as Hugging Face tensors: fused where HF fuses, transposed where HF transposes."""
    tensors = {}
    for hf, names, transposed in hf_layout(c, score_head):
        t = torch.cat([state[n] for n in names], dim=0)
        tensors[hf] = (t.t() if transposed else t).detach().cpu().contiguous()
    return tensors
