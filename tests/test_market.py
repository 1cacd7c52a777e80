"""The synthetic market: the oracle reads back every JD the market writes, and f behaves as documented."""

import json
import math
import random

import pytest

from girl.market import Job, Seeker, build, compatibility, oracle_score, recruiter_prefers, references
from girl.market.text import parse_jd, render_cv, render_jd
from girl.market.world import sample_job, sample_seeker


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_parser_round_trips_every_rendered_jd(lang):
    rng = random.Random(1)
    for _ in range(400):
        job = sample_job(rng)
        text = render_jd(job, lang, rng)
        assert parse_jd(text, lang) == job.attributes(), text


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_unparseable_jds_score_zero(lang):
    rng = random.Random(2)
    seeker, job = sample_seeker(rng), sample_job(rng)
    text = render_jd(job, lang, rng)
    assert oracle_score(seeker, text, lang) is not None
    lines = text.split("\n")
    assert oracle_score(seeker, "\n".join(lines[1:]), lang) is None  # no title
    assert oracle_score(seeker, "", lang) is None
    # a salary range that promises everything is not a real offer
    lo, hi = job.salary
    assert oracle_score(seeker, text.replace(f"{hi:g}", f"{hi * 10:g}", 1).replace(f"{hi / 10:g}", f"{hi:g}", 1),
                        lang) is None


def test_compatibility_terms():
    s = Seeker("software", [("software", 0), ("software", 1), ("software", 2)], years=3, edu=1, city=0, salary=15)
    job = Job("software", 0, 1, [0, 1, 2], min_exp=2, edu=1, city=0, salary=(12, 18)).attributes()
    assert compatibility(s, job) == pytest.approx(1.0)
    assert compatibility(s, {**job, "field": "data"}) == 0.0
    assert compatibility(s, {**job, "city": 1}) == pytest.approx(0.85)
    half_skills = {("software", 0), ("software", 5)}
    assert compatibility(s, {**job, "skills": half_skills}) == pytest.approx(1 - 0.4 * 0.5)
    # under-qualified by 2 years: experience 1 + (-2)/2 = 0; over-qualified by 8 (4 beyond the band): 0.5
    assert compatibility(s, {**job, "min_exp": 5}) == pytest.approx(0.8)
    assert compatibility(Seeker(**{**s.__dict__, "years": 10}), job) == pytest.approx(1 - 0.2 * 0.5)
    # expectation 15 above the range's top 12 by 25%: salary fit 1 - 3·0.25
    assert compatibility(s, {**job, "salary": (8, 12)}) == pytest.approx(1 - 0.15 * 0.75)
    # expectation 15 below the range's bottom 18 by 1/6: salary fit 1 - 2·(1/6)
    assert compatibility(s, {**job, "salary": (18, 24)}) == pytest.approx(1 - 0.15 * (2 / 6))
    # under-qualified by 1 year: experience 1 - 1/2
    assert compatibility(s, {**job, "min_exp": 4}) == pytest.approx(1 - 0.2 * 0.5)
    # education: one level short gets 0.4 of the term, two levels short none, above the requirement all of it
    assert compatibility(s, {**job, "edu": 2}) == pytest.approx(1 - 0.1 * 0.6)
    assert compatibility(s, {**job, "edu": 3}) == pytest.approx(1 - 0.1)
    assert compatibility(s, {**job, "edu": 0}) == pytest.approx(1.0)


