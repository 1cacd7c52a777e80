"""Make the tiny reference models the parity tests compare against, with Hugging Face transformers.

    pip install transformers && python tests/make_fixtures.py

Run once; its outputs are committed, so the test suite itself never needs transformers. For each family
it builds a random tiny model (norms and biases perturbed too, so a wrong bias cannot hide), saves it as
an ordinary HF folder under tests/fixtures/tiny-<family>/, and stores transformers' logits for a batch
without padding, with left padding and with right padding in reference_logits.safetensors.

Reward models: a tiny *ForSequenceClassification (num_labels 1) of each family under
tests/fixtures/tiny-<family>-rm/, with transformers' scores for a right- and a left-padded batch.

It then checks the other direction: folders written by girl's save_model open in
transformers.AutoModelForCausalLM (or AutoModelForSequenceClassification) and give girl's logits
(scores). It exits non-zero if any check fails.
"""

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from girl.lm.checkpoint import load_model, save_model
from girl.lm.model import Config, RewardModel, Transformer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB, T = 96, 12
CONFIGS = {
    # grouped-query attention (4 query heads share 2 kv heads), untied embeddings
    "llama": transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
        tie_word_embeddings=False),
    # q/k/v biases, tied embeddings, also GQA
    "qwen2": transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=True),
    "gpt2": transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0,
        attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0),
}
LENGTHS = [T, 7, 4]  # real tokens per row in the padded batches


def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(LENGTHS), T), generator=g)
    left = torch.zeros_like(ids)
    right = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        left[i, T - n:] = 1
        right[i, :n] = 1
    return ids, left, right


def hf_logits(model, ids, mask=None):
    # transformers counts positions from 0 at column 0 unless told; under left padding we tell it
    # to count real tokens, which is what generation does and what girl does by default
    positions = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def perturb(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norm weights start at 1 and biases at 0: make both informative
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def make(family: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[family]).eval()
    perturb(model, seed)
    out = FIXTURES / f"tiny-{family}"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)
    ids, left, right = inputs(seed)
    save_file({
        "input_ids": ids, "left_mask": left, "right_mask": right,
        "logits": hf_logits(model, ids).contiguous(),
        "left_logits": hf_logits(model, ids, left).contiguous(),
        "right_logits": hf_logits(model, ids, right).contiguous(),
    }, str(out / "reference_logits.safetensors"))
    print(f"{family}: wrote {out} ({sum(p.numel() for p in model.parameters())} parameters)")


PAD = 0  # transformers' sequence classifier finds each row's last token by this id, so real tokens avoid it


def reward_inputs(seed: int):
    ids, left, right = inputs(seed)
    ids = ids.clamp(min=1)
    return ids.masked_fill(right == 0, PAD), ids.masked_fill(left == 0, PAD), left, right


def hf_scores(model, ids, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.squeeze(-1)


def make_reward_model(family: str, seed: int) -> None:
    torch.manual_seed(seed)
    config = CONFIGS[family].__class__.from_dict({**CONFIGS[family].to_dict(), "num_labels": 1, "pad_token_id": PAD})
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    perturb(model, seed)
    out = FIXTURES / f"tiny-{family}-rm"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)
    right_ids, left_ids, left, right = reward_inputs(seed)
    save_file({"right_ids": right_ids, "right_mask": right, "left_ids": left_ids, "left_mask": left,
               "right_scores": hf_scores(model, right_ids, right).contiguous(),
               "left_scores": hf_scores(model, left_ids, left).contiguous()},
              str(out / "reference_scores.safetensors"))
    print(f"{family} reward model: wrote {out}")


def check_reward_roundtrip(model: RewardModel, name: str) -> float:
    right_ids, left_ids, left, right = reward_inputs(0)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(tmp, model)
        theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp, dtype=torch.float32).eval()
        err = 0.0
        for ids, mask in ((right_ids, right), (left_ids, left)):
            with torch.no_grad():
                ours = model(ids, attention_mask=mask)
            err = max(err, (ours - hf_scores(theirs, ids, mask)).abs().max().item())
    print(f"{name}: girl save_model(RewardModel) -> transformers, max |Δscore| = {err:.2e}")
    return err


def check_roundtrip(model: Transformer, name: str) -> float:
    """Save with girl, open with transformers, compare logits at every real position."""
    ids, left, _ = inputs(0)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(tmp, model)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        err = 0.0
        for mask in (None, left):
            with torch.no_grad():
                ours = model(ids, attention_mask=mask)
            diff = (ours - hf_logits(theirs, ids, mask)).abs()
            if mask is not None:
                diff = diff[mask.bool()]
            err = max(err, diff.max().item())
    print(f"{name}: girl save_model -> transformers, max |Δlogit| = {err:.2e}")
    return err


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for seed, family in enumerate(CONFIGS, start=1):
        make(family, seed)
        make_reward_model(family, seed + 10)
    errors = []
    for family in CONFIGS:
        errors.append(check_roundtrip(load_model(FIXTURES / f"tiny-{family}"), f"tiny-{family}"))
        # a model girl initialised itself (the path a from-scratch SFT run takes)
        torch.manual_seed(0)
        scratch = Transformer(Config(model_type=family, vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                     n_kv_heads=4 if family == "gpt2" else 2, hidden_dim=64, max_seq_len=64,
                                     tie_embeddings=family != "llama")).eval()
        perturb(scratch, 0)
        errors.append(check_roundtrip(scratch, f"scratch-{family}"))
        errors.append(check_reward_roundtrip(load_model(FIXTURES / f"tiny-{family}-rm", RewardModel),
                                             f"tiny-{family}-rm"))
        torch.manual_seed(0)
        scratch_rm = RewardModel(replace(scratch.config, pad_token_id=PAD)).eval()
        perturb(scratch_rm, 0)
        errors.append(check_reward_roundtrip(scratch_rm, f"scratch-{family}-rm"))
    if max(errors) > 1e-4:
        sys.exit(f"FAILED: max |Δlogit| {max(errors):.2e} > 1e-4")
    print("all round trips agree")


if __name__ == "__main__":
    main()
