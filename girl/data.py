"""Users' data: JSONL files, checked line by line, and the SFT examples made from them.

Schemas (one JSON object per line; other keys are ignored):

    SFT            {"cv": str, "jd": str}                        a CV and a JD it was matched with
    RM             {"cv": str, "jd_pos": str, "jd_neg": str}     recruiter accepted jd_pos, rejected jd_neg
    PPO            {"cv": str}                                   CVs never used in SFT or RM
    interactions   {"cv": str, "jd": str, "label": 0 or 1}       a recruiter's decision (stage 4's data)
    jobs           {"jd": str}                                   real jobs to recommend (generate.py --recommend)

An interaction log (tables of CVs and JDs, plus {cv_id, jd_id, label} rows) becomes these splits with

    python -m girl.data build --cvs cvs.jsonl --jds jds.jsonl --log log.jsonl --out data/
"""

import argparse
import json
import random
from pathlib import Path

import torch

from girl.files import write_jsonl
from girl.template import prompt_ids

SCHEMAS = {"sft": ("cv", "jd"), "rm": ("cv", "jd_pos", "jd_neg"), "ppo": ("cv",),
           "interactions": ("cv", "jd", "label"), "jobs": ("jd",), "cvs": ("id", "cv"), "jds": ("id", "jd"),
           "log": ("cv_id", "jd_id", "label")}
IGNORE = -100  # label of positions the loss skips: the prompt and the padding


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


def read_jsonl(path, schema: str, line_numbers: bool = False) -> list:
    """Every row of a JSONL file, checked against SCHEMAS[schema]; with line_numbers, (line, row) pairs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # the BOM Excel and Windows tools write first
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{n}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object with fields {', '.join(SCHEMAS[schema])}")
        for field in SCHEMAS[schema]:
            value = row.get(field)
            if field == "label" and value not in (0, 1):
                raise DataError(f"{path}:{n}: field 'label' must be 0 or 1, got {value!r}")
            if field in ("id", "cv_id", "jd_id") and not isinstance(value, (str, int)):
                raise DataError(f"{path}:{n}: field {field!r} is missing (a string or integer id)")
            if field not in ("label", "id", "cv_id", "jd_id"):
                if field not in row:
                    raise DataError(f"{path}:{n}: field {field!r} is missing")
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{path}:{n}: field {field!r} is empty or not a string")
        rows.append((n, row) if line_numbers else row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def id_table(path, schema: str) -> dict[str, str]:
    """{id: text} of a cvs or jds table. An id is a person or a job: one given to two different texts would
    merge two people's applications, so it is refused (the same row written twice is kept once). Ids are
    compared as strings, as the log's cv_id and jd_id are: 7 and "7" are one id."""
    field = SCHEMAS[schema][1]
    table, line_of = {}, {}
    for n, row in read_jsonl(path, schema, line_numbers=True):
        key = str(row["id"])
        if key in table and table[key] != row[field]:
            raise DataError(f"{path}:{n}: id {key!r} is already line {line_of[key]}'s, with another {field!r}; "
                            f"give each {field.upper()} an id of its own")
        table.setdefault(key, row[field])
        line_of.setdefault(key, n)
    return table


