"""Write the job description J′ that suits a job seeker's CV with the generator G, and check each J′ with
the reward model U before recommending it (GIRL §3.4, "validate suitability in advance").

    python generate.py                                      # G = the newest of ckpt/ppo, ckpt/sft; a held-out market CV
    python generate.py --cv "Name: ... Skills: ..."         # your CV (or --cv-file cv.txt)
    python generate.py --num-return 8 --rank-with ckpt/rm   # best-of-8: every J′ scored by U, best first
    python generate.py --input cvs.jsonl --output out.jsonl # a batch: one {"cv"} (+ optional "id") per line
    python generate.py --eval                               # the evaluation table of every stage
    python generate.py --recommend 10                       # J′, then the 10 real jobs M ranks first (train_rec.py)

--eval samples J′ for the same held-out CVs with the same seed from the SFT model, the PPO model, and
best-of-N on SFT ranked by U, and sets them beside two references from the market: a random real JD and
the seeker's best job. Columns: U's score, the oracle (the market's ground truth, an unreadable J′ scoring
0), parse rate, distinct-2, mean length, KL to SFT. Writes EVAL_OUT/eval.json and EVAL_OUT/eval.md.
"""

import json
import sys
import time
from pathlib import Path

import torch

from girl import evaluation, market
from girl.cli import (COUNT, COUNT0, FINITE, MAKES, PROBABILITY_MASS, check_out, fail, judge_u, log, newest_generator,
                      open_model, parser, prompts_for, setup)
from girl.data import DataError, read_jsonl
from girl.files import CheckpointError, atomic_dir, write_json, write_jsonl
from girl.lm.checkpoint import train_args
from girl.lm.model import RewardModel, Transformer
from girl.lm.sampling import decoded, generate
from girl.lm.tokenizer import Tokenizer
from girl.recommend import cv_features, encode_all, jprime_features, load_matcher, weights_digest
from girl.reward import u_scores
from girl.template import TEMPLATE

p = parser(__doc__)
# Models
p.add_argument("--ckpt", help="G: a local HF folder or hub id (default: the newer of ckpt/ppo and ckpt/sft)")
p.add_argument("--rank-with", metavar="U", help="score every J′ with this reward model and print them best first "
                                                 "(default: off; ckpt/rm with --eval)")
# Input: one of --cv, --cv-file, --input; default a held-out CV of the market
p.add_argument("--cv", help="the CV as text")
p.add_argument("--cv-file", help="a UTF-8 text file holding one CV")
p.add_argument("--input", help='JSONL of CVs, one {"cv": ...} per line (an "id" is copied to the output)')
p.add_argument("--output", help="write the results of --input as JSONL here, batch by batch (default: print them)")
p.add_argument("--resume", action="store_true", help="--input/--output: keep the CVs --output already holds (an "
                                                     "interrupted batch run) and go on from the next one")
p.add_argument("--example", type=COUNT0, default=0, help="with no CV given: which held-out market CV (default: 0)")
p.add_argument("--market-dir", default="data", help="folder of the synthetic market, built on first use (default: data)")
p.add_argument("--lang", choices=list(TEMPLATE), help="prompt language (default: the one G was trained with, else zh)")
# Sampling
p.add_argument("--num-return", type=COUNT, default=1, help="J′ per CV (default: 1); with --rank-with, best-of-N")
p.add_argument("--temperature", type=FINITE, default=0.7, help="softmax temperature (default: 0.7, PPO's)")
p.add_argument("--top-k", type=COUNT, help="sample among the k most likely tokens only (default: all)")
p.add_argument("--top-p", type=PROBABILITY_MASS, help="sample from the smallest set of tokens with this much probability (default: 1)")
p.add_argument("--greedy", action="store_true", help="always take the most likely token (one J′ per CV)")
p.add_argument("--max-new-tokens", type=COUNT, default=128, help="J′ length limit in tokens (default: 128)")
p.add_argument("--seed", type=COUNT0, default=0, help="sampling seed; the same seed writes the same J′ (default: 0)")
p.add_argument("--batch-size", type=COUNT, default=64, help="sequences sampled at once (default: 64)")
# Recommendation (stage 4)
p.add_argument("--recommend", type=COUNT, metavar="K", help="also rank real jobs with the matcher M, reading J′, and "
                                                          "show the top K (default: off)")
p.add_argument("--matcher", default="ckpt/rec/m", help="--recommend: M's folder, as train_rec.py writes it "
                                                       "(default: ckpt/rec/m); its generator is G unless --ckpt")
p.add_argument("--jobs", help='--recommend: JSONL of real jobs, one {"jd": ...} per line (an "id" is copied) '
                              "(default: the market's jobs.jsonl)")
