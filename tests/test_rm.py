"""Stage 2: the reward model U agrees with transformers' sequence classifiers, pools the last real token,
learns a toy preference, round-trips through its folder, and L_rmt matches hand computation."""

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from girl.data import DataError, read_jsonl, right_pad
from girl.files import CheckpointError
from girl.lm.checkpoint import load_model, save_model
from girl.lm.model import Config, RewardModel, last_token_index
from girl.lm.tokenizer import Tokenizer
from girl.losses import rm_loss
from girl.reward import (SHARED, best_of_n, encode_triples, pair_scores, shared_tokens, token_scores, u_input, u_scores,
                         u_tokens)
from girl.template import TEMPLATE, prompt_ids

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ["llama", "qwen2", "gpt2"]


def sigmoid_nll(x):
    return -math.log(1 / (1 + math.exp(-x)))


def test_rm_loss_by_hand():
    r_pos, r_neg = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.5])
    paper = (sigmoid_nll(1.0) + sigmoid_nll(-1.0) + sigmoid_nll(0.0)) / 3
    assert rm_loss(r_pos, r_neg).item() == pytest.approx(paper, rel=1e-6)
    margin = (sigmoid_nll(0.5) + sigmoid_nll(-1.5) + sigmoid_nll(-0.5)) / 3
    assert rm_loss(r_pos, r_neg, margin=0.5).item() == pytest.approx(margin, rel=1e-6)
    centering = 0.1 * (3.0**2 + (-1.0) ** 2 + 1.0**2) / 3
    assert rm_loss(r_pos, r_neg, center_coef=0.1).item() == pytest.approx(paper + centering, rel=1e-6)


def test_u_reads_the_tokens_of_j_that_c_holds():
    """U's input is template(C, J), the shared line (its heading, then J's tokens that C holds, each once, in J's
    order), EOS; cut to max_len, a long CV gives way and J and the shared line stay whole."""
    assert shared_tokens([1, 2, 3], [3, 4, 3, 1, 5]) == [3, 1] and shared_tokens([1], [2]) == []
    words = ["java", "shanghai", "nurse", "beijing"]
    tok = Tokenizer.train([" ".join(words[i:] + words[:i]) for i in range(4)] * 20, 300)  # each word first and after a space
    java, shanghai, beijing, nurse = (tok.encode(w)[0] for w in ("java", " shanghai", " beijing", " nurse"))
    cv, jd = "java nurse shanghai", "java shanghai beijing nurse shanghai"
    assert tok.encode(cv) == [java, nurse, shanghai] and tok.encode(jd) == [java, shanghai, beijing, nurse, shanghai]
    ids, cut = u_input(tok, cv, jd, "en", 256)
    assert ids == prompt_ids(tok, cv, "en")[0] + tok.encode(jd) + tok.encode(SHARED["en"]) + [java, shanghai, nurse, tok.eos_id]
    assert not cut and ids == u_tokens(tok, prompt_ids(tok, cv, "en")[0], tok.encode(jd), tok.encode(cv), "en")
    long_cv = cv + " beijing" * 150  # now C holds beijing too
    full = u_input(tok, long_cv, jd, "en", 1024)[0]
    short, cut = u_input(tok, long_cv, jd, "en", len(full) - 10)
    tail = tok.encode(jd) + tok.encode(SHARED["en"]) + [java, shanghai, beijing, nurse, tok.eos_id]
    assert cut and len(short) == len(full) - 10 and short[-len(tail):] == tail == full[-len(tail):]


def test_u_learns_whether_j_is_in_cs_city_from_what_it_reads():
    """A preference no token of J shows alone: recruiters accept the JD in the CV's city. A 1-layer U trained
    150 steps on U's inputs learns it (held-out pairs all right); on template(C, J) + EOS alone, as U read before
    the shared line, it stays near chance (seen: 0.515)."""
    cities = ["rome", "oslo", "lima", "kiev", "doha", "baku", "riga", "bern", "nice", "lyon", "cork", "graz"]
    fill = ["python", "sql", "nurse", "years", "senior", "remote"]
    g = random.Random(0)
    template = "".join(TEMPLATE["en"].values()) + SHARED["en"]
    tok = Tokenizer.train([template] * 20 + [" ".join(g.sample(cities + fill, 18)) for _ in range(100)], 700)
    assert all(len(tok.encode(" " + w)) == 1 for w in cities + fill)

    def triple():
        city, other = g.sample(cities, 2)
        cv = " ".join(g.sample(fill, 3) + [city] + g.sample(fill, 2))
        jd = lambda c: " ".join(g.sample(fill, 2) + [c] + g.sample(fill, 2))  # noqa: E731
        return {"cv": cv, "jd_pos": jd(city), "jd_neg": jd(other)}

    torch.manual_seed(0)
    U = RewardModel(Config(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64,
                           max_seq_len=256))
    opt = torch.optim.AdamW(U.parameters(), lr=3e-3)
    test = encode_triples(tok, [triple() for _ in range(200)], "en", 256)[0]
    for _ in range(150):
        loss = rm_loss(*pair_scores(U, encode_triples(tok, [triple() for _ in range(32)], "en", 256)[0], tok.pad_or_eos_id))
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        r_pos, r_neg = pair_scores(U, test, tok.pad_or_eos_id)
    assert (r_pos > r_neg).float().mean().item() == 1.0