def sft_example(tok, cv: str, jd: str, lang: str, max_len: int) -> tuple[dict, bool, bool]:
    """input_ids and labels of one SFT example; whether the CV and whether the JD were cut to fit.

    labels are IGNORE on the prompt and the JD's tokens plus a final EOS elsewhere: G learns to write
    the JD and to stop. They are built from the prompt length, never by comparing ids with pad_id,
    so a tokenizer whose pad is its EOS still learns the EOS.
    """
    target = tok.encode(jd) + [tok.eos_id]
    prompt, _ = prompt_ids(tok, cv, lang)
    cv_cut = jd_cut = False
    if len(prompt) + len(target) > max_len:  # cut the CV first, keeping at least a quarter of max_len for it
        overhead = len(prompt) - len(tok.encode(cv))
        if overhead >= max_len:
            raise ValueError(f"the prompt template alone is {overhead} tokens, max_len is {max_len}")
        budget = max(max_len - len(target) - overhead, min(max_len // 4, max_len - overhead))
        prompt, cv_cut = prompt_ids(tok, cv, lang, max_cv_tokens=budget)
    if len(prompt) + len(target) > max_len:  # still too long: cut the JD's tail (it then has no EOS)
        target = target[: max_len - len(prompt)]
        jd_cut = True
    ids = prompt + target
    return {"input_ids": ids, "labels": [IGNORE] * len(prompt) + target}, cv_cut, jd_cut


def sft_examples(tok, rows: list[dict], lang: str, max_len: int) -> tuple[list[dict], int, int]:
    """sft_example of every {"cv", "jd"} row; and how many CVs and how many JDs were cut to fit max_len."""
    out, cv_cut, jd_cut = [], 0, 0
    for r in rows:
        example, a, b = sft_example(tok, r["cv"], r["jd"], lang, max_len)
        out.append(example)
        cv_cut, jd_cut = cv_cut + a, jd_cut + b
    return out, cv_cut, jd_cut


def right_pad(seqs: list[list[int]], pad_id: int):
    """input_ids and attention_mask [B, max_len] of token lists, padded on the right."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return ids, mask


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-pad a batch: input_ids, attention_mask, labels (IGNORE on padding)."""
    ids, mask = right_pad([e["input_ids"] for e in examples], pad_id)
    labels, _ = right_pad([e["labels"] for e in examples], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------- interaction log -> splits

FRACTIONS = dict(test=0.1, val=0.1, ppo=0.1, rec=0.2)  # shares of the CVs; the rest is G's (SFT)


def build_from_log(cvs_path, jds_path, log_path, out_dir, seed: int = 0, fractions: dict = FRACTIONS) -> dict:
    """Split an interaction log the way the market is split, by CV, so that no CV is in two parts:

        test   held out from every stage: sft_test, rm_test, interactions_test, test.jsonl (final reports only)
        val    held out from every stage: sft_val, rm_val, interactions_val, val.jsonl (what chooses checkpoints)
        ppo    prompts only (ppo.jsonl)
        rec    M's training seekers (rec_train.jsonl), whom G never learned from; their (J+, J−) triples go
               to rm_train
        rest   G's: accepted JDs to sft_train, triples to rm_train

    A real log has few accepted applications, and a part without any is useless (M cannot learn from
    rejections alone, nor be measured on them). So the CVs with an accepted application and the others are
    split separately, each by the same fractions: every part gets its share of both.
    Returns the rows of each file and the accepted applications of each part ("positives").
    """
    cvs, jds = id_table(cvs_path, "cvs"), id_table(jds_path, "jds")
    by_cv: dict[str, list] = {}
    for n, row in read_jsonl(log_path, "log", line_numbers=True):
        cv_id, jd_id = str(row["cv_id"]), str(row["jd_id"])
        for table, key, path in ((cvs, cv_id, cvs_path), (jds, jd_id, jds_path)):
            if key not in table:
                raise DataError(f"{log_path}:{n}: id {key!r} is not in {path}")
        by_cv.setdefault(cv_id, []).append((jd_id, row["label"]))
    rng = random.Random(seed)
    part_of: dict[str, str] = {}
    for stratum in (True, False):  # CVs with an accepted application, then the others
        order = sorted(c for c in by_cv if any(y for _, y in by_cv[c]) == stratum)
        rng.shuffle(order)
        start = 0
        for part, share in fractions.items():
            n = round(len(order) * share)
            part_of |= dict.fromkeys(order[start : start + n], part)
            start += n
        part_of |= dict.fromkeys(order[start:], "sft")
    files: dict[str, list] = {name: [] for name in (
        "sft_train", "rm_train", "interactions_train", "rec_train", "ppo",
        *(f"{prefix}{part}" for part in ("val", "test") for prefix in ("", "sft_", "rm_", "interactions_")))}
    positives = dict.fromkeys(("sft", "rec", "val", "test"), 0)
    for c, part in part_of.items():
        cv = cvs[c]
        pos = [jds[j] for j, y in by_cv[c] if y == 1]
        neg = [jds[j] for j, y in by_cv[c] if y == 0]
        seen = [{"cv": cv, "jd": jds[j], "label": y} for j, y in by_cv[c]]
        triples = [{"cv": cv, "jd_pos": p, "jd_neg": q} for p, q in zip(pos, neg)]
        if part == "ppo":
            files["ppo"].append({"cv": cv})
            continue
        positives[part] += len(pos)
        if part in ("val", "test"):
            files[part].append({"cv": cv})
            files[f"sft_{part}"] += [{"cv": cv, "jd": j} for j in pos]
            files[f"rm_{part}"] += triples
            files[f"interactions_{part}"] += seen
            continue
        files["rm_train"] += triples
        files["interactions_train"] += seen
        if part == "rec":
            files["rec_train"] += seen
        else:
            files["sft_train"] += [{"cv": cv, "jd": j} for j in pos]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    return {name: len(rows) for name, rows in files.items()} | {"positives": positives}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Turn an interaction log into GIRL's training splits.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="split cvs/jds tables and a {cv_id, jd_id, label} log by CV")
    b.add_argument("--cvs", required=True, help='JSONL of {"id", "cv"}')
    b.add_argument("--jds", required=True, help='JSONL of {"id", "jd"}')
    b.add_argument("--log", required=True, help='JSONL of {"cv_id", "jd_id", "label": 0 or 1}')
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--seed", type=int, default=0, help="seed of the split by CV")
    for part, what in (("test", "held out for the final reports only"), ("val", "held out to choose checkpoints"),
                       ("ppo", "kept for PPO prompts only"), ("rec", "M's training seekers, whom G never learns from")):
        b.add_argument(f"--{part}-frac", type=float, default=FRACTIONS[part],
                       help=f"share of CVs {what} (default: {FRACTIONS[part]:g})")
    a = p.parse_args()
    shares = {part: getattr(a, f"{part}_frac") for part in FRACTIONS}
    if not all(0 <= v < 1 for v in shares.values()) or sum(shares.values()) >= 1:
        p.error(f"each --*-frac must be in [0, 1) and together below 1 (G needs CVs too), got {shares}")
    try:
        counts = build_from_log(a.cvs, a.jds, a.log, a.out, a.seed, shares)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    print(json.dumps(counts))
    print("accepted applications per part: " + ", ".join(f"{k} {v}" for k, v in counts["positives"].items()))
