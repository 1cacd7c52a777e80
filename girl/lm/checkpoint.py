"""Checkpoints on disk: ordinary Hugging Face folders in and out, and the resumable optimizer state.

    G = load_model("ckpt/sft")                      # a local folder or a hub id ("Qwen/Qwen2.5-0.5B")
    U = load_model("ckpt/rm", RewardModel)          # a *ForSequenceClassification folder with one label
    save_model("ckpt/sft", G, tok, args=args)       # config.json, model.safetensors, tokenizer.json, train_args.json

A checkpoint is an ordinary Hugging Face folder (config.json, model.safetensors or sharded
model.safetensors.index.json, tokenizer.json), so transformers, TRL or vLLM can open what we write.
Weights are read from safetensors only: pickled .bin files can run code when loaded. Every folder is
written whole or not at all (girl/files.py). A model sharded by FSDP2 (`fully_shard`) is saved whole too:
every process calls save_model, the shards are gathered to rank 0, and rank 0 writes.
"""

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

from girl.files import CheckpointError, atomic_dir, plain_file_name, read_json, shard_names, write_json
from girl.lm import hub
from girl.lm.hf import config_from_hf, config_to_hf, hf_layout, hf_name, ignorable, to_hf
from girl.lm.model import Config, RewardModel, Transformer
from girl.lm.tokenizer import VOCAB_KEY

# config.json of a U this project trains: what it was trained to read (girl/reward.py builds it). A U saved before
# U read the shared line (issue 22) lacks it, and would score inputs it never saw
U_READS_KEY, U_READS = "girl_u_reads", "template, shared line, EOS"

__all__ = ["CheckpointError", "load_model", "load_optimizer", "open_folder", "save_model", "train_args"]

# ----------------------------------------------------------------------------- loading

def open_folder(name_or_path) -> tuple[Path, Config, bool]:
    """(folder, config, whether it holds a reward model) of a local folder or hub id."""
    local = Path(name_or_path)
    if not local.exists() and (old := local.with_name(f".{local.name}.old")).is_dir():
        name_or_path = old  # a save killed between its two renames: read the previous version (see files.recover)
    folder = hub.resolve(name_or_path)
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: no config.json; pass a Hugging Face model folder (config.json + model.safetensors)"
        )
    hf = read_json(path)
    try:
        config = config_from_hf(hf, str(path))
    except KeyError as e:
        raise CheckpointError(f"{path}: required field {e.args[0]!r} is missing") from None
    is_reward_model = any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or [])
    if is_reward_model and hf.get("num_labels", len(hf.get("id2label") or {0: 0})) != 1:
        raise CheckpointError(f"{path}: a sequence classifier with several labels is not a reward model (num_labels must be 1)")
    if is_reward_model and VOCAB_KEY in hf and hf.get(U_READS_KEY) != U_READS:
        raise CheckpointError(
            f"{path}: a U this project saved before U read the line of J's tokens that C holds (girl/reward.py, "
            "issue 22); it would score inputs it never saw: train it again with python train_rm.py")
    return folder, config, is_reward_model


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = shard_names(index)
        if bad := [s for s in shards if not plain_file_name(s)]:
            raise CheckpointError(f"{index}: shard {bad[0]!r} is not a file name inside {folder}; refusing to read it")
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


def load_state_dict(folder, c: Config, expected_shapes: dict, score_head: bool = False) -> dict:
    """Read the safetensors of `folder` into a state dict under our names, checked against the model.

    score_head: for a RewardModel, whose head is stored as "score".
    """
    folder = Path(folder)
    files = _weight_files(folder)
    tensors, where = {}, {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    key = hf_name(name, c)
                    tensors[key], where[key] = f.get_tensor(name), path.name
                    if tensors[key].is_floating_point() and not torch.isfinite(tensors[key]).all():
                        raise CheckpointError(f"{path}: tensor {name} holds nan or inf values: these weights are damaged "
                                              "(a diverged run, a bad conversion); load an earlier checkpoint")
        except SafetensorError as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it was probably cut short by an "
                                  "interrupted download or copy: fetch or copy it again") from None
    layout = hf_layout(c, score_head)
    known = {hf for hf, _, _ in layout}
    missing = sorted(known - tensors.keys())
    unexpected = sorted(k for k in tensors.keys() - known if not ignorable(k, c, score_head))
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


