"""Write the job description J′ that suits a job seeker's CV with the generator G, and check each J′ with
the reward model U before recommending it (GIRL §3.4, "validate suitability in advance").

    python generate.py                                      # G = the newest of ckpt/ppo, ckpt/sft; a held-out market CV
    python generate.py --cv "Name: ... Skills: ..."         # your CV (or --cv-file cv.txt)
    python generate.py --num-return 8 --rank-with ckpt/rm   # best-of-8: every J′ scored by U, best first
    python generate.py --input cvs.jsonl --output out.jsonl # a batch: one {"cv"} (+ optional "id") per line
    python generate.py --eval                               # the evaluation table of every stage

--eval samples J′ for the same held-out CVs with the same seed from the SFT model, the PPO model, and
best-of-N on SFT ranked by U, and sets them beside two references from the market: a random real JD and
the seeker's best job. Columns: U's score, the oracle (the market's ground truth, an unreadable J′ scoring
0), parse rate, distinct-2, mean length, KL to SFT. Writes EVAL_OUT/eval.json and EVAL_OUT/eval.md.
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from girl import evaluation, market
from girl.checkpoint import CheckpointError, atomic_dir, write_json
from girl.data import DataError, read_jsonl, write_jsonl
from girl.hub import HubError
from girl.model import RewardModel, Transformer
from girl.sampling import generate
from girl.template import TEMPLATE, prompt_ids, template_overhead
from girl.tokenizer import Tokenizer
from girl.training import fail, log

MAKES = {"sft": "python train_sft.py", "rm": "python train_rm.py", "ppo": "python train_ppo.py --init ckpt/"}

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
# Models
p.add_argument("--ckpt", help="G: a local HF folder or hub id (default: the newer of ckpt/ppo and ckpt/sft)")
p.add_argument("--rank-with", metavar="U", help="score every J′ with this reward model and print them best first "
                                                 "(default: off; ckpt/rm with --eval)")
# Input: one of --cv, --cv-file, --input; default a held-out CV of the market
p.add_argument("--cv", help="the CV as text")
p.add_argument("--cv-file", help="a UTF-8 text file holding one CV")
p.add_argument("--input", help='JSONL of CVs, one {"cv": ...} per line (an "id" is copied to the output)')
p.add_argument("--output", help="write the results of --input as JSONL here (default: print them)")
p.add_argument("--example", type=int, default=0, help="with no CV given: which held-out market CV (default: 0)")
p.add_argument("--market-dir", default="data", help="folder of the synthetic market, built on first use (default: data)")
p.add_argument("--lang", choices=list(TEMPLATE), help="prompt language (default: the one G was trained with, else zh)")
# Sampling
p.add_argument("--num-return", type=int, default=1, help="J′ per CV (default: 1); with --rank-with, best-of-N")
p.add_argument("--temperature", type=float, default=0.7, help="softmax temperature (default: 0.7, PPO's)")
p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only (default: all)")
p.add_argument("--top-p", type=float, help="sample from the smallest set of tokens with this much probability (default: 1)")
p.add_argument("--greedy", action="store_true", help="always take the most likely token (one J′ per CV)")
p.add_argument("--max-new-tokens", type=int, default=128, help="J′ length limit in tokens (default: 128)")
p.add_argument("--seed", type=int, default=0, help="sampling seed; the same seed writes the same J′ (default: 0)")
p.add_argument("--batch-size", type=int, default=64, help="sequences sampled at once (default: 64)")
# Output
p.add_argument("--json", action="store_true", help="print one JSON object per CV instead of text")
# Evaluation
p.add_argument("--eval", action="store_true", help="evaluate SFT, PPO, best-of-N and the references; write the table")
p.add_argument("--sft", default="ckpt/sft", help="--eval: the SFT model (default: ckpt/sft)")
p.add_argument("--ppo", default="ckpt/ppo", help="--eval: the PPO model; skipped if absent (default: ckpt/ppo)")
p.add_argument("--eval-data", help='--eval: JSONL of held-out {"cv"} (+ "seeker" for the oracle) (default: the market\'s)')
p.add_argument("--eval-cvs", type=int, default=200, help="--eval: how many held-out CVs (default: 200)")
p.add_argument("--best-of", type=int, default=8, help="--eval: N of best-of-N on SFT ranked by U (default: 8)")
p.add_argument("--eval-out", default="ckpt/eval", help="--eval: folder for eval.json and eval.md (default: ckpt/eval)")
args = p.parse_args()

if sum(x is not None for x in (args.cv, args.cv_file, args.input)) > 1:
    fail("give one of --cv, --cv-file and --input")
if args.output and not args.input:
    fail("--output writes the results of --input; give --input cvs.jsonl too (or use --json for one CV)")
if args.input and args.output and Path(args.input).resolve() == Path(args.output).resolve():
    fail(f"--output {args.output} is --input: it would overwrite the CVs; write somewhere else")
if args.greedy and args.num_return > 1:
    fail("--greedy writes the same J′ every time; --num-return N needs sampling (drop --greedy)")
if args.num_return < 1 or args.max_new_tokens < 1 or args.best_of < 1 or args.eval_cvs < 1:
    fail("--num-return, --max-new-tokens, --best-of and --eval-cvs must be >= 1")
if args.eval and (args.greedy or args.top_k or args.top_p):
    fail("--eval samples every system from the plain softmax at --temperature (the policy PPO trained and KL "
         "is measured for); drop --greedy, --top-k and --top-p")
if not args.greedy and args.temperature <= 0:
    fail(f"--temperature must be > 0 (got {args.temperature}); use --greedy for argmax decoding")

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
cuda = device.type == "cuda"
autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else (lambda: torch.autocast("cpu", enabled=False))


# ----------------------------------------------------------------------------- models

def load(folder, cls, role: str):
    """A model and its tokenizer from one folder (or hub id), or a message that says which script makes it."""
    folder = str(folder)
    made_by = MAKES.get(Path(folder).name)
    if made_by and not Path(folder).exists():  # ckpt/sft and the like are ours: never look them up on the hub
        fail(f"{folder}: no checkpoint of {role}; run {made_by} first")
    try:
        model = cls.from_pretrained(folder, device=device).eval()
        tok = Tokenizer.from_pretrained(folder)
        tok.check_fits(model.config, folder)
    except (CheckpointError, HubError) as e:
        fail(str(e))
    if tok.eos_id is None:
        fail(f"{folder}: the tokenizer has no EOS token, so a J′ could never end; use the tokenizer G was trained with")
    return model, tok


def newest_generator() -> str:
    """ckpt/ppo or ckpt/sft, whichever was written last: the end of the pipeline as it was last run."""
    found = [Path("ckpt") / n for n in ("ppo", "sft") if (Path("ckpt") / n / "config.json").is_file()]
    if not found:
        fail("no generator in ckpt/ppo or ckpt/sft; run python train_sft.py first (then python train_rm.py and "
             "python train_ppo.py --init ckpt/), or pass --ckpt DIR")
    return str(max(found, key=lambda d: (d / "config.json").stat().st_mtime))


def trained_lang(folder) -> str | None:
    f = Path(folder) / "train_args.json"
    return json.loads(f.read_text(encoding="utf-8")).get("lang") if f.is_file() else None


def prompts_for(tok, config, cvs: list[str], names: list[str]) -> list[list[int]]:
    """The prompt of each CV; a CV too long for G's context is cut, with a notice (on stderr)."""
    room = config.max_seq_len - args.max_new_tokens - template_overhead(tok, args.lang)
    if room < 1:
        fail(f"--max-new-tokens {args.max_new_tokens} leaves no room for a CV in G's context of "
             f"{config.max_seq_len} tokens; ask for fewer")
    out = []
    for cv, name in zip(cvs, names):
        ids, cut = prompt_ids(tok, cv, args.lang, room)
        if cut:
            print(f"notice: {name} has {len(tok.encode(cv))} tokens; only its first {room} fit G's context "
                  f"({config.max_seq_len} tokens with --max-new-tokens {args.max_new_tokens}), the rest is not read",
                  file=sys.stderr)
        out.append(ids)
    return out


