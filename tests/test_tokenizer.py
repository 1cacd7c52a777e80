"""girl.tokenizer.Tokenizer reproduces the real GPT-2 tokenizer on llama.cpp's known-answer vectors."""

import json
import shutil
from pathlib import Path

import pytest

from girl.files import CheckpointError
from girl.lm.checkpoint import load_model
from girl.lm.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
GPT2 = FIXTURES / "gpt2-tokenizer"


def llama_cpp_cases():
    """cases.inp: inputs, each followed by the line __ggml_vocab_test__; cases.out: one line of ids each."""
    inputs = (GPT2 / "cases.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (GPT2 / "cases.out").read_text(encoding="utf-8").split("\n")
    assert inputs[-1] == "" and outputs[-1] == ""  # both end with their separator
    return list(zip(inputs[:-1], outputs[:-1], strict=True))


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.from_pretrained(GPT2)


def test_all_llama_cpp_gpt2_cases(gpt2):
    cases = llama_cpp_cases()
    assert len(cases) == 46
    for text, expected in cases:
        assert gpt2.encode(text) == [int(i) for i in expected.split()], repr(text)
    assert gpt2.encode_batch([c[0] for c in cases]) == [[int(i) for i in c[1].split()] for c in cases]


def test_decode_inverts_encode(gpt2):
    for text, _ in llama_cpp_cases():
        assert gpt2.decode(gpt2.encode(text)) == text


def test_special_tokens_and_save_round_trip(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(GPT2 / "tokenizer.json", folder)
    # gpt2 names its special tokens only by id, in config.json
    (folder / "config.json").write_text(json.dumps({"bos_token_id": 50256, "eos_token_id": 50256}))
    tok = Tokenizer.from_pretrained(folder)
    assert (tok.bos_token, tok.eos_id, tok.pad_id, tok.vocab_size) == ("<|endoftext|>", 50256, None, 50257)
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.decode([15496, 50256, 995]) == "Hello world"
    assert tok.decode([15496, 50256], skip_special_tokens=False) == "Hello<|endoftext|>"

    tok.pad_token = tok.eos_token
    tok.save_pretrained(tmp_path / "saved")
    again = Tokenizer.from_pretrained(tmp_path / "saved")
    assert (again.bos_id, again.eos_id, again.pad_id) == (50256, 50256, 50256)
    assert again.encode("Hello world") == tok.encode("Hello world") == [15496, 995]


def test_tokenizer_that_does_not_fit_the_model(gpt2):
    tiny = load_model(FIXTURES / "tiny-llama")
    with pytest.raises(CheckpointError, match="tokenizer.json: tokenizer produces ids up to 50256, but tiny-llama "
                                              "has only 96 embeddings"):
        gpt2.check_fits(tiny.config, "tiny-llama")


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json: cannot be read as a tokenizer"):
        Tokenizer.from_pretrained(tmp_path)
    shutil.copy(GPT2 / "tokenizer.json", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(CheckpointError, match="tokenizer.json: eos token '</s>' is not in the tokenizer's vocabulary"):
        Tokenizer.from_pretrained(tmp_path)