def test_recruiter_comparisons_follow_the_fit_gap():
    s = Seeker("software", [("software", 0), ("software", 1), ("software", 2)], years=3, edu=1, city=0, salary=15)
    job = Job("software", 0, 1, [0, 1, 2], min_exp=2, edu=1, city=0, salary=(12, 18))
    rng = random.Random(0)
    good, other_city = (render_jd(j, "en", rng) for j in (job, Job(**{**job.__dict__, "city": 1})))
    f_good, f_other = oracle_score(s, good, "en"), oracle_score(s, other_city, "en")
    assert (f_good, f_other) == pytest.approx((1.0, 0.85))
    n = 4000
    for a, b, gap in ((good, other_city, 0.15), (other_city, good, -0.15), (good, "unreadable", 1.0)):
        wins = sum(recruiter_prefers(s, a, b, "en", rng) for _ in range(n)) / n
        p = 1 / (1 + math.exp(-12 * gap))
        assert abs(wins - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (gap, wins, p)  # within 4 binomial sd
    assert recruiter_prefers(s, good, good, "en", rng) is None  # equally good: no preference recorded
    assert recruiter_prefers(s, "", "unreadable", "en", rng) is None


def test_random_job_comparisons_pit_an_accepted_jd_against_a_random_one(tmp_path):
    from girl.market import load_jobs, random_job_comparisons

    build(tmp_path, "en", seed=0, n_jobs=100, seekers=dict(sft=0, rm=60, ppo=0, test=0, val=0))
    triples = [json.loads(line) for line in (tmp_path / "rm_train.jsonl").read_text().splitlines()]
    jds, jobs = load_jobs(tmp_path)
    field = dict(zip(jds, (j.field for j in jobs)))
    accepted = {}
    for r in triples:
        accepted.setdefault(r["cv"], set()).add(r["jd_pos"])
    out = random_job_comparisons(triples, jds, 3, "en", random.Random(0))
    assert 0.9 * 3 * len(accepted) < len(out) <= 3 * len(accepted)  # ties (equal f) are dropped, and rare
    other_field = 0
    for r in out:
        s = Seeker.from_json(r["seeker"])
        mine = accepted[r["cv"]]
        assert (r["jd_pos"] in mine and r["jd_neg"] in jds) or (r["jd_neg"] in mine and r["jd_pos"] in jds)
        pos, neg = (oracle_score(s, r[k], "en") for k in ("jd_pos", "jd_neg"))
        if field[r["jd_neg"]] != s.field:  # an accepted JD against one of another field (f = 0): it wins
            other_field += 1
            assert r["jd_pos"] in mine and pos > 0
    assert other_field > 0.6 * len(out)  # most random jobs are of another field than the seeker's


def test_cvs_vary_but_carry_the_facts():
    rng = random.Random(3)
    s = sample_seeker(rng)
    zh = {render_cv(s, "zh", rng) for _ in range(20)}
    assert len(zh) > 10  # phrasing, order and optional sections vary
    from girl.market.text import CITIES
    assert all(CITIES[s.city][0] in cv for cv in zh)


def test_build_writes_disjoint_splits(tmp_path):
    counts = build(tmp_path, "en", seed=0, n_jobs=200, seekers=dict(sft=60, rm=30, ppo=10, test=10, val=10))
    assert counts["ppo"] == 10 and counts["test"] == 10 and counts["val"] == 10 and counts["jobs"] == 200
    import json
    read = lambda name: [json.loads(l) for l in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    for name in ("sft_train", "rm_train", "ppo", "test", "val", "jobs"):
        assert counts[name] == len(read(name)), name
    # SFT's pairs are the SFT seekers' accepted applications, in order (8 applications a seeker, SFT's first);
    # each RM triple pairs an accepted and a rejected application of the same RM seeker
    applications = read("interactions_train")
    assert [(r["cv"], r["jd"]) for r in read("sft_train")] == [
        (a["cv"], a["jd"]) for a in applications[: 60 * 8] if a["label"] == 1]
    decided = {(a["cv"], a["jd"]): a["label"] for a in applications[60 * 8 :]}
    assert counts["rm_train"] > 0 and all(decided[(r["cv"], r["jd_pos"])] == 1 and decided[(r["cv"], r["jd_neg"])] == 0
                                          for r in read("rm_train"))
    sft_cvs = {r["cv"] for r in read("sft_train")}
    rm_cvs = {r["cv"] for r in read("rm_train")}
    test, val = {r["cv"] for r in read("test")}, {r["cv"] for r in read("val")}
    held = test | val | {r["cv"] for r in read("ppo")}
    assert not (sft_cvs & rm_cvs) and not (held & (sft_cvs | rm_cvs)) and not (test & val)
    # each held-out part's files hold its own seekers only: validation never reads a test seeker
    for part, other in (("test", val), ("val", test)):
        for prefix in ("sft_", "rm_", "interactions_"):
            assert {r["cv"] for r in read(prefix + part)} <= {r["cv"] for r in read(part)}, prefix + part
            assert not {r["cv"] for r in read(prefix + part)} & other


def test_references_are_the_floor_and_ceiling_found_by_brute_force():
    """The oracle's reference rows, computed here without reference_jobs: for each seeker f of every job of the
    market read back from its JD text; the ceiling is the best of them, the floor the job random.Random(seed)
    draws first for the seeker."""
    rng = random.Random(5)
    seekers = [sample_seeker(rng) for _ in range(30)]
    jobs = [sample_job(rng) for _ in range(80)]
    texts = [render_jd(j, "en", rng) for j in jobs]
    f = [[oracle_score(s, t, "en") for t in texts] for s in seekers]
    assert all(x is not None for row in f for x in row)  # every market JD parses
    draw = random.Random(7)
    floor = sum(row[draw.randrange(len(jobs))] for row in f) / len(seekers)
    ref = references(seekers, jobs, seed=7)
    assert ref["oracle_best_job"] == pytest.approx(sum(max(row) for row in f) / len(seekers), rel=1e-12)
    assert ref["oracle_random_jd"] == pytest.approx(floor, rel=1e-12)
    assert ref["oracle_random_jd"] < ref["oracle_best_job"]


def test_rec_train_holds_the_rm_seekers_interactions_and_no_sft_seeker(tmp_path):
    import json
    build(tmp_path, "en", seed=0, n_jobs=100, seekers=dict(sft=30, rm=20, ppo=5, test=5, val=5))
    read = lambda name: [json.loads(l) for l in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    rec = read("rec_train")
    assert len(rec) == 20 * 8 and len({r["cv"] for r in rec}) == 20  # 8 applications per seeker
    assert rec == read("interactions_train")[30 * 8 :]  # the RM split's seekers come after the SFT split's
    assert not {r["cv"] for r in rec} & {r["cv"] for r in read("sft_train")}


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_gap_market_is_the_same_market_in_other_words(tmp_path, lang):
    import json
    from girl.market.text import FIELDS, TOOLS, _i
    sizes = dict(n_jobs=100, seekers=dict(sft=30, rm=20, ppo=5, test=10, val=10))
    build(tmp_path / "plain", lang, seed=0, **sizes)
    build(tmp_path / "gap", lang, seed=0, gap=True, **sizes)
    read = lambda d, name: [json.loads(l) for l in (tmp_path / d / f"{name}.jsonl").read_text().splitlines()]
    assert read("plain", "jobs") == read("gap", "jobs")
    plain, gap = read("plain", "test"), read("gap", "test")
    assert [r["seeker"] for r in plain] == [r["seeker"] for r in gap]  # the same seekers ...
    for name in ("interactions_train", "interactions_test", "sft_train"):  # ... the same outcomes
        a, b = read("plain", name), read("gap", name)
        assert [(r["jd"], r.get("label")) for r in a] == [(r["jd"], r.get("label")) for r in b]
    skill_names = {s[_i(lang)] for f in FIELDS.values() for s in f["skills"]}
    for p, g in zip(plain, gap):
        s = Seeker.from_json(g["seeker"])
        skills_line = next(line for line in g["cv"].splitlines()
                           if line.startswith(("项目经历", "工作经历", "Projects", "Work history")))
        assert not any(name in skills_line for name in skill_names), skills_line  # no skill named ...
        assert all(any(t in skills_line for t in TOOLS[tuple(k)]) for k in s.skills)  # ... but a tool for each
        assert all(FIELDS[f]["skills"][k][_i(lang)] in p["cv"] for f, k in s.skills)  # the plain CV names them
    assert json.loads((tmp_path / "gap" / "market.json").read_text())["gap"] is True
    assert "gap" not in json.loads((tmp_path / "plain" / "market.json").read_text())


def test_ensure_rebuilds_a_market_written_before_rec_train(tmp_path, capsys):
    from girl.market import ensure
    build(tmp_path, "en", seed=0, n_jobs=50, seekers=dict(sft=5, rm=5, ppo=2, test=2, val=2))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl")}
    (tmp_path / "rec_train.jsonl").unlink()
    ensure(tmp_path, "en", seed=None)
    assert "building" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl")} == before  # the same market, whole again
    ensure(tmp_path, "en", seed=None)
    assert "building" not in capsys.readouterr().out  # complete: left alone


def test_ensure_adds_the_validation_seekers_to_a_market_written_before_them(tmp_path, capsys):
    """A folder of the layout before the validation split (its test seekers called "eval") is rebuilt whole:
    every earlier draw as it was, the test seekers unchanged under their new name, the validation seekers new."""
    import json
    from girl.market import ensure
    old = dict(sft=5, rm=5, ppo=2, test=3)
    build(tmp_path, "en", seed=0, n_jobs=50, seekers=old)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl")}
    meta = json.loads((tmp_path / "market.json").read_text())
    meta["seekers"] = dict(sft=5, rm=5, ppo=2, eval=3)
    (tmp_path / "market.json").write_text(json.dumps(meta))
    validation = [f"{name}.jsonl" for name in ("val", "sft_val", "rm_val", "interactions_val")]
    for name in validation:
        (tmp_path / name).unlink()
        del before[name]
    ensure(tmp_path, "en", seed=None)
    assert "building" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl")}
    assert {k: after[k] for k in before} == before  # every earlier file as it was: the test seekers too
    assert all(after[name] for name in validation)  # and the validation seekers new
    assert len(after["val.jsonl"].splitlines()) == 400  # the default number of validation seekers


def test_a_build_cut_short_is_never_taken_for_a_market(tmp_path, monkeypatch):
    """Ctrl-C in the middle of writing the files: market.json, written last, is gone, so the next ensure()
    builds the folder again rather than read files of two builds."""
    from girl.market import ensure, splits
    build(tmp_path, "en", seed=0, n_jobs=50, seekers=dict(sft=5, rm=5, ppo=2, test=2, val=2))
    (tmp_path / "rec_train.jsonl").unlink()  # an older layout: ensure() rebuilds it in place
    written, write = [], splits.write_jsonl

    def cut_short(path, rows):
        if len(written) == 13:  # every file but jobs.jsonl rewritten
            raise KeyboardInterrupt
        written.append(path)
        write(path, rows)

    monkeypatch.setattr(splits, "write_jsonl", cut_short)
    with pytest.raises(KeyboardInterrupt):
        ensure(tmp_path, "en", seed=0)
    assert len(written) == 13 and not (tmp_path / "market.json").exists()
    builds = []
    monkeypatch.setattr(splits, "build", lambda *a, **k: builds.append(a))
    ensure(tmp_path, "en", seed=None)  # every file ensure() looks for is there, but not of one build: built anew
    assert builds == [(tmp_path, "en", 0)]


@pytest.mark.parametrize("lang, seed", [("zh", None), ("en", 1)])
def test_a_market_of_another_lang_or_seed_is_refused_not_rebuilt(tmp_path, lang, seed):
    """--lang zh or --market-seed 1 with the folder of an en, seed-0 market: the checkpoints trained on it would no
    longer match their data, so the folder is left as it is and the error says what to pass."""
    from girl.market import MarketError, ensure
    build(tmp_path, "en", seed=0, n_jobs=50, seekers=dict(sft=5, rm=5, ppo=2, test=2, val=2))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(MarketError, match=r"holds the market of lang en, seed 0.*give --lang en \(and --market-seed 0\)"):
        ensure(tmp_path, lang, seed)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
