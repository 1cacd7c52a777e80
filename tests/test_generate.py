"""generate.py as a user runs it, on a tiny random G, a perturbed copy of it as "PPO", a tiny U and a tiny
market: one CV, a JSONL batch, ranking with U, the evaluation table, and every bad input it must refuse."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from girl import market, ranking
from girl.cli import prompts_for
from girl.data import right_pad
from girl.evaluation import sample_jds
from girl.lexical import TfIdf
from girl.lm.checkpoint import load_model, save_model
from girl.lm.model import Config, RewardModel, Transformer
from girl.lm.sampling import decoded, generate, response_logprobs, rollout
from girl.lm.tokenizer import Tokenizer
from girl.market.world import compatibility
from girl.reward import u_input, u_scores
from girl.template import prompt_ids

ROOT = Path(__file__).resolve().parents[1]
CV = "Name: Ann Lee\nSkills: Python, SQL\nExperience: 3 years\nCity: Shanghai"


def run(*args, cwd, check=True):
    return subprocess.run([sys.executable, ROOT / "generate.py", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=check, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """data/ (a tiny en market) and ckpt/{sft,ppo,rm} as the pipeline would leave them, ppo the newest."""
    d = tmp_path_factory.mktemp("gen")
    market.build(d / "data", "en", seed=0, n_jobs=60, seekers=dict(sft=30, rm=0, ppo=0, test=12, val=12))
    rows = [json.loads(line) for line in (d / "data" / "sft_train.jsonl").read_text().splitlines()]
    tok = Tokenizer.train([r["cv"] for r in rows] + [r["jd"] for r in rows], 400)
    torch.manual_seed(0)
    config = Config(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64,
                    max_seq_len=256, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    G = Transformer(config)
    U = RewardModel(config)
    for name, model in (("sft", G), ("rm", U), ("ppo", G)):
        if name == "ppo":  # "PPO" moved G's weights, enough that its greedy J′ differ from G's
            with torch.no_grad():
                for w in G.parameters():
                    w.add_(0.2 * torch.randn_like(w))
        out = d / "ckpt" / name
        save_model(out, model, tok)
        (out / "train_args.json").write_text(json.dumps({"lang": "en"}))
    os.utime(d / "ckpt" / "sft" / "config.json", (1e9, 1e9))  # written long before ckpt/ppo
    return d


def test_one_cv_as_text_and_as_json(world):
    r = run("--cv", CV, "--num-return", "2", "--max-new-tokens", "12", cwd=world)
    assert r.stdout.startswith("G: ckpt/ppo (the newer of ckpt/ppo, ckpt/sft)")
    assert "CV (the CV):\n    Name: Ann Lee\n" in r.stdout and "J′ 2/2" in r.stdout
    a = [json.loads(line) for line in run("--cv", CV, "--num-return", "2", "--max-new-tokens", "12", "--json",
                                          cwd=world).stdout.splitlines()]
    assert len(a) == 1 and a[0]["cv"] == CV
    c = json.loads(run("--cv", CV, "--num-return", "2", "--max-new-tokens", "12", "--json", "--seed", "1",
                       cwd=world).stdout)
    # each J′ is what G (ckpt/ppo, the newer) draws at T = 0.7 from --seed for two copies of the prompt
    G, tok = load_model(world / "ckpt" / "ppo"), Tokenizer.from_pretrained(world / "ckpt" / "ppo")
    for seed, row in ((0, a[0]), (1, c)):
        out = generate(G, [prompt_ids(tok, CV, "en")[0]] * 2, 12, eos_id=tok.eos_id, pad_id=tok.pad_or_eos_id,
                       temperature=0.7, generator=torch.Generator().manual_seed(seed))
        _, texts, ended = decoded(tok, out.tokens, out.mask)
        assert row["jds"] == [{"jd": t, "ended": e} for t, e in zip(texts, ended)]
    assert c != a[0]


def test_default_is_the_newest_g_on_a_held_out_market_cv(world, tmp_path):
    r = run("--max-new-tokens", "8", cwd=world)
    assert "G: ckpt/ppo" in r.stdout and "CV (held-out market CV 0):" in r.stdout
    assert "oracle" in r.stdout  # the market knows this seeker, so every J′ gets its ground-truth score
    newer = tmp_path / "w"  # the same world with SFT rerun after PPO
    shutil.copytree(world, newer)
    os.utime(newer / "ckpt" / "ppo" / "config.json", (1e9, 1e9))
    os.utime(newer / "ckpt" / "sft" / "config.json")
    assert run("--max-new-tokens", "8", cwd=newer).stdout.startswith("G: ckpt/sft")


def test_jsonl_batch(world, tmp_path):
    cvs = tmp_path / "cvs.jsonl"
    cvs.write_text("".join(json.dumps({"id": f"s{i}", "cv": f"{CV}\nNo. {i}"}) + "\n" for i in range(5)))
    r = run("--input", cvs, "--output", tmp_path / "out" / "jds.jsonl", "--num-return", "3", "--batch-size", "6",
            "--max-new-tokens", "8", cwd=world)
    assert "5/5 CVs" in r.stderr  # progress, batch by batch
    out = [json.loads(line) for line in (tmp_path / "out" / "jds.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [f"s{i}" for i in range(5)]
    assert all(len(o["jds"]) == 3 and o["cv"].endswith(f"No. {i}") for i, o in enumerate(out))


def test_an_interrupted_batch_resumes_where_it_stopped(world, tmp_path):
    """--output is rewritten (atomically) after every batch; killed mid-run (SIGKILL, nothing to clean up), the
    file holds whole CVs only, and --resume writes exactly what an uninterrupted run writes."""
    cvs = tmp_path / "cvs.jsonl"
    cvs.write_text("".join(json.dumps({"id": i, "cv": f"{CV}\nNo. {i}"}) + "\n" for i in range(40)))
    common = ["--input", cvs, "--num-return", "2", "--batch-size", "4", "--max-new-tokens", "8"]
    run(*common, "--output", tmp_path / "whole.jsonl", cwd=world)
    whole = (tmp_path / "whole.jsonl").read_text()
    proc = subprocess.Popen([sys.executable, ROOT / "generate.py", *map(str, common), "--output", tmp_path / "cut.jsonl"],
                            cwd=world, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stderr:
        if line.startswith("2/40 CVs"):
            proc.kill()
            break
    proc.wait(timeout=60)
    cut = (tmp_path / "cut.jsonl").read_text()
    assert 0 < len(cut.splitlines()) < 40 and whole.startswith(cut)  # whole lines, whole batches, all correct
    r = run(*common, "--output", tmp_path / "cut.jsonl", "--resume", cwd=world)
    assert f"resuming: {tmp_path / 'cut.jsonl'} holds {len(cut.splitlines())} of 40 CVs" in r.stdout
    assert (tmp_path / "cut.jsonl").read_text() == whole
    other = ["--input", cvs, "--num-return", "3", "--batch-size", "4", "--max-new-tokens", "8"]
    r = run(*other, "--output", tmp_path / "cut.jsonl", "--resume", cwd=world, check=False)
    assert r.returncode == 2 and "was not written from" in r.stderr and "--num-return" in r.stderr


def test_rank_with_u_sorts_by_u_and_reports_its_scores(world):
    r = run("--cv", CV, "--num-return", "6", "--max-new-tokens", "16", "--rank-with", "ckpt/rm", "--json", cwd=world)
    jds = json.loads(r.stdout)["jds"]
    scores = [jd["u_score"] for jd in jds]
    assert scores == sorted(scores, reverse=True)
    assert len({jd["jd"] for jd in jds}) > 1  # sampled, not six copies
    U, tok = load_model(world / "ckpt" / "rm", RewardModel), Tokenizer.from_pretrained(world / "ckpt" / "rm")
    with torch.no_grad():
        for jd in jds:  # U(C, J′) computed directly, one sequence without padding
            ids = u_input(tok, CV, jd["jd"], "en", U.config.max_seq_len)[0]
            direct = U(*right_pad([ids], tok.pad_id)).item()
            assert jd["u_score"] == pytest.approx(direct, rel=1e-5, abs=1e-5)


def test_a_cv_longer_than_the_context_is_cut_with_a_notice(world):
    long_cv = CV + "\nSkills: " + ", ".join(["Python", "SQL", "Tableau"] * 60)
    r = run("--cv", long_cv, "--max-new-tokens", "16", "--json", cwd=world)
    assert "notice: the CV has" in r.stderr and "the rest is not read" in r.stderr
    assert len(json.loads(r.stdout)["jds"]) == 1


def bad_tokenizer(world, tmp_path):
    folder = tmp_path / "g-other-tok"
    shutil.copytree(world / "ckpt" / "sft", folder)
    shutil.copy(ROOT / "tests" / "fixtures" / "gpt2-tokenizer" / "tokenizer.json", folder)  # 50,257 ids; G has 400
    (folder / "tokenizer_config.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["girl_tokenizer_vocab"]  # a folder from elsewhere: no record of G's vocabulary, so the sizes must tell
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("case", ["empty cv", "missing cv file", "empty cv file", "bad jsonl line", "no checkpoint",
                                  "missing --ckpt", "missing U", "tokenizer of another model", "eval without U",
                                  "eval with top-k"])
def test_bad_input_is_refused_and_nothing_is_written(world, tmp_path, case):
    g = world / "ckpt" / "sft"
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "cvs.jsonl").write_text(json.dumps({"cv": CV}) + "\n" + json.dumps({"cv": ""}) + "\n")
    args, message = {
        "empty cv": (["--ckpt", g, "--cv", "  "], "--cv: the CV is empty"),
        "missing cv file": (["--ckpt", g, "--cv-file", "nope.txt"], "nope.txt: no such file"),
        "empty cv file": (["--ckpt", g, "--cv-file", "empty.txt"], "empty.txt: the CV is empty"),
        "bad jsonl line": (["--ckpt", g, "--input", "cvs.jsonl", "--output", "out.jsonl"],
                           "cvs.jsonl:2: field 'cv' is empty"),
        "no checkpoint": (["--cv", CV], "no generator in ckpt/ppo or ckpt/sft; run python train_sft.py first"),
        "missing --ckpt": (["--ckpt", tmp_path / "x" / "sft", "--cv", CV], "run python train_sft.py first"),
        "missing U": (["--ckpt", g, "--cv", CV, "--rank-with", tmp_path / "x" / "rm"], "run python train_rm.py first"),
        "tokenizer of another model": (["--ckpt", bad_tokenizer(world, tmp_path), "--cv", CV],
                                       "the tokenizer does not belong to this model"),
        "eval without U": (["--eval", "--sft", g], "ckpt/rm: no checkpoint of U; run python train_rm.py first"),
        "eval with top-k": (["--eval", "--sft", g, "--top-k", "5"], "drop --greedy, --top-k and --top-p"),
    }[case]
    before = sorted(tmp_path.rglob("*"))
    r = run(*args, cwd=tmp_path, check=False)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_eval_table(world, tmp_path):
    r = run("--eval", "--eval-cvs", "8", "--best-of", "3", "--max-new-tokens", "12", "--eval-out", tmp_path / "e",
            cwd=world)
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    rows = {row["system"]: row for row in result["rows"]}
    assert list(rows) == ["SFT (G after stage 1)", "SFT, greedy", "PPO (G after stage 3)", "PPO, greedy",
                          "best-of-3 on SFT, ranked by U", "a random market JD", "the seeker's best market job"]
    assert rows["SFT (G after stage 1)"]["kl_to_sft"] == 0.0 and rows["SFT, greedy"]["kl_to_sft"] is None
    # rows recomputed here from the checkpoints: U's mean on each G's greedy J′, and the PPO row's KL to SFT,
    # Σ_t log π_ppo − log π_sft over J′ drawn from PPO at T = 0.7 from --seed 0, averaged over the CVs
    held = market.heldout(world / "data", 8)
    cvs, seekers = [r["cv"] for r in held], market.seekers(held)
    tok, U = Tokenizer.from_pretrained(world / "ckpt" / "sft"), load_model(world / "ckpt" / "rm", RewardModel)
    sft, ppo = load_model(world / "ckpt" / "sft"), load_model(world / "ckpt" / "ppo")
    prompts = prompts_for(tok, sft.config, cvs, [f"CV {i}" for i in range(8)], "en", 12)  # cut to fit, as generate.py does
    greedy = {}
    for name, G in (("SFT", sft), ("PPO", ppo)):
        out = generate(G, prompts, 12, eos_id=tok.eos_id, pad_id=tok.pad_or_eos_id, greedy=True)
        texts = greedy[name] = decoded(tok, out.tokens, out.mask)[1]
        assert rows[f"{name}, greedy"]["u_score"] == pytest.approx(u_scores(U, tok, cvs, texts, "en").mean().item(),
                                                                   rel=1e-6), name
        assert rows[f"{name}, greedy"]["oracle"] == pytest.approx(
            sum(market.oracle_score(s, t, "en") or 0.0 for s, t in zip(seekers, texts)) / 8, rel=1e-12), name
    assert greedy["SFT"] != greedy["PPO"]  # so that the rows tell the two models apart
    # best-of-3: three J′ per CV sampled from SFT at T = 0.7 from --seed 0, and the one U scores highest
    s = sample_jds(sft, tok, [p for p in prompts for _ in range(3)], 12, 0.7, torch.Generator().manual_seed(0))
    u = u_scores(U, tok, [c for c in cvs for _ in range(3)], s.texts, "en").view(8, 3)
    assert rows["best-of-3 on SFT, ranked by U"]["u_score"] == pytest.approx(u.max(1).values.mean().item(), rel=1e-6)
    assert u.max(1).values.mean() > u[:, 0].mean()  # so that keeping the first sample would differ
    batch = rollout(ppo, prompts, 12, tok.eos_id, tok.pad_or_eos_id, 0.7, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = response_logprobs(ppo, batch.ids, batch.attention_mask, batch.prompt_len, 0.7)[0]
        logp_sft = response_logprobs(sft, batch.ids, batch.attention_mask, batch.prompt_len, 0.7)[0]
    kl = ((logp - logp_sft) * batch.mask).sum(-1).mean().item()
    assert rows["PPO (G after stage 3)"]["kl_to_sft"] == pytest.approx(kl, rel=1e-5) and kl > 0
    # the references are the market's own JDs, found here by brute force over every job: the ceiling is each
    # seeker's best f over the market, the floor f of the job random.Random(--seed) draws for it
    jds, job_list = market.load_jobs(world / "data")
    jobs = [job.attributes() for job in job_list]
    parsed = dict(zip(jds, jobs))
    best = [max(compatibility(s, job) for job in jobs) for s in seekers]
    rng = random.Random(0)
    drawn = [compatibility(s, jobs[rng.randrange(len(jobs))]) for s in seekers]
    assert rows["the seeker's best market job"]["oracle"] == pytest.approx(sum(best) / 8, rel=1e-12)
    assert rows["a random market JD"]["oracle"] == pytest.approx(sum(drawn) / 8, rel=1e-12)
    assert rows["a random market JD"]["parse_rate"] == rows["the seeker's best market job"]["parse_rate"] == 1.0
    # U as a judge of fit on the same test seekers: the seeker's best job against the random one above, and the
    # market's test triples, beside the lexical reference
    best_jd = [max(jds, key=lambda t: compatibility(s, parsed[t])) for s in seekers]
    rng = random.Random(0)
    random_jd = [jds[rng.randrange(len(jds))] for _ in seekers]
    share = ranking.ordered_share(u_scores(U, tok, cvs, best_jd, "en"), u_scores(U, tok, cvs, random_jd, "en"))
    assert rows["the seeker's best market job"]["u_above"] == {"than": "a random market JD", "share": share}
    judged = result["judges"]
    assert judged["jobs"]["U"]["best_vs_random"] == share and judged["jobs"]["n_seekers"] == 8
    triples = [json.loads(line) for line in (world / "data" / "rm_test.jsonl").read_text().splitlines()]
    t_cvs = [t["cv"] for t in triples]
    lexical = TfIdf().fit(jds)
    for name, f in (("U", lambda c, j: u_scores(U, tok, c, j, "en").numpy()), ("lexical C→J", lexical.cosine)):
        right = ranking.ordered(f(t_cvs, [t["jd_pos"] for t in triples]), f(t_cvs, [t["jd_neg"] for t in triples]))
        assert judged["triples"][name]["accuracy"] == pytest.approx(right.mean(), abs=1e-12), name
    md = (tmp_path / "e" / "eval.md").read_text()
    assert "| | U's score | oracle | parse rate | distinct-2 | mean length | KL to SFT |" in md and md in r.stdout
    assert f"U scores the seeker's best market job above a random market JD for {share:.1%} of these CVs." in md
    assert "**U as a judge of fit, test seekers**" in md and "| U - lexical C→J (95% CI over CVs) |" in md
    assert len(result["examples"]) == 3 and set(result["examples"][0]["jds"]) == {"SFT", "PPO", "best-of-3"}


def test_eval_of_sft_against_itself_is_the_sft_row(world, tmp_path):
    """PPO = SFT: the same seed samples the same J′, so the two rows agree and KL to SFT is exactly 0."""
    run("--eval", "--eval-cvs", "8", "--best-of", "2", "--max-new-tokens", "12", "--ppo", "ckpt/sft",
        "--eval-out", tmp_path / "e", cwd=world)
    sft, sft_greedy, ppo, ppo_greedy = json.loads((tmp_path / "e" / "eval.json").read_text())["rows"][:4]
    assert ppo["kl_to_sft"] == 0.0
    for key in ("u_score", "oracle", "parse_rate", "distinct_2", "length"):
        assert ppo[key] == sft[key] and ppo_greedy[key] == sft_greedy[key], key