def u_scores(U, tok_u, cvs, jds) -> list[float]:
    return evaluation.u_scores(U, tok_u, cvs, jds, args.lang, autocast).tolist()


def market_rows(n: int) -> list[dict]:
    """The first n held-out CVs of the market (seekers never seen by SFT, U or PPO), with their seekers."""
    return read_jsonl(market.ensure(args.market_dir, args.lang, seed=None) / "eval.jsonl", "ppo")[:n]


# ----------------------------------------------------------------------------- --eval: the table

def mean_sem(xs):
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0


def measure(name, texts, tokens, u, kl, seekers, seconds) -> dict:
    """One row of the table: the J′ (or real JDs) one system gives the held-out CVs."""
    u_mean, u_sem = mean_sem(u)
    r = {"system": name, "u_score": u_mean, "u_score_sem": u_sem,
         "distinct_2": evaluation.distinct_n(tokens, 2), "length": statistics.fmean(len(t) for t in tokens),
         "kl_to_sft": kl, "seconds": seconds}
    if seekers:
        o = market.oracle_eval(seekers, texts, args.lang)
        r.update(oracle=o["oracle_mean"], oracle_sem=o["oracle_sem"], parse_rate=o["parse_rate"])
    log(f"{name}: " + "  ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)))
    return r


def markdown(rows_out, settings, examples) -> str:
    oracle = "oracle" in rows_out[0]
    head = "| | U's score | " + ("oracle | parse rate | " if oracle else "") + "distinct-2 | mean length | KL to SFT |"
    lines = [f"{settings['cvs']} held-out CVs, J′ sampled at temperature {settings['temperature']} (≤ "
             f"{settings['max_new_tokens']} tokens, seed {settings['seed']}); ± is the standard error; length in G's "
             "tokens; KL in nats per J′.", "", head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in rows_out:
        kl = r["kl_to_sft"]
        kl = "—" if kl is None else f"≤ {kl:.2f} (log N − (N−1)/N)" if r["system"].startswith("best-of") else f"{kl:.2f}"
        cells = [r["system"], f"{r['u_score']:.3f} ± {r['u_score_sem']:.3f}"]
        if oracle:
            cells += [f"{r['oracle']:.3f} ± {r['oracle_sem']:.3f}", f"{r['parse_rate']:.3f}"]
        cells += [f"{r['distinct_2']:.3f}", f"{r['length']:.1f}", kl]
        lines.append("| " + " | ".join(cells) + " |")
    for i, e in enumerate(examples):
        lines += ["", f"Held-out CV {i}:", "", "```", e["cv"], "```", ""]
        for system, jd in e["jds"].items():
            score = f"U {jd['u_score']:.2f}" + (f", oracle {jd['oracle']:.3f}" if jd.get("oracle") is not None else "")
            lines += [f"{system} ({score}):", "", "```", jd["jd"], "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


if args.eval:
    t_start = time.time()
    U, tok_u = load(args.rank_with or "ckpt/rm", RewardModel, "U")
    G_sft, tok = load(args.sft, Transformer, "the SFT model")
    G_ppo = None
    if Path(args.ppo).exists() or not MAKES.get(Path(args.ppo).name):
        G_ppo, tok_ppo = load(args.ppo, Transformer, "the PPO model")
        if tok_ppo.tk.get_vocab() != tok.tk.get_vocab():
            fail(f"{args.ppo} has another tokenizer than {args.sft}: KL to SFT needs the same tokens")
    else:
        log(f"{args.ppo}: no PPO model (python train_ppo.py --init ckpt/ makes it); its row is skipped")
    args.lang = args.lang or trained_lang(args.sft) or "zh"
    try:
        rows = read_jsonl(args.eval_data, "ppo")[: args.eval_cvs] if args.eval_data else market_rows(args.eval_cvs)
    except DataError as e:
        fail(str(e))
    seekers = [market.seeker_from_json(r["seeker"]) for r in rows] if all("seeker" in r for r in rows) else None
    cvs = [r["cv"] for r in rows]
    prompts = prompts_for(tok, G_sft.config, cvs, [f"held-out CV {i}" for i in range(len(rows))])
    log(f"evaluating on {len(rows)} held-out CVs" + (" (with the oracle)" if seekers else "") + f"; U = {args.rank_with or 'ckpt/rm'}")

    def sampled(G, ref, n=1):
        """J′ for every CV (n each, in CV order), all systems from the same seed."""
        g = torch.Generator(device=device).manual_seed(args.seed)
        return evaluation.sample_jds(G, tok, [q for q in prompts for _ in range(n)], args.max_new_tokens,
                                     args.temperature, g, ref=ref, autocast=autocast, batch_size=args.batch_size)

    results, written = [], {}  # written: system -> (J′, U's scores) for the examples
    for system, G, ref in (("SFT", G_sft, None), ("PPO", G_ppo, G_sft)):
        if G is None:
            continue
        t0 = time.time()
        s = sampled(G, ref)
        u = u_scores(U, tok_u, cvs, s.texts)
        results.append(measure(f"{system} (G after stage {1 if ref is None else 3})", s.texts, s.tokens, u,
                               0.0 if ref is None else statistics.fmean(s.kl), seekers, time.time() - t0))
        written[system] = (s.texts, u)
        t0 = time.time()  # and decoded greedily, as a deployed G might be
        s = evaluation.greedy_jds(G, tok, prompts, args.max_new_tokens, autocast, args.batch_size)
        results.append(measure(f"{system}, greedy", s.texts, s.tokens, u_scores(U, tok_u, cvs, s.texts), None,
                               seekers, time.time() - t0))
    t0 = time.time()
    N = args.best_of
    s = sampled(G_sft, None, N)
    u_all = u_scores(U, tok_u, [c for c in cvs for _ in range(N)], s.texts)
    pick = [i * N + max(range(N), key=lambda k: u_all[i * N + k]) for i in range(len(rows))]
    name = f"best-of-{N} on SFT, ranked by U"
    # the KL of best-of-N to its base policy is at most log N − (N − 1)/N (Beirami et al., 2024)
    results.append(measure(name, [s.texts[i] for i in pick], [s.tokens[i] for i in pick],
                           [u_all[i] for i in pick], math.log(N) - (N - 1) / N, seekers, time.time() - t0))
    written[f"best-of-{N}"] = ([s.texts[i] for i in pick], [u_all[i] for i in pick])
    if seekers and not args.eval_data:  # the references are the market's own jobs
        jobs_rows = [json.loads(line) for line in (Path(args.market_dir) / "jobs.jsonl").read_text(encoding="utf-8").splitlines()]
        random_jd, best = market.reference_jobs(seekers, [market.job_from_json(j["job"]) for j in jobs_rows], args.seed)
        for name, picked in (("a random market JD", random_jd), ("the seeker's best market job", best)):
            t0 = time.time()
            texts = [jobs_rows[i]["jd"] for i in picked]
            results.append(measure(name, texts, [tok.encode(t) for t in texts], u_scores(U, tok_u, cvs, texts),
                                   None, seekers, time.time() - t0))

    examples = []
    for i in range(min(3, len(rows))):
        jds = {}
        for system, (texts, u) in written.items():
            o = market.oracle_score(seekers[i], texts[i], args.lang) if seekers else None
            jds[system] = {"jd": texts[i], "u_score": u[i], "oracle": None if not seekers else 0.0 if o is None else o}
        examples.append({"cv": cvs[i], "jds": jds})
    settings = {"cvs": len(rows), "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                "seed": args.seed, "best_of": N, "sft": args.sft, "ppo": args.ppo if G_ppo is not None else None,
                "rm": args.rank_with or "ckpt/rm", "lang": args.lang, "device": str(device)}
    table = markdown(results, settings, examples)
    with atomic_dir(args.eval_out) as tmp:
        write_json(tmp / "eval.json", {"settings": settings, "rows": results, "examples": examples,
                                       "seconds": time.time() - t_start})
        (tmp / "eval.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    log(f"wrote {args.eval_out}/eval.json and eval.md ({time.time() - t_start:.0f}s)")
    sys.exit(0)


# ----------------------------------------------------------------------------- generate J′ for CVs

ckpt = args.ckpt or newest_generator()
G, tok = load(ckpt, Transformer, "G")
U, tok_u = load(args.rank_with, RewardModel, "U") if args.rank_with else (None, None)
args.lang = args.lang or trained_lang(ckpt) or "zh"

seekers = None
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
        held = market_rows(args.example + 1)
        if args.example >= len(held):
            fail(f"--example {args.example}: the market has only {len(held)} held-out CVs")
        rows, names = held[args.example :], [f"held-out market CV {args.example}"]
        seekers = [market.seeker_from_json(rows[0]["seeker"])]  # the oracle knows this seeker
except DataError as e:
    fail(str(e))
prompts = prompts_for(tok, G.config, [r["cv"] for r in rows], names)

N = args.num_return
results, t0 = [], time.time()
gen = torch.Generator(device=device).manual_seed(args.seed)
per_batch = max(1, args.batch_size // N)  # CVs per batch, all N J′ of a CV in the same batch
for i in range(0, len(rows), per_batch):
    chunk = rows[i : i + per_batch]
    with autocast():
        out = generate(G, [q for q in prompts[i : i + per_batch] for _ in range(N)], args.max_new_tokens,
                       eos_id=tok.eos_id, pad_id=tok.pad_id if tok.pad_id is not None else tok.eos_id,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                       generator=gen)
    _, texts, ended = evaluation.decoded(tok, out.tokens, out.mask)
    scores = u_scores(U, tok_u, [r["cv"] for r in chunk for _ in range(N)], texts) if U is not None else None
    for j, r in enumerate(chunk):
        jds = [{"jd": texts[j * N + k], "ended": ended[j * N + k]} for k in range(N)]
        if scores is not None:
            for k, jd in enumerate(jds):
                jd["u_score"] = scores[j * N + k]
            jds.sort(key=lambda jd: -jd["u_score"])  # best first: what U would recommend
        if seekers:
            for jd in jds:
                o = market.oracle_score(seekers[0], jd["jd"], args.lang)
                jd["oracle"] = 0.0 if o is None else o
        results.append({**({"id": r["id"]} if "id" in r else {}), "cv": r["cv"], "jds": jds})
    if args.input:
        done, elapsed = min(i + per_batch, len(rows)), time.time() - t0
        print(f"{done}/{len(rows)} CVs  {done / elapsed:.1f} CVs/s  eta {elapsed / done * (len(rows) - done):.0f}s",
              file=sys.stderr, flush=True)

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