def test_best_of_n_by_hand():
    u = [0.1, 0.9, 0.3, 2.0, -1.0, 2.0, -5.0, -4.0, -6.0]  # three CVs, three samples each; CV 1's best is tied
    assert best_of_n(u, 3) == [1, 3, 7] == best_of_n(torch.tensor(u), 3)
    assert best_of_n(u, 1) == list(range(9))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_scores_match_transformers(family, side):
    ref = load_file(str(FIXTURES / f"tiny-{family}-rm" / "reference_scores.safetensors"))
    u = load_model(FIXTURES / f"tiny-{family}-rm", RewardModel)
    with torch.no_grad():
        scores = u(ref[f"{side}_ids"], attention_mask=ref[f"{side}_mask"])
    assert scores.shape == (3,)
    # scores of these tiny models span about ±0.14; float32 keeps ~1e-5 of that
    assert (scores - ref[f"{side}_scores"]).abs().max().item() <= 1e-6


def test_last_token_index():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert last_token_index(right, 2, 5, "cpu").tolist() == [2, 4]
    assert last_token_index(left, 2, 5, "cpu").tolist() == [4, 4]
    assert last_token_index(None, 2, 5, "cpu").tolist() == [4, 4]


def test_padded_scores_equal_scores_alone():
    u = load_model(FIXTURES / "tiny-qwen2-rm", RewardModel)
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    ids, mask = right_pad(seqs, pad_id=0)
    with torch.no_grad():
        right = u(ids, mask)
        left_ids = torch.zeros_like(ids)
        left_mask = torch.zeros_like(mask)
        for i, s in enumerate(seqs):
            left_ids[i, ids.shape[1] - len(s):] = torch.tensor(s)
            left_mask[i, ids.shape[1] - len(s):] = 1
        left = u(left_ids, left_mask)
        alone = torch.stack([u(torch.tensor([s]))[0] for s in seqs])
    assert (right - alone).abs().max().item() <= 1e-5
    assert (left - alone).abs().max().item() <= 1e-5


def test_save_reload_identical_scores(tmp_path):
    u = load_model(FIXTURES / "tiny-llama-rm", RewardModel)
    save_model(tmp_path, u)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["num_labels"] == 1
    again = load_model(tmp_path, RewardModel)
    ids = torch.randint(1, 96, (4, 9))
    with torch.no_grad():
        assert torch.equal(u(ids), again(ids))
    with pytest.raises(CheckpointError, match=r"holds a reward model .* load_model\(path, RewardModel\)"):
        load_model(tmp_path)