def load_model(name_or_path, cls=Transformer, dtype=None, device=None):
    """A Transformer (G) or a RewardModel (U) from a local Hugging Face folder or a hub id.

    Default dtype: float32 on CPU, bfloat16 on CUDA. A RewardModel needs a reward model's folder; to start
    U from a language model, use RewardModel.from_generator(load_model(folder)).
    """
    folder, config, holds_reward_model = open_folder(name_or_path)
    score_head = cls is RewardModel
    if holds_reward_model != score_head:
        raise CheckpointError(
            f"{folder} holds a reward model (...ForSequenceClassification); open it with load_model(path, RewardModel)"
            if holds_reward_model else
            f"{folder} holds a language model, not a reward model (no ...ForSequenceClassification in config.json): "
            "pass U's folder, as train_rm.py writes it")
    device = torch.device(device or "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):  # no time spent on a random init that is overwritten at once
        model = cls(config)
    expected = {name: t.shape for name, t in model.state_dict().items()}
    state = load_state_dict(folder, config, expected, score_head=score_head)
    state = {name: t.to(device=device, dtype=dtype) for name, t in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    (model.backbone if score_head else model).tie_weights()  # assign=True replaced a shared Parameter by two
    return model.eval()


def load_optimizer(folder, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore what save_model(..., optimizer, state) wrote into a freshly built optimizer; return `state`."""
    folder = Path(folder)
    try:
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (SafetensorError, FileNotFoundError) as e:
        raise CheckpointError(f"{folder / 'optimizer.safetensors'}: no readable optimizer state ({e}); this folder "
                              "cannot be resumed: run without --resume, or point --out-last at a whole state") from None
    slots = {}  # parameter name -> {slot: tensor}
    for key, value in tensors.items():
        name, slot = key.split("::")
        slots.setdefault(name, {})[slot] = value
    if is_sharded(model):  # every process reads the whole state and keeps its shard
        groups = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))["param_groups"]
        set_optimizer_state_dict(model, optimizer, {"state": slots, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True))
    else:
        params = dict(model.named_parameters())
        for name, values in slots.items():
            p = params[name]
            for slot, value in values.items():
                optimizer.state[p][slot] = value.to(p.device) if slot != "step" else value
    return read_json(folder / "trainer_state.json")


# ----------------------------------------------------------------------------- saving

def save_model(folder, model, tokenizer=None, args=None, metrics: dict | None = None,
               optimizer: torch.optim.Optimizer | None = None, state: dict | None = None, files: dict | None = None):
    """Write a whole checkpoint folder, atomically: config.json + model.safetensors under Hugging Face names,
    the tokenizer, train_args.json (vars(args)), metrics.json, and with an optimizer the resumable state
    (AdamW's moments as safetensors under parameter names, the loop's counters as trainer_state.json; no
    pickles). `files`: more files to put in, name -> bytes.
    A model sharded by FSDP2: every process must call this; the shards are gathered and rank 0 writes.
    """
    weights, moments = whole_state(model, optimizer)
    if weights is None:  # a process other than rank 0 of a sharded model: its part is done
        return
    with atomic_dir(folder) as tmp:
        score_head = isinstance(model, RewardModel)
        dtype = next(model.parameters()).dtype
        save_file(to_hf(weights, model.config, score_head), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        vocab = {VOCAB_KEY: tokenizer.vocab_digest} if tokenizer is not None else {}  # which tokenizer the rows are of
        reads = {U_READS_KEY: U_READS} if score_head and tokenizer is not None else {}
        write_json(tmp / "config.json", config_to_hf(model.config, dtype, score_head) | vocab | reads)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if args is not None:
            write_json(tmp / "train_args.json", vars(args))
        if metrics is not None:
            write_json(tmp / "metrics.json", metrics)
        if moments is not None:
            save_file(moments, str(tmp / "optimizer.safetensors"))
            write_json(tmp / "trainer_state.json", state)
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 split the model's parameters over processes (they are DTensors)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def whole_state(model, optimizer=None) -> tuple[dict | None, dict | None]:
    """The weights under our names and AdamW's moments under "name::slot" (None without an optimizer), as whole
    tensors on the CPU. A sharded model's are gathered to rank 0: every process must call this, and the others
    get (None, None)."""
    if is_sharded(model):
        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=whole)  # on rank 0; {} on the others
        slots = get_optimizer_state_dict(model, optimizer, options=whole).get("state") if optimizer else None
        if torch.distributed.get_rank() != 0:
            return None, None
        moments = None if optimizer is None else {f"{name}::{slot}": value.contiguous() for name, values in slots.items()
                                                  for slot, value in values.items()}
        return weights, moments
    weights = model.state_dict()
    if optimizer is None:
        return weights, None
    names = {id(p): n for n, p in model.named_parameters()}
    return weights, {f"{names[id(p)]}::{key}": value.detach().cpu().contiguous().reshape(value.shape)
                     for group in optimizer.param_groups for p in group["params"]
                     for key, value in optimizer.state.get(p, {}).items()}


def train_args(folder) -> dict:
    """The train_args.json a training script saved beside its model ({} if there is none)."""
    f = Path(folder) / "train_args.json"
    return read_json(f) if f.is_file() else {}