# Output
p.add_argument("--json", action="store_true", help="print one JSON object per CV instead of text")
# Evaluation
p.add_argument("--eval", action="store_true", help="evaluate SFT, PPO, best-of-N and the references; write the table")
p.add_argument("--sft", default="ckpt/sft", help="--eval: the SFT model (default: ckpt/sft)")
p.add_argument("--ppo", default="ckpt/ppo", help="--eval: the PPO model; skipped if absent (default: ckpt/ppo)")
p.add_argument("--eval-data", help='--eval: JSONL of held-out {"cv"} (+ "seeker" for the oracle) (default: the market\'s)')
p.add_argument("--eval-cvs", type=COUNT, default=200, help="--eval: how many held-out CVs (default: 200)")
p.add_argument("--best-of", type=COUNT, default=8, help="--eval: N of best-of-N on SFT ranked by U (default: 8)")
p.add_argument("--eval-out", default="ckpt/eval", help="--eval: folder for eval.json and eval.md (default: ckpt/eval)")
args = p.parse_args()

if sum(x is not None for x in (args.cv, args.cv_file, args.input)) > 1:
    fail("give one of --cv, --cv-file and --input")
if args.output and not args.input:
    fail("--output writes the results of --input; give --input cvs.jsonl too (or use --json for one CV)")
if args.input and args.output and Path(args.input).resolve() == Path(args.output).resolve():
    fail(f"--output {args.output} is --input: it would overwrite the CVs; write somewhere else")
if args.output:
    check_out(args.output, "--output", folder=False)
if args.resume and not (args.input and args.output):
    fail("--resume goes on with an interrupted --input/--output run; give both")
if args.greedy and args.num_return > 1:
    fail("--greedy writes the same J′ every time; --num-return N needs sampling (drop --greedy)")
if args.recommend is not None and args.eval:
    fail("--recommend K is not a part of --eval (train_rec.py measures M)")
if args.eval and (args.greedy or args.top_k or args.top_p):
    fail("--eval samples every system from the plain softmax at --temperature (the policy PPO trained and KL "
         "is measured for); drop --greedy, --top-k and --top-p")
if not args.greedy and args.temperature <= 0:
    fail(f"--temperature must be > 0 (got {args.temperature}); use --greedy for argmax decoding")

run = setup(distributed=False)
device, autocast = run.device, run.autocast

