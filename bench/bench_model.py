"""Benchmark girl's transformer against Hugging Face transformers, and KV-cache against no-cache decoding.

    pip install transformers && python bench/bench_model.py            # CPU, float32
    python bench/bench_model.py --device cuda --dtype bfloat16          # GPU

Both models get the same random weights of a public model's shape (--shape: GPT-2 small, 124M, or
Qwen2.5-0.5B, 494M): transformers builds them, girl loads the saved folder, and the script checks that
their logits agree before timing anything.
Prints a Markdown table; numbers are medians over --repeats runs after one warm-up.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from girl.lm.checkpoint import load_model, save_model  # noqa: E402
from girl.lm.model import Transformer  # noqa: E402
from girl.lm.sampling import generate  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--shape", default="gpt2-small", choices=["gpt2-small", "qwen2.5-0.5b"],
                    help="architecture and size of the random model")
parser.add_argument("--device", default="cpu", help="cpu or cuda")
parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (bfloat16 is slow on most CPUs)")
parser.add_argument("--batch", type=int, default=1, help="sequences per forward pass")
parser.add_argument("--seq", type=int, default=256, help="tokens per sequence in the forward benchmark")
parser.add_argument("--prompt", type=int, default=16, help="prompt tokens in the decoding benchmark")
parser.add_argument("--decode-batch", type=int, default=1, help="sequences decoded at once")
parser.add_argument("--new-tokens", type=int, default=128, help="tokens to decode")
parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
args = parser.parse_args()
device, dtype = torch.device(args.device), getattr(torch, args.dtype)


def timed(contenders: dict, repeats: int) -> dict:
    """Median seconds of each function. Rounds run every contender once, in turn, so that a slow spell
    of the machine hits all of them alike (timing one after the other skews comparisons by ~5% here)."""
    times = {name: [] for name in contenders}
    for round in range(repeats + 1):  # round 0 warms up
        for name, fn in contenders.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


try:
    import transformers
except ImportError:
    transformers = None
    print("transformers is not installed: timing girl alone", file=sys.stderr)

SHAPES = {  # the public configs' sizes, as config.json dicts
    "gpt2-small": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, rope_theta=1e6,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
torch.manual_seed(0)
with tempfile.TemporaryDirectory() as tmp:
    if transformers is not None:
        hf_config = transformers.AutoConfig.for_model(**SHAPES[args.shape])
        transformers.AutoModelForCausalLM.from_config(hf_config).save_pretrained(tmp)
        # load with dtype= rather than .to(dtype): .to() would also round transformers' float32 RoPE
        # frequencies (inv_freq) to bfloat16, and .float() afterwards does not bring them back
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).to(device).eval()
        if dtype != torch.float32:
            exact_model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(device)
    else:
        from girl.lm.hf import config_from_hf

        save_model(tmp, Transformer(config_from_hf(SHAPES[args.shape])))
    ours = load_model(tmp, dtype=dtype, device=device)
vocab = ours.config.vocab_size

ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)
rows = []
with torch.inference_mode():
    forward = {"forward, girl": lambda: ours(ids)}
    if transformers is not None:
        forward["forward, transformers"] = lambda: hf(ids).logits
        ours_logits, hf_logits = ours(ids), hf(ids).logits
        err = (ours_logits.float() - hf_logits.float()).abs().max().item()
        print(f"max |Δlogit| girl vs transformers: {err:.2e} ({args.dtype})", file=sys.stderr)
        if dtype != torch.float32:  # how far is each from the exact (float32) answer?
            exact = exact_model(ids).logits
            del exact_model
            print(f"max |Δlogit| vs float32 transformers: girl {(ours_logits.float() - exact).abs().max().item():.2e}, "
                  f"transformers {(hf_logits.float() - exact).abs().max().item():.2e} "
                  f"(logits span ±{exact.abs().max().item():.1f})", file=sys.stderr)
    rows += [(what, t, args.batch * args.seq / t) for what, t in timed(forward, args.repeats).items()]

    prompt = torch.randint(0, vocab, (args.decode_batch, args.prompt), device=device)
    n, tokens = args.new_tokens, args.new_tokens * args.decode_batch

    def no_cache():
        seq = prompt
        for _ in range(n):
            seq = torch.cat([seq, ours(seq)[:, -1:].argmax(-1)], dim=1)
        return seq[:, args.prompt:]

    def cached():
        return generate(ours, prompt.tolist(), max_new_tokens=n, greedy=True).tokens

    same = torch.equal(no_cache(), cached())
    print(f"KV-cache and no-cache decoding give the same {n} tokens: {same}"
          + ("" if same or dtype == torch.float32 else " (bf16 rounding flips near-ties of a random model)"),
          file=sys.stderr)
    decode = {f"decode {n} tokens, no cache (girl)": no_cache, f"decode {n} tokens, KV cache (girl)": cached}
    if transformers is not None:
        decode[f"decode {n} tokens, KV cache (transformers.generate)"] = lambda: hf.generate(
            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    rows += [(what, t, tokens / t) for what, t in timed(decode, max(1, args.repeats // 2)).items()]

name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
print(f"\n{args.shape} shape ({ours.num_parameters() / 1e6:.0f}M), {args.dtype}, {name}, torch {torch.__version__}"
      + (f", transformers {transformers.__version__}" if transformers else ""))
print(f"forward: batch {args.batch} x {args.seq} tokens; decode: batch {args.decode_batch}, prompt {args.prompt}, greedy\n")
print("| measurement | median seconds | tokens/s |\n|---|---:|---:|")
for what, seconds, rate in rows:
    print(f"| {what} | {seconds:.3f} | {rate:,.0f} |")
