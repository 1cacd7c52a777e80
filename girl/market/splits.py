"""The market's files: the application log simulated and cut into the splits every stage reads, as JSONL.

An application log plays the paper's setting: seekers apply by their own taste (they over-reach on salary
and seniority), recruiters accept with a probability rising in f. Accepted pairs train G (SFT); a CV with
both outcomes gives (C, J+, J−) triples for U; seekers never used there give PPO's CVs; held-out seekers
measure. The matcher M of stage 4 learns from rec_train.jsonl, the interactions of the RM split's seekers:
G never learned from them (it is fine-tuned on the SFT split's accepted JDs).

Held-out seekers come in two groups that no stage trains on. Validation seekers (val.jsonl, sft_val, rm_val,
interactions_val) are what the training scripts read while they run: the held-out losses that choose a
checkpoint, PPO's held-out oracle, stage 4's choices. Test seekers (test.jsonl, sft_test, rm_test,
interactions_test) are read only by the final reports (generate.py --eval, train_rec.py's tables), after
every choice is made. The validation seekers are drawn after all the others, so adding them left every
earlier draw of the market as it was.
"""

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from girl.files import write_json, write_jsonl
from girl.market.oracle import oracle_score, reference_jobs
from girl.market.text import LANGS, render_cv, render_jd
from girl.market.world import Job, Seeker, accepted, applications, compatibility, sample_job, sample_seeker

class MarketError(ValueError):
    """A market folder that holds another market than the one asked for; the message says what to pass."""


SPLITS = dict(sft=4000, rm=1500, ppo=600, test=400, val=400)  # seekers per split, drawn in this order
HELD_OUT = ("val", "test")  # seekers of no training split: <name>.jsonl, sft_<name>, rm_<name>, interactions_<name>