# ----------------------------------------------------------------------------- --eval: the table of every stage
if args.eval:
    t_start = time.time()
    U, tok_u = open_model(args.rank_with or "ckpt/rm", RewardModel, "U", device)
    G_sft, tok = open_model(args.sft, Transformer, "the SFT model", device)
    systems = [("SFT", G_sft, None)]
    if Path(args.ppo).exists() or not MAKES.get(Path(args.ppo).name):
        G_ppo, tok_ppo = open_model(args.ppo, Transformer, "the PPO model", device)
        if not tok_ppo.same_as(tok):
            fail(f"{args.ppo} has another tokenizer than {args.sft}: KL to SFT needs the same tokens")
        systems.append(("PPO", G_ppo, G_sft))
    else:
        log(f"{args.ppo}: no PPO model (python train_ppo.py --init ckpt/ makes it); its row is skipped")
    args.lang = args.lang or train_args(args.sft).get("lang") or "zh"
    try:
        rows = (read_jsonl(args.eval_data, "ppo")[: args.eval_cvs] if args.eval_data else
                market.heldout(market.ensure(args.market_dir, args.lang, seed=None), args.eval_cvs))
    except (DataError, market.MarketError) as e:
        fail(str(e))
    on_market = all("seeker" in r for r in rows)
    oracle = market.Oracle(market.seekers(rows), args.lang) if on_market else None
    references = market.reference_jds(args.market_dir, oracle.seekers, args.seed) if on_market and not args.eval_data else {}
    cvs = [r["cv"] for r in rows]
    prompts = prompts_for(tok, G_sft.config, cvs, [f"held-out CV {i}" for i in range(len(rows))], args.lang,
                          args.max_new_tokens)
    log(f"evaluating on {len(rows)} held-out CVs" + (" (with the oracle)" if on_market else "")
        + f"; U = {args.rank_with or 'ckpt/rm'}")
    results, examples = evaluation.table(
        systems, U, tok_u, tok, cvs, prompts, args.lang, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, seed=args.seed, best_of=args.best_of, batch_size=args.batch_size,
        autocast=autocast, oracle=oracle, references=references)
    settings = {"cvs": len(rows), "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                "seed": args.seed, "best_of": args.best_of, "sft": args.sft,
                "ppo": args.ppo if len(systems) > 1 else None, "rm": args.rank_with or "ckpt/rm", "lang": args.lang,
                "device": str(device)}
    table = evaluation.markdown(results, settings, examples)
    judged = None
    if on_market and not args.eval_data:  # U itself as a judge of fit, beside the lexical reference and the oracle
        judged = judge_u(U, tok_u, args.market_dir, "test", args.eval_cvs, 50, args.lang, args.seed, autocast)
        table += "\n" + evaluation.judges_markdown(judged, "U as a judge of fit, test seekers")
    with atomic_dir(args.eval_out) as tmp:
        write_json(tmp / "eval.json", {"settings": settings, "rows": results, "examples": examples, "judges": judged,
                                       "seconds": time.time() - t_start})
        (tmp / "eval.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    log(f"wrote {args.eval_out}/eval.json and eval.md ({time.time() - t_start:.0f}s)")
    sys.exit(0)

# ----------------------------------------------------------------------------- generate J′ for CVs

M, made_by = None, None  # M, and the G whose J′ it learned to read, when that G is the one used
if args.recommend:
    if not Path(args.matcher, "matcher.json").is_file():
        fail(f"{args.matcher}: no matcher; run python train_rec.py first (or pass --matcher DIR)")
    try:
        M, tok_m, m_args = load_matcher(args.matcher, device), Tokenizer.from_pretrained(args.matcher), train_args(args.matcher)
    except CheckpointError as e:
        fail(str(e))
    if args.ckpt is None:
        made_by = args.ckpt = m_args.get("generator")
        if made_by is None:
            fail(f"{Path(args.matcher) / 'train_args.json'} does not name the G whose J′ M learned to read; "
                 "train M again with python train_rec.py, or pass that G with --ckpt")
    elif m_args.get("generator") not in (None, args.ckpt):
        print(f"note: M learned to read the J′ of {m_args['generator']}; --ckpt {args.ckpt} writes them here",
              file=sys.stderr)
    if not args.greedy and args.num_return == 1 and m_args.get("best_of", 1) == 1:
        args.greedy = True  # and greedy J′, as train_rec.py makes them
ckpt = args.ckpt or newest_generator()
G, tok = open_model(ckpt, Transformer, "G", device)
if made_by and m_args.get("generator_sha256") not in (None, weights_digest(made_by)):
    fail(f"{ckpt} is not the G M was trained with: its weights changed after train_rec.py read its J′; "
         "train M again with python train_rec.py (or pass --ckpt to use this G anyway)")
U, tok_u = open_model(args.rank_with, RewardModel, "U", device) if args.rank_with else (None, None)
args.lang = args.lang or train_args(ckpt).get("lang") or "zh"

oracle = None
try:
    if args.input:
        rows = read_jsonl(args.input, "ppo")
        names = [f"{args.input}:{i + 1}" for i in range(len(rows))]
    elif args.cv is not None or args.cv_file:
        if args.cv_file:
            if not Path(args.cv_file).is_file():
                fail(f"{args.cv_file}: no such file")
            try:
                cv = Path(args.cv_file).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                fail(f"{args.cv_file}: not UTF-8 text; re-save it as UTF-8")
        else:
            cv = args.cv
        if not cv.strip():
            fail(f"{args.cv_file or '--cv'}: the CV is empty; give the seeker's CV as text")
        rows, names = [{"cv": cv.strip()}], [args.cv_file or "the CV"]
    else:
        held = market.heldout(market.ensure(args.market_dir, args.lang, seed=None), args.example + 1)
        if args.example >= len(held):
            fail(f"--example {args.example}: the market has only {len(held)} held-out CVs")
        rows, names = held[args.example :], [f"held-out market CV {args.example}"]
        oracle = market.Oracle(market.seekers(rows), args.lang)  # the market knows this seeker
except (DataError, market.MarketError) as e:
    fail(str(e))
prompts = prompts_for(tok, G.config, [r["cv"] for r in rows], names, args.lang, args.max_new_tokens)

N = args.num_return
results, t0 = [], time.time()
per_batch = max(1, args.batch_size // N)  # CVs per batch, all N J′ of a CV in the same batch
if args.resume and Path(args.output).is_file():  # what an interrupted run wrote: the same CVs, the same settings
    try:
        results = read_jsonl(args.output, "ppo")
    except DataError as e:
        fail(f"{e}; --resume reads it as this run's earlier output")
    same = [r["cv"] for r in results] == [r["cv"] for r in rows[: len(results)]]
    if not same or any(len(r.get("jds", [])) != N for r in results) or len(results) % per_batch and len(results) < len(rows):
        fail(f"{args.output} was not written from {args.input} with these --num-return and --batch-size; "
             "rerun without --resume, or with the settings of the first run")
    log(f"resuming: {args.output} holds {len(results)} of {len(rows)} CVs")
resumed = len(results)
for i in range(resumed, len(rows), per_batch):
    chunk = rows[i : i + per_batch]
    # each batch draws from its own seed, so a resumed run writes what an uninterrupted one would
    gen = torch.Generator(device=device).manual_seed(args.seed + 1_000_003 * (i // per_batch))
    with autocast():
        out = generate(G, [q for q in prompts[i : i + per_batch] for _ in range(N)], args.max_new_tokens,
                       eos_id=tok.eos_id, pad_id=tok.pad_or_eos_id,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                       generator=gen)
    _, texts, ended = decoded(tok, out.tokens, out.mask)
    scores = (u_scores(U, tok_u, [r["cv"] for r in chunk for _ in range(N)], texts, args.lang, autocast).tolist()
              if U is not None else None)
    for j, r in enumerate(chunk):
        jds = [{"jd": texts[j * N + k], "ended": ended[j * N + k]} for k in range(N)]
        if scores is not None:
            for k, jd in enumerate(jds):
                jd["u_score"] = scores[j * N + k]
            jds.sort(key=lambda jd: -jd["u_score"])  # best first: what U would recommend
        if oracle:
            for jd in jds:
                jd["oracle"] = oracle.score(0, jd["jd"])
        results.append({**({"id": r["id"]} if "id" in r else {}), "cv": r["cv"], "jds": jds})
    if args.output:  # every finished batch on disk (a temporary file and a rename: never half a line)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(args.output, results)
    if args.input:
        done, elapsed, new = min(i + per_batch, len(rows)), time.time() - t0, min(i + per_batch, len(rows)) - resumed
        print(f"{done}/{len(rows)} CVs  {new / elapsed:.1f} CVs/s  eta {elapsed / new * (len(rows) - done):.0f}s",
              file=sys.stderr, flush=True)

# ----------------------------------------------------------------------------- stage 4: real jobs ranked by M
if M is not None:
    try:
        job_rows = (read_jsonl(args.jobs, "jobs") if args.jobs else
                    [{"jd": t} for t in market.load_jobs(market.ensure(args.market_dir, args.lang, seed=None))[0]])
    except (DataError, market.MarketError) as e:
        fail(str(e))
    max_len = m_args.get("max_len", 128)
    jds = [r["jd"] for r in job_rows]
    j = encode_all(M, tok_m, jds, max_len, autocast=autocast)  # every job once
    cj = cv_features(M, tok_m, [r["cv"] for r in results], j, jds, max_len, autocast)
    jpj = jprime_features(M, tok_m, [r["jds"][0]["jd"] for r in results], j, jds, max_len, autocast) if M.use_jprime else None
    top = torch.sigmoid(M.logits(cj, jpj)).topk(min(args.recommend, len(job_rows)))
    for i, r in enumerate(results):
        r["jobs"] = [{**({"id": job_rows[k]["id"]} if "id" in job_rows[k] else {}), "jd": job_rows[k]["jd"], "score": v}
                     for v, k in zip(top.values[i].tolist(), top.indices[i].tolist())]
        if oracle:
            for job in r["jobs"]:
                job["oracle"] = oracle.score(i, job["jd"])

# ----------------------------------------------------------------------------- output
if args.output:
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.output, results)
    log(f"wrote {args.output}: {len(results)} CVs x {N} J′ (G = {ckpt}" + (f", ranked by U = {args.rank_with})" if U else ")"))
elif args.json:
    for r in results:
        print(json.dumps(r, ensure_ascii=False))
else:
    print(f"G: {ckpt}" + ("" if args.ckpt else " (the newer of ckpt/ppo, ckpt/sft)")
          + (f"   U: {args.rank_with}" if U else "") + f"   temperature {args.temperature if not args.greedy else 'greedy'}")
    for name, r in zip(names, results):
        lines = r["cv"].splitlines()
        print(f"\nCV ({name}):")
        print("\n".join("    " + line[:100] for line in lines[:10]) + (f"\n    … ({len(lines) - 10} more lines)" if len(lines) > 10 else ""))
        for k, jd in enumerate(r["jds"]):
            marks = [f"U {jd['u_score']:.3f}"] if "u_score" in jd else []
            marks += [f"oracle {jd['oracle']:.3f}"] if "oracle" in jd else []
            marks += [] if jd["ended"] else [f"cut at --max-new-tokens {args.max_new_tokens}"]
            print(f"\nJ′ {k + 1}/{N}" + (f"   ({', '.join(marks)})" if marks else "") + ":")
            print("\n".join("    " + line for line in jd["jd"].splitlines()))
        for k, job in enumerate(r.get("jobs", [])):
            marks = [f"M {job['score']:.3f}"] + ([f"oracle {job['oracle']:.3f}"] if "oracle" in job else [])
            print(f"\njob {k + 1}/{len(r['jobs'])} for this seeker" + (f" (id {job['id']})" if "id" in job else "")
                  + f"   ({', '.join(marks)}):")
            print("\n".join("    " + line for line in job["jd"].splitlines()))
