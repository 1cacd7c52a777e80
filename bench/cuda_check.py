"""Check girl on a CUDA GPU: the parity and known-answer checks of the test suite, run on the device.

    python bench/cuda_check.py            # --device cpu rehearses it without a GPU

The test suite runs on CPU (CI has no GPU); this script repeats its key comparisons on CUDA, in float32
(SDPA's GPU kernels sum in another order than the CPU's) and in the bfloat16 default. Exits non-zero
if a float32 check fails; bfloat16 differences are reported, not judged (bf16 keeps ~3 significant digits).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from stories260k import BOS, decode, load_llama2c, load_pieces  # noqa: E402

from girl.lm.checkpoint import load_model  # noqa: E402
from girl.lm.sampling import generate  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
DEV = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda"
failures = []


def check(what, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {what} {detail}")
    if not ok:
        failures.append(what)


torch.backends.cuda.matmul.allow_tf32 = False  # float32 checks mean float32
torch.backends.cudnn.allow_tf32 = False
print(torch.cuda.get_device_name() if DEV == "cuda" else DEV, "torch", torch.__version__)
for family in ("llama", "qwen2", "gpt2"):
    ref = load_file(str(FIXTURES / f"tiny-{family}" / "reference_logits.safetensors"))
    ids = ref["input_ids"].to(DEV)
    fp32 = load_model(FIXTURES / f"tiny-{family}", dtype=torch.float32, device=DEV)
    with torch.no_grad():
        err = (fp32(ids).cpu() - ref["logits"]).abs().max().item()
        mask = ref["left_mask"]
        left = fp32(ids, attention_mask=mask.to(DEV)).cpu()
        err_left = (left[mask.bool()] - ref["left_logits"][mask.bool()]).abs().max().item()
    check(f"{family} float32 logits on {DEV}", err <= 1e-4 and err_left <= 1e-4,
          f"max |Δ| {err:.1e}, left-padded {err_left:.1e}")
    bf16 = load_model(FIXTURES / f"tiny-{family}", device=DEV)
    with torch.no_grad():
        err = (bf16(ids).float().cpu() - ref["logits"]).abs().max().item()
    print(f"info {family} default dtype on {DEV} is {bf16.tok_emb.weight.dtype}; max |Δ| vs float32 reference {err:.1e}"
          f" (logits span ±{ref['logits'].abs().max().item():.1f})")
    default = torch.bfloat16 if DEV == "cuda" else torch.float32
    check(f"{family} default dtype on {DEV} is {default}", bf16.tok_emb.weight.dtype == default)

stories = load_llama2c(FIXTURES / "stories260K" / "stories260K.bin").to(DEV)
expected = (FIXTURES / "stories260K" / "expected_greedy_200.txt").read_bytes()
pieces = load_pieces(FIXTURES / "stories260K" / "tok512.bin")
for dtype in (torch.float32, torch.bfloat16):
    out = generate(stories.to(dtype), [[BOS]], max_new_tokens=200, eos_id=BOS, greedy=True)
    tokens = out.tokens[0][out.mask[0]].tolist()
    text = decode(pieces, tokens[:-1] if tokens[-1] == BOS else tokens)
    same = text == expected
    prefix = next((i for i, (a, b) in enumerate(zip(text, expected)) if a != b), min(len(text), len(expected)))
    if dtype == torch.float32:
        check(f"stories260K greedy 200 on {DEV} float32 is llama2.c's text byte for byte", same)
    else:
        print(f"info stories260K greedy 200 in bfloat16: identical={same}, first {prefix} bytes agree")

stories = stories.float()
prompts = [[BOS, 403, 407, 261, 356, 271], [BOS, 66], [BOS, 300, 288, 280, 301]]
out = generate(stories, prompts, max_new_tokens=40, eos_id=2, temperature=0.8, top_k=50,
               generator=torch.Generator(device=DEV).manual_seed(0))
worst = 0.0
for i, p in enumerate(prompts):
    new = out.tokens[i][out.mask[i]].tolist()
    with torch.no_grad():
        logits = stories(torch.tensor([p + new], device=DEV))[0, len(p) - 1 : -1].float() / 0.8
    lp = F.log_softmax(logits, -1).gather(-1, torch.tensor(new, device=DEV)[:, None]).squeeze(-1)
    worst = max(worst, ((out.logprobs[i][out.mask[i]] - lp).abs().max() / logits.abs().max()).item())
check(f"{DEV} KV-cache sampling log-probs equal recompute", worst <= 1e-5, f"(max |Δ| / logit scale {worst:.1e})")

print("FAILED: " + ", ".join(failures) if failures else f"all {DEV} checks passed")
sys.exit(1 if failures else 0)
