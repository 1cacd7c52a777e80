"""Stage 1: the prompt template, the loss mask, L_sft by hand, bad input, and a tiny G that memorises."""

import json
import math

import numpy as np
import pytest
import torch

from girl.data import IGNORE, DataError, build_from_log, collate, read_jsonl, sft_example
from girl.lm.model import Config, Transformer
from girl.lm.sampling import generate
from girl.lm.tokenizer import Tokenizer
from girl.losses import sft_loss
from girl.template import TEMPLATE, prompt_ids, template_overhead

PAIRS = [
    ("Name: Ann\nSkills: Python, SQL\nLocation: Beijing", "Position: Data Analyst\nLocation: Beijing"),
    ("Name: Bo\nSkills: Java, Redis\nLocation: Shanghai", "Position: Backend Engineer\nLocation: Shanghai"),
    ("Name: Cy\nSkills: Excel, CPA\nLocation: Wuhan", "Position: Accountant\nLocation: Wuhan"),
    ("Name: Di\nSkills: SEO, copywriting\nLocation: Nanjing", "Position: Brand Manager\nLocation: Nanjing"),
]


@pytest.fixture(scope="module")
def tok():
    texts = [c for pair in PAIRS for c in pair] + ["".join(TEMPLATE["en"].values())] * 5
    return Tokenizer.train(texts, 300)


def test_template_has_four_parts_and_empty_output(tok):
    ids, cut = prompt_ids(tok, PAIRS[0][0], "en")
    text = tok.decode(ids)
    t = TEMPLATE["en"]
    assert not cut and ids[0] == tok.bos_id
    assert text.index("Role") < text.index("Instruction") < text.index("Input") < text.index(PAIRS[0][0])
    assert text.endswith(t["output"])  # the output part is empty: G writes there


def test_loss_mask_learns_jd_and_eos_only(tok):
    cv, jd = PAIRS[0]
    example, cv_cut, jd_cut = sft_example(tok, cv, jd, "en", max_len=256)
    prompt, _ = prompt_ids(tok, cv, "en")
    jd_ids = tok.encode(jd)
    assert example["input_ids"] == prompt + jd_ids + [tok.eos_id]
    assert example["labels"] == [IGNORE] * len(prompt) + jd_ids + [tok.eos_id]
    assert not cv_cut and not jd_cut


def test_eos_is_learned_when_pad_is_eos(tok):
    """A classic bug: labels made by masking ids == pad_id also mask the real EOS when pad == EOS."""
    short = sft_example(tok, *PAIRS[2], "en", 256)[0]
    long = sft_example(tok, PAIRS[0][0], PAIRS[0][1] + " and more words here", "en", 256)[0]
    batch = collate([short, long], pad_id=tok.eos_id)
    n = len(short["input_ids"])
    assert batch["labels"][0, n - 1] == tok.eos_id  # the real EOS keeps its label
    assert (batch["labels"][0, n:] == IGNORE).all() and (batch["input_ids"][0, n:] == tok.eos_id).all()
    assert (batch["attention_mask"][0, n:] == 0).all()


def test_sft_loss_equals_hand_computation():
    # one sequence of 4 tokens, vocabulary 3; labels: prompt (ignored), then JD tokens 2 and 0
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.5, 0.5, 3.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[IGNORE, IGNORE, 2, 0]])
    # position 1 predicts token 2 from logits (0, 2, 1); position 2 predicts token 0 from (0.5, 0.5, 3)
    nll_1 = -(1.0 - math.log(math.exp(0.0) + math.exp(2.0) + math.exp(1.0)))
    nll_2 = -(0.5 - math.log(2 * math.exp(0.5) + math.exp(3.0)))
    assert sft_loss(logits, labels).item() == pytest.approx((nll_1 + nll_2) / 2, rel=1e-6)
    assert sft_loss(logits, labels, reduction="sum").item() == pytest.approx(nll_1 + nll_2, rel=1e-6)


def test_long_cv_is_cut_before_the_jd(tok):
    cv = PAIRS[0][0] + "\nAbout me: " + "curious and hands-on. " * 60
    jd = PAIRS[0][1]
    max_len = template_overhead(tok, "en") + len(tok.encode(jd)) + 1 + 80  # room for 80 CV tokens (> max_len // 4)
    example, cv_cut, jd_cut = sft_example(tok, cv, jd, "en", max_len)
    assert cv_cut and not jd_cut and len(example["input_ids"]) == max_len
    assert example["labels"][-len(tok.encode(jd)) - 1 :] == tok.encode(jd) + [tok.eos_id]  # the JD survived whole
    assert example["input_ids"][: template_overhead(tok, "en") - 3] == prompt_ids(tok, cv, "en")[0][: template_overhead(tok, "en") - 3]