def test_a_u_saved_before_the_shared_line_is_refused(tmp_path):
    """A U this project saves records what it was trained to read; one of ours without that record (saved before
    U read the shared line) is refused with what to do, while a reward model made elsewhere loads."""
    u = load_model(FIXTURES / "tiny-llama-rm", RewardModel)
    tok = Tokenizer.train(["java shanghai nurse beijing"] * 20, 300)
    save_model(tmp_path / "u", u, tok)
    config = json.loads((tmp_path / "u" / "config.json").read_text())
    assert config["girl_u_reads"] == "template, shared line, EOS"
    load_model(tmp_path / "u", RewardModel)
    del config["girl_u_reads"]
    (tmp_path / "u" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: a U this project saved before U read the line .* python train_rm.py"):
        load_model(tmp_path / "u", RewardModel)
    assert "girl_u_reads" not in json.loads((FIXTURES / "tiny-llama-rm" / "config.json").read_text())


def test_reward_model_from_a_language_model():
    """U started from an LM: the LM's backbone exactly, a new head, no LM head; an LM folder is refused where a
    trained U is expected."""
    lm = load_model(FIXTURES / "tiny-llama")
    u = RewardModel.from_generator(lm)
    ids = torch.randint(0, 96, (2, 7))
    with torch.no_grad():
        assert torch.equal(u.backbone.hidden_states(ids), lm.hidden_states(ids))
    assert u.backbone.lm_head is None and u.head.weight.shape == (1, 32)
    # the new head is N(0, 1/(d+1)): U's scores start with std ~1 (d = 32 here, too few to measure the std by)
    assert u.head.weight.shape == (1, 32) and not torch.equal(u.head.weight, RewardModel.from_generator(lm).head.weight)
    low = RewardModel.from_generator(lm, n_layers=1)  # the built-in U: G's lowest layers
    assert low.config.n_layers == 1 and torch.equal(low.backbone.layers[0].mlp.up.weight, lm.layers[0].mlp.up.weight)
    with pytest.raises(CheckpointError, match="holds a language model, not a reward model"):
        load_model(FIXTURES / "tiny-llama", RewardModel)


def test_head_init_gives_scores_of_std_one():
    """The head's weights are N(0, 1/(d+1)), so a score w·h of a normed hidden state (|h|² ≈ d) has std ~1 for
    any width. Measured on d = 2048: the sample std of 2048 weights is within 5 of its standard errors,
    1/sqrt(2·2048) relative, of 1/sqrt(d+1); 1/d or a std of 0.02 (the body's init) are far outside."""
    torch.manual_seed(0)
    d = 2048
    u = RewardModel(Config(model_type="llama", vocab_size=8, dim=d, n_layers=1, n_heads=8, n_kv_heads=8, hidden_dim=8,
                           max_seq_len=8))
    w = u.head.weight.detach().double().flatten()
    assert abs(w.std().item() * math.sqrt(d + 1) - 1) < 5 / math.sqrt(2 * d)
    assert abs(w.mean().item()) < 5 / math.sqrt(d) / math.sqrt(d + 1)


def test_tiny_reward_model_learns_a_separable_preference():
    """Recruiters here prefer JDs with token 7 to JDs with token 8, whatever else they contain."""
    torch.manual_seed(0)
    u = RewardModel(Config(model_type="llama", vocab_size=32, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                           hidden_dim=64, max_seq_len=32))
    opt = torch.optim.AdamW(u.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def pairs(n):
        cv = torch.randint(10, 32, (n, 6), generator=g)
        noise = torch.randint(10, 32, (n, 4), generator=g)
        pos = torch.cat([cv, noise, torch.full((n, 1), 7)], 1)[:, torch.randperm(11, generator=g)]
        neg = torch.cat([cv, noise, torch.full((n, 1), 8)], 1)[:, torch.randperm(11, generator=g)]
        return pos, neg

    test_pos, test_neg = pairs(200)
    with torch.no_grad():
        before = (u(test_pos) > u(test_neg)).float().mean().item()
    for _ in range(150):
        pos, neg = pairs(32)
        loss = rm_loss(u(pos), u(neg))
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = (u(test_pos) > u(test_neg)).float().mean().item()
    assert before < 0.9 and after == 1.0


def test_bad_triples_name_file_and_line(tmp_path):
    path = tmp_path / "triples.jsonl"
    path.write_text('{"cv": "a", "jd_pos": "b", "jd_neg": "c"}\n{"cv": "a", "jd_pos": "b"}\n')
    with pytest.raises(DataError, match=r"triples.jsonl:2: field 'jd_neg' is missing"):
        read_jsonl(path, "rm")


def test_several_labels_is_not_a_reward_model(tmp_path):
    shutil.copytree(FIXTURES / "tiny-qwen2-rm", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b"}
    config.pop("num_labels", None)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="num_labels must be 1"):
        load_model(tmp_path / "m", RewardModel)


def test_u_reads_g_tokens_as_it_reads_the_text():
    """token_scores (PPO's reward: U reads G's own tokens) is U on template(C, J′), the shared line, EOS: for a J′ whose text
    encodes back to the same tokens it equals u_scores of the text; for G's other spelling of the same text
    it scores the tokens G wrote, not the re-encoded ones."""
    tok = Tokenizer.train(["Skills: Python and SQL, 3 years", "Backend engineer, Python, Shanghai"] * 20, 300)
    torch.manual_seed(0)
    U = RewardModel(Config(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64,
                           max_seq_len=256)).eval()
    cvs, jds = ["Skills: Python and SQL", "3 years in Shanghai"], ["Backend engineer, Python", "Python, SQL"]
    prompts = [prompt_ids(tok, cv, "en")[0] for cv in cvs]
    canonical = [tok.encode(jd) for jd in jds]
    by_text = u_scores(U, tok, cvs, jds, "en")
    by_tokens = token_scores(U, tok, prompts, cvs, canonical, "en")
    assert torch.equal(by_tokens, by_text)  # the same sequences in the same batch
    spelled = [sum((tok.encode(ch) for ch in jd), []) for jd in jds]  # one token per character: same text
    assert [tok.decode(t) for t in spelled] == jds and spelled != canonical
    with torch.no_grad():
        alone = torch.stack([U(torch.tensor([p + r + tok.encode(SHARED["en"]) + shared_tokens(tok.encode(c), r) + [tok.eos_id]]))[0]
                             for p, c, r in zip(prompts, cvs, spelled)])
    assert torch.allclose(token_scores(U, tok, prompts, cvs, spelled, "en"), alone, rtol=1e-5, atol=1e-6)
