"""The KV-cache engine returns what recomputing the whole sequence would, for each prompt of a padded batch."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from stories260k import BOS, load_llama2c

from girl.lm.checkpoint import load_model
from girl.lm.model import Config, Transformer
from girl.lm.sampling import decoded, generate, left_pad, sample_next
from girl.lm.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
# real tokens from stories260K's vocabulary; lengths differ so the batch needs padding
PROMPTS = [[BOS, 403, 407, 261, 356, 271], [BOS, 66], [BOS, 300, 288, 280, 301]]


@pytest.fixture(scope="module")
def stories():
    return load_llama2c(FIXTURES / "stories260K" / "stories260K.bin")


def recompute_logprobs(model, prompt, new_tokens, temperature):
    """log softmax(logits / T) of each new token, from one forward pass over prompt + new tokens, and the
    float32 tolerance to compare them with: a log-prob is a difference of scaled logits, so it carries
    ~1e-5 of their magnitude as rounding (the cached pass sums attention in another order)."""
    ids = torch.tensor([prompt + new_tokens])
    with torch.no_grad():
        logits = model(ids)[0, len(prompt) - 1 : -1].float() / temperature
    logprobs = F.log_softmax(logits, -1).gather(-1, torch.tensor(new_tokens)[:, None]).squeeze(-1)
    return logprobs, 1e-5 * logits.abs().max().item()


@pytest.mark.parametrize("settings", [
    dict(greedy=True),
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=20),
    dict(temperature=1.0, top_p=0.9),
])
def test_cached_batch_equals_recompute(stories, settings):
    g = torch.Generator().manual_seed(0)
    out = generate(stories, PROMPTS, max_new_tokens=40, eos_id=2, generator=g, **settings)
    temperature = settings.get("temperature", 1.0)
    for i, prompt in enumerate(PROMPTS):
        new = out.tokens[i][out.mask[i]].tolist()
        assert len(new) > 0
        expected, tol = recompute_logprobs(stories, prompt, new, temperature)
        got = out.logprobs[i][out.mask[i]]
        assert (got - expected).abs().max().item() <= tol
        if settings.get("greedy"):  # each token is the argmax of the recomputed distribution
            ids = torch.tensor([prompt + new])
            with torch.no_grad():
                argmax = stories(ids)[0, len(prompt) - 1 : -1].argmax(-1)
            assert argmax.tolist() == new


def test_left_padded_batch_equals_each_prompt_alone(stories):
    batch = generate(stories, PROMPTS, max_new_tokens=60, eos_id=2, greedy=True)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(stories, [prompt], max_new_tokens=60, eos_id=2, greedy=True)
        n = int(alone.mask[0].sum())
        assert batch.tokens[i][batch.mask[i]].tolist() == alone.tokens[0, :n].tolist()
        _, tol = recompute_logprobs(stories, prompt, alone.tokens[0, :n].tolist(), 1.0)
        assert (batch.logprobs[i][batch.mask[i]] - alone.logprobs[0, :n]).abs().max().item() <= tol


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_each_family_cached_equals_recompute(family):
    model = load_model(FIXTURES / f"tiny-{family}")
    prompts = [[5, 17, 3, 60, 2], [9], [40, 41, 42]]
    g = torch.Generator().manual_seed(1)
    out = generate(model, prompts, max_new_tokens=20, temperature=0.9, generator=g)
    assert out.mask.all()  # no eos_id: every sequence runs to max_new_tokens
    for i, prompt in enumerate(prompts):
        expected, tol = recompute_logprobs(model, prompt, out.tokens[i].tolist(), 0.9)
        assert (out.logprobs[i] - expected).abs().max().item() <= tol


def test_each_sequence_stops_at_its_own_eos():
    torch.manual_seed(0)
    model = load_model(FIXTURES / "tiny-llama")
    # find the first greedy token of prompt 0 and declare it EOS: prompt 0 stops at once, others go on
    first = generate(model, [[1, 2, 3]], max_new_tokens=1, greedy=True).tokens[0, 0].item()
    out = generate(model, [[1, 2, 3], [50, 51]], max_new_tokens=8, eos_id=first, pad_id=-1, greedy=True)
    assert out.tokens[0, 0] == first and out.mask[0].tolist() == [True] + [False] * (out.mask.shape[1] - 1)
    assert (out.tokens[0, 1:] == -1).all() and (out.logprobs[0, 1:] == 0).all()
    assert out.mask[1, 0]


def test_generation_stops_when_all_are_done(stories):
    out = generate(stories, [[BOS]], max_new_tokens=500 - 1, eos_id=BOS, greedy=True)
    assert out.tokens.shape[1] < 499  # stories260K ends its story with BOS long before that
    assert out.tokens[0, -1] == BOS and out.mask[0].all()


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    token, logprob = sample_next(logits, greedy=True)
    assert token.item() == 1
    assert logprob.item() == pytest.approx(F.log_softmax(logits, -1)[0, 1].item(), abs=1e-6)

    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, top_k=2, generator=g)[0].item() for _ in range(300)}
    assert draws == {1, 3}  # only the two largest logits survive top-k=2

    # probs at T=1, sorted: .64 (id 1), .24 (id 3), .09 (id 2), ... top_p=.8 needs ids 1 and 3 only
    draws = {sample_next(logits, top_p=0.8, generator=g)[0].item() for _ in range(300)}
    assert draws == {1, 3}

    # the returned log-prob is under the temperature-scaled, unfiltered distribution
    token, logprob = sample_next(logits, temperature=2.0, top_k=1, generator=g)
    assert token.item() == 1
    assert logprob.item() == pytest.approx(F.log_softmax(logits / 2.0, -1)[0, 1].item(), abs=1e-6)


def tempered_filtered(logits: list[float], temperature: float, top_k=None, top_p=None) -> list[float]:
    """The distribution sample_next should draw from, in plain Python: softmax(logits / T), cut to the k
    most likely, then to the smallest most-likely set whose mass reaches top_p, renormalised each time."""
    p = [math.exp(l / temperature) for l in logits]
    p = [x / sum(p) for x in p]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep = order[:top_k] if top_k else order
    mass = sum(p[i] for i in keep)
    if top_p is not None:
        kept, total = [], 0.0
        for i in keep:
            if total >= top_p:
                break
            kept.append(i)
            total += p[i] / mass
        keep = kept
    mass = sum(p[i] for i in keep)
    return [p[i] / mass if i in keep else 0.0 for i in range(len(p))]


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.6, None, None), (1.7, None, None), (0.6, 4, 0.9),
                                                       (1.7, 5, 0.8)])
def test_sample_next_draws_from_the_tempered_filtered_distribution(temperature, top_k, top_p):
    """40,000 seeded draws against the analytic probabilities: each token's count within 5 binomial standard
    deviations, sqrt(N·q·(1−q)), of N·q; a token the filters remove never drawn. Sampling from
    softmax(logits / T²), or from the untempered logits, moves some count by more than 20 of them."""
    logits = [2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0]
    n = 40_000
    tokens, _ = sample_next(torch.tensor([logits] * n), temperature, top_k, top_p,
                            generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=len(logits)).tolist()
    for token, (count, q) in enumerate(zip(counts, tempered_filtered(logits, temperature, top_k, top_p))):
        if q == 0:
            assert count == 0, token
        else:
            assert abs(count - n * q) <= 5 * math.sqrt(n * q * (1 - q)), (token, count, n * q)


def test_generate_draws_from_the_models_tempered_distribution():
    """The first token of 20,000 copies of one prompt, drawn by generate() at T = 0.7 from a tiny model whose
    next-token distribution is far from uniform, against softmax(logits / T) of one forward pass."""
    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=16, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                               max_seq_len=16))
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
        q = (model(torch.tensor([[4, 5, 6]]))[0, -1].double() / 0.7).softmax(-1).tolist()
    n = 20_000
    out = generate(model, [[4, 5, 6]] * n, max_new_tokens=1, temperature=0.7, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(out.tokens[:, 0], minlength=16).tolist()
    assert max(q) > 0.3  # peaked enough that T² in place of T would show
    for token, (count, p) in enumerate(zip(counts, q)):
        assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (token, count, n * p)


def test_a_row_with_its_own_generator_draws_the_same_whatever_the_batch(stories):
    """With one generator per prompt (PPO's rollouts), a prompt's J′ depends on its generator alone: sampled
    in a batch of three or alone, or in another order, it is the same sequence. That is what lets the
    processes of a torchrun job each sample a share of the batch and get what one process would."""
    def rngs(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = generate(stories, PROMPTS, max_new_tokens=40, eos_id=2, temperature=1.0, generator=rngs([11, 12, 13]))
    swapped = generate(stories, PROMPTS[::-1], max_new_tokens=40, eos_id=2, temperature=1.0, generator=rngs([13, 12, 11]))
    for i, prompt in enumerate(PROMPTS):
        alone = generate(stories, [prompt], max_new_tokens=40, eos_id=2, temperature=1.0, generator=rngs([11 + i]))
        n = int(alone.mask[0].sum())
        assert batch.tokens[i][batch.mask[i]].tolist() == alone.tokens[0, :n].tolist()
        j = len(PROMPTS) - 1 - i
        assert swapped.tokens[j][swapped.mask[j]].tolist() == alone.tokens[0, :n].tolist()
    # and the rows' own generators are used: other seeds give other J′
    other = generate(stories, PROMPTS, max_new_tokens=40, eos_id=2, temperature=1.0, generator=rngs([21, 22, 23]))
    assert other.tokens.tolist() != batch.tokens.tolist()


def test_left_pad():
    ids, mask = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bad_arguments(stories):
    with pytest.raises(ValueError, match="at least one token"):
        generate(stories, [[BOS], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(stories, [[BOS]], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(stories, [[BOS]], max_new_tokens=4, temperature=0)
    with pytest.raises(ValueError, match="exceed the model's max_seq_len 512"):
        generate(stories, [[BOS] * 500], max_new_tokens=20)


def test_decoded_stops_at_eos():
    tok = Tokenizer.train(["hello world", "job description"], 300)
    hello, world = tok.encode("hello"), tok.encode(" world")
    row = hello + world + [tok.eos_id, tok.pad_id]
    tokens = torch.tensor([row, hello + [tok.pad_id] * (len(row) - len(hello))])
    mask = torch.tensor([[True] * (len(row) - 1) + [False], [True] * len(hello) + [False] * (len(row) - len(hello))])
    kept, texts, ended = decoded(tok, tokens, mask)
    assert texts == ["hello world", "hello"] and ended == [True, False]
    assert kept == [hello + world, hello]