def test_example_never_exceeds_max_len_when_the_template_fills_most_of_it(tok):
    """A quarter of max_len for the CV is more than the template leaves: the CV gets what is left, the JD is cut."""
    overhead = template_overhead(tok, "en")
    cv, jd = PAIRS[0][0] + " and more" * 20, PAIRS[0][1] + " and more" * 20
    for max_len in (overhead + 1, overhead + 10, 4 * overhead // 3):
        example, cv_cut, jd_cut = sft_example(tok, cv, jd, "en", max_len)
        assert len(example["input_ids"]) == max_len and cv_cut and jd_cut
    with pytest.raises(ValueError, match="template alone"):
        sft_example(tok, cv, jd, "en", overhead)

def test_tiny_model_memorises_four_pairs(tok):
    torch.manual_seed(0)
    model = Transformer(Config(model_type="llama", vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4,
                               n_kv_heads=2, hidden_dim=128, max_seq_len=256))
    batch = collate([sft_example(tok, cv, jd, "en", 256)[0] for cv, jd in PAIRS], tok.pad_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = sft_loss(model(batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05
    out = generate(model.eval(), [prompt_ids(tok, cv, "en")[0] for cv, _ in PAIRS], 40, eos_id=tok.eos_id, greedy=True)
    for (cv, jd), tokens, mask in zip(PAIRS, out.tokens, out.mask):
        assert tokens[mask].tolist() == tok.encode(jd) + [tok.eos_id]


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("content, message", [
    (b'{"cv": "a", "jd": "b"}\n{"cv": "a", "jd": "b"}\n{"cv": "a" "jd": "b"}\n', r":3: not valid JSON"),
    (b'{"cv": "a", "jd": "b"}\n{"cv": "a"}\n', r":2: field 'jd' is missing"),
    (b'{"cv": "a", "jd": "  "}\n', r":1: field 'jd' is empty or not a string"),
    (b'{"cv": "a", "jd": 3}\n', r":1: field 'jd' is empty or not a string"),
    (b'["cv", "jd"]\n', r":1: expected a JSON object with fields cv, jd"),
    (b'{"cv": "a", "jd": "b"}\n{"cv": "caf\xe9", "jd": "b"}\n', r":2: not UTF-8 text"),
    (b"\n\n", r": no rows"),
])
def test_malformed_sft_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"pairs.jsonl{message}"):
        read_jsonl(path, "sft")


def test_bom_and_windows_line_endings_are_read(tmp_path):
    """What Excel and Windows tools write: a UTF-8 byte-order mark before the first line, CRLF after each.
    The rows are those of the plain file; a BOM inside the file is still an error."""
    plain = '{"cv": "Ann", "jd": "Data analyst"}\n{"cv": "Bo", "jd": "Course advisor"}\n'
    (tmp_path / "plain.jsonl").write_text(plain, encoding="utf-8")
    (tmp_path / "excel.jsonl").write_bytes(b"\xef\xbb\xbf" + plain.replace("\n", "\r\n").encode())
    assert read_jsonl(tmp_path / "excel.jsonl", "sft") == read_jsonl(tmp_path / "plain.jsonl", "sft")
    (tmp_path / "inner.jsonl").write_bytes(plain.encode() + b"\xef\xbb\xbf" + plain.encode())
    with pytest.raises(DataError, match=r"inner.jsonl:3: not valid JSON"):
        read_jsonl(tmp_path / "inner.jsonl", "sft")


def test_interaction_labels_are_checked(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"cv": "a", "jd": "b", "label": 1}\n{"cv": "a", "jd": "b", "label": "yes"}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: field 'label' must be 0 or 1"):
        read_jsonl(path, "interactions")


def real_log(folder, n_cvs=300, n_jds=80, per_cv=10, accept=0.05, seed=0):
    """A log of the shape real ones have: each CV in many rows, about 5% of applications accepted, so that
    most CVs have none; written as the cvs, jds and log tables girl.data build reads."""
    rng = np.random.default_rng(seed)
    cvs = [{"id": f"c{i}", "cv": f"cv {i}"} for i in range(n_cvs)]
    jds = [{"id": k, "jd": f"jd {k}"} for k in range(n_jds)]
    log = [{"cv_id": f"c{i}", "jd_id": int(k), "label": int(rng.uniform() < accept)}
           for i in range(n_cvs) for k in rng.choice(n_jds, per_cv, replace=False)]
    for name, rows in (("cvs", cvs), ("jds", jds), ("log", log)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return log


def test_build_from_interaction_log_gives_every_part_accepted_applications(tmp_path):
    log = real_log(tmp_path)
    counts = build_from_log(tmp_path / "cvs.jsonl", tmp_path / "jds.jsonl", tmp_path / "log.jsonl", tmp_path / "out")
    read = lambda name: read_jsonl(tmp_path / "out" / f"{name}.jsonl", "interactions" if "interactions" in name or
                                   name == "rec_train" else "ppo")
    cvs_of = lambda name: {r["cv"] for r in read(name)}
    parts = {"sft": {r["cv"] for r in read_jsonl(tmp_path / "out" / "sft_train.jsonl", "sft")},
             "rec": cvs_of("rec_train"), "val": cvs_of("val"), "test": cvs_of("test"), "ppo": cvs_of("ppo")}
    for a in parts:  # no CV in two parts: M's seekers are not G's, validation is not test
        for b in parts:
            assert a == b or not parts[a] & parts[b], (a, b)
    with_positive = {f"cv {r['cv_id'][1:]}" for r in log if r["label"]}
    assert len(with_positive) < 0.5 * 300  # most CVs were never accepted: the case that starved M before
    for part, share in (("test", 0.1), ("val", 0.1), ("ppo", 0.1), ("rec", 0.2)):  # each its share of both strata
        assert len(parts[part] & with_positive) == round(len(with_positive) * share), part
    assert len(parts["test"]) == round(len(with_positive) * 0.1) + round((300 - len(with_positive)) * 0.1)
    # each part's accepted applications, counted by hand and by the builder, and present in every part M needs
    accepted = lambda cvs: sum(r["label"] for r in log if f"cv {r['cv_id'][1:]}" in cvs)
    for part in ("sft", "rec", "val", "test"):
        assert counts["positives"][part] == accepted(parts[part if part != "sft" else "sft"]) > 0, part
    assert counts["sft_train"] == accepted(parts["sft"])
    assert counts["interactions_test"] == 10 * len(parts["test"]) and counts["interactions_val"] == 10 * len(parts["val"])
    assert counts["rec_train"] == 10 * len(parts["rec"]) and sum(r["label"] for r in read("rec_train")) > 0
    assert {r["cv"] for r in read_jsonl(tmp_path / "out" / "rm_train.jsonl", "rm")} <= parts["sft"] | parts["rec"]
    for r in read_jsonl(tmp_path / "out" / "rm_train.jsonl", "rm"):
        assert r["jd_pos"] != r["jd_neg"]

    (tmp_path / "log.jsonl").write_text('{"cv_id": "c0", "jd_id": 0, "label": 1}\n{"cv_id": 99, "jd_id": 0, "label": 0}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: id '99' is not in .*cvs.jsonl"):
        build_from_log(tmp_path / "cvs.jsonl", tmp_path / "jds.jsonl", tmp_path / "log.jsonl", tmp_path / "out")


def test_build_refuses_one_id_for_two_people_and_names_log_lines_past_blank_ones(tmp_path):
    real_log(tmp_path, n_cvs=20, n_jds=10, per_cv=3)
    paths = [tmp_path / f"{name}.jsonl" for name in ("cvs", "jds", "log")]
    cvs = paths[0].read_text()
    paths[0].write_text(cvs + '{"id": "c1", "cv": "someone else"}\n')  # line 21: c1 is line 2's person
    with pytest.raises(DataError, match=r"cvs.jsonl:21: id 'c1' is already line 2's, with another 'cv'"):
        build_from_log(*paths, tmp_path / "out")
    paths[0].write_text(cvs)
    counts = build_from_log(*paths, tmp_path / "out")
    paths[0].write_text(cvs + '{"id": "c1", "cv": "cv 1"}\n')  # the same row twice is one person: kept once
    assert build_from_log(*paths, tmp_path / "out") == counts
    jds = paths[1].read_text()
    paths[1].write_text(jds + '{"id": "3", "jd": "another job"}\n')  # jd id 3 (an integer) and "3" are one id
    with pytest.raises(DataError, match=r"jds.jsonl:11: id '3' is already line 4's, with another 'jd'"):
        build_from_log(*paths, tmp_path / "out")
    paths[1].write_text(jds)
    paths[2].write_text('{"cv_id": "c0", "jd_id": 0, "label": 1}\n\n{"cv_id": "c0", "jd_id": 77, "label": 0}\n')
    with pytest.raises(DataError, match=r"log.jsonl:3: id '77' is not in"):  # the line as an editor counts it
        build_from_log(*paths, tmp_path / "out")