def build(out_dir, lang: str = "zh", seed: int = 0, n_jobs: int = 2000, seekers: dict = SPLITS, gap: bool = False) -> dict:
    """Simulate the market and write its splits as JSONL under out_dir; return the counts.

    gap: CVs name the tools a person used instead of skills (girl/market/text.py's TOOLS), so relating a
    CV to a JD needs a learned mapping (the paper's premise). The same seekers, jobs and outcomes, only the CVs' words differ."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    rng = random.Random(seed)
    gap_rng = random.Random(f"{seed}-gap")  # the gap's CV wording draws from its own stream: the same market
    jobs = [sample_job(rng) for _ in range(n_jobs)]
    jd_text = [render_jd(j, lang, rng) for j in jobs]
    files: dict[str, list] = {name: [] for name in (
        "sft_train", "rm_train", "ppo", "interactions_train", "rec_train",
        *(f"{prefix}{part}" for part in HELD_OUT for prefix in ("", "sft_", "rm_", "interactions_")))}
    for split, count in seekers.items():
        for _ in range(count):
            s = sample_seeker(rng)
            cv = render_cv(s, lang, rng)
            if gap:
                cv = render_cv(s, lang, gap_rng, gap=True)
            outcomes = [(i, accepted(s, jobs[i], rng)) for i in applications(s, jobs, rng)]
            pos = [i for i, ok in outcomes if ok]
            neg = [i for i, ok in outcomes if not ok]
            pairs = [{"cv": cv, "jd": jd_text[i]} for i in pos]
            triples = [{"cv": cv, "jd_pos": jd_text[p], "jd_neg": jd_text[n], "seeker": asdict(s)}
                       for p, n in zip(pos, neg)]
            seen = [{"cv": cv, "jd": jd_text[i], "label": int(ok)} for i, ok in outcomes]
            if split == "sft":
                files["sft_train"] += pairs
                files["interactions_train"] += seen
            elif split == "rm":
                files["rm_train"] += triples
                files["interactions_train"] += seen
                files["rec_train"] += seen
            elif split == "ppo":
                files["ppo"].append({"cv": cv, "seeker": asdict(s)})
            else:  # held out from every stage: validation or test
                files[split].append({"cv": cv, "seeker": asdict(s)})
                files[f"sft_{split}"] += pairs
                files[f"rm_{split}"] += triples
                files[f"interactions_{split}"] += seen
    files["jobs"] = [{"jd": t, "job": asdict(j)} for j, t in zip(jobs, jd_text)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "market.json").unlink(missing_ok=True)  # written last: a build cut short leaves no folder ensure() accepts
    for name, rows in files.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    counts = {name: len(rows) for name, rows in files.items()}
    meta = dict(note="synthetic job market made by girl.market; no real people or companies",
                lang=lang, seed=seed, n_jobs=n_jobs, seekers=seekers, counts=counts) | ({"gap": True} if gap else {})
    write_json(out / "market.json", meta)
    return counts


def ensure(out_dir, lang: str = "zh", seed: int | None = 0) -> Path:
    """The market's folder, built on first use (seed None takes a market of any seed, and builds seed 0 if
    there is none). A folder that holds a market of another lang or seed is refused (MarketError), never
    rebuilt in place under the checkpoints trained on it. A gap market stays one; a folder written before its
    current files existed (rec_train.jsonl, the validation split) is rebuilt whole: the same draws, and the
    files of today. market.json is written last: without it (a build cut short) the folder is built again."""
    out = Path(out_dir)
    meta = out / "market.json"
    sizes: dict = {}
    if meta.is_file():
        m = json.loads(meta.read_text(encoding="utf-8"))
        if m.get("lang") != lang or seed not in (None, m.get("seed")):
            asked = lang + ("" if seed is None else f", seed {seed}")
            raise MarketError(f"{meta}: this folder holds the market of lang {m.get('lang')}, seed {m.get('seed')}, not "
                              f"{asked}; give --lang {m.get('lang')} (and --market-seed {m.get('seed')}) to use it, or another "
                              "--market-dir for a new market")
        if all((out / f"{name}.jsonl").is_file() for name in ("rec_train", *HELD_OUT)):
            return out
        sizes = {("test" if k == "eval" else k): v for k, v in m["seekers"].items()}  # "eval" was the test part's name
        sizes.setdefault("val", SPLITS["val"])
        seed, sizes = m["seed"], dict(n_jobs=m["n_jobs"], seekers=sizes, gap=m.get("gap", False))
    seed = 0 if seed is None else seed
    print(f"building the synthetic job market ({lang}, seed {seed}{', gap' if sizes.get('gap') else ''}) in {out}/ ...")
    build(out, lang, seed, **sizes)
    return out


def load_jobs(folder) -> tuple[list[str], list[Job]]:
    """Every job of the market: its JD text and its attributes."""
    rows = [json.loads(line) for line in (Path(folder) / "jobs.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["jd"] for r in rows], [Job.from_json(r["job"]) for r in rows]


def heldout(folder, n: int | None = None, part: str = "test") -> list[dict]:
    """The first n held-out seekers ({"cv", "seeker"}) of the test part (read by final reports only) or
    the validation part (read while training, to choose): never seen by SFT, U or PPO."""
    if part not in HELD_OUT:
        raise ValueError(f"part must be one of {HELD_OUT}, got {part!r}")
    lines = (Path(folder) / f"{part}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def seekers(rows: list[dict]) -> list[Seeker]:
    """The seekers behind rows that carry one (the market's val, test, ppo and rm files)."""
    return [Seeker.from_json(r["seeker"]) for r in rows]


@dataclass
class JudgeBench:
    """What a judge of fit (U, or the lexical reference) is measured on, for held-out seekers of one part:
    their (C, J+, J−) triples; for each seeker its CV, its best job of the market and a random one, and the
    jobs a retrieval score puts first with the oracle's f of each as its gain. oracle(cvs, jds) is f of any
    pair of these seekers' CVs and JD texts: the ceiling every judge stands under."""
    triples: list[dict]
    cvs: list[str]
    best: list[str]
    random: list[str]
    candidates: list[list[str]]
    gains: list[list[float]]
    lang: str
    seeker: dict = field(repr=False)  # CV -> Seeker

    def oracle(self, cvs: list[str], jds: list[str]) -> list[float]:
        return [oracle_score(self.seeker[c], j, self.lang) or 0.0 for c, j in zip(cvs, jds, strict=True)]


def judge_bench(folder, part: str, n: int, retrieve, candidates: int, lang: str, seed: int = 0) -> JudgeBench:
    """The JudgeBench of the first n seekers of a held-out part ("val" while training, "test" for the final
    report) and all its triples; retrieve(cvs, jds) -> [len(cvs), len(jds)] scores picks each seeker's
    candidates (the training-free lexical score, say)."""
    triples = [json.loads(line) for line in (Path(folder) / f"rm_{part}.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = heldout(folder, n, part)
    jds, jobs = load_jobs(folder)
    seeker = {r["cv"]: Seeker.from_json(r["seeker"]) for r in triples + rows}
    cvs = [r["cv"] for r in rows]
    random_job, best_job = reference_jobs([seeker[c] for c in cvs], jobs, seed)
    retrieved = np.argsort(-np.asarray(retrieve(cvs, jds)), axis=1, kind="stable")[:, :candidates]
    attrs = [j.attributes() for j in jobs]
    return JudgeBench(triples, cvs, [jds[i] for i in best_job], [jds[i] for i in random_job],
                      [[jds[i] for i in top] for top in retrieved],
                      [[compatibility(seeker[c], attrs[i]) for i in top] for c, top in zip(cvs, retrieved)], lang, seeker)


def reference_jds(folder, seekers: list[Seeker], seed: int = 0) -> dict[str, list[str]]:
    """The JD texts of reference_jobs, a row each in the evaluation table: a random real JD (the floor)
    and the seeker's best job in the market (the ceiling)."""
    jds, jobs = load_jobs(folder)
    random_jd, best = reference_jobs(seekers, jobs, seed)
    return {"a random market JD": [jds[i] for i in random_jd], "the seeker's best market job": [jds[i] for i in best]}
