"""Known answer: llama2.c's stories260K, decoded greedily for 200 steps from BOS, prints exactly the text
that llama2.c's own C runner prints. Proves RoPE, GQA, RMSNorm, SwiGLU and the KV cache on real weights."""

from pathlib import Path

import pytest
import torch
from stories260k import BOS, decode, load_llama2c, load_pieces

from girl.lm.sampling import generate

HERE = Path(__file__).parent / "fixtures" / "stories260K"
STEPS = 200


@pytest.fixture(scope="module")
def model():
    return load_llama2c(HERE / "stories260K.bin")


def test_greedy_200_matches_llama2c_byte_for_byte(model):
    out = generate(model, [[BOS]], max_new_tokens=STEPS, eos_id=BOS, greedy=True)
    tokens = out.tokens[0][out.mask[0]].tolist()
    tokens = tokens[:-1] if tokens[-1] == BOS else tokens  # run.c stops at BOS without printing it
    expected = (HERE / "expected_greedy_200.txt").read_bytes()
    assert decode(load_pieces(HERE / "tok512.bin"), tokens) == expected


def test_recomputing_without_cache_gives_the_same_tokens(model):
    """The naive loop llama2.c's definition implies: one full forward pass per new token, no cache."""
    ids = torch.tensor([[BOS]])
    with torch.no_grad():
        for _ in range(STEPS):
            nxt = model(ids)[0, -1].argmax()
            if nxt == BOS:
                break
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    cached = generate(model, [[BOS]], max_new_tokens=STEPS, eos_id=BOS, greedy=True)
    expected = (HERE / "expected_greedy_200.txt").read_bytes()
    assert decode(load_pieces(HERE / "tok512.bin"), ids[0, 1:].tolist()) == expected
    assert cached.tokens[0, : ids.shape[1] - 1].tolist() == ids[0, 1:].tolist()
