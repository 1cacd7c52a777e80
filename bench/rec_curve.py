"""When does J′ help? M against M0 as M's training data grow: the learning curve of stage 4, on two markets.

    python bench/rec_curve.py                      # default data/ + ckpt/sft and gap data-gap/ + ckpt-gap/sft
    python bench/rec_curve.py --report             # the table and the figure of the runs done so far

Before it: python -m girl.market --gap --out data-gap && python train_sft.py --market-dir data-gap --out ckpt-gap/sft
(the default market's data/ and ckpt/sft come from the pipeline). Each market's J′ are its SFT G's, greedy.

For each share of M's training seekers (1, 2, 5, 10, 30, 100% of the 1,500), each training seed and each draw
of the subset (one draw at 100%: the subset is everyone), train_rec.py trains M and M0 alike (the same steps:
2 epochs, at least 100; each keeps its best step on the validation seekers, checked at the start and every 50
steps) and measures them on the test seekers, with paired bootstrap intervals over seekers. Every run is a
subprocess of one thread, --jobs at once,
seed by seed, so that the runs done at any time cover every size and market. Each run's folder (its matchers
and metrics.json) is RUNS/<market>/<seekers>-s<seed>-d<draw>/, and an interrupted bench goes on where it
stopped. With --keep an earlier rec-curve.json stands in for run folders that are gone (a new machine): its runs
count as done and join the report; a run both kept and in RUNS must give the same numbers (train_rec.py is
bit-reproducible), or the report stops. Writes OUT/rec-curve.json (every run's numbers), OUT/rec-curve.md
(per size: M0 → M, the mean of M − M0 over runs with their standard deviation, how many runs' intervals lie
above / below zero, and the lexical references) and OUT/rec-curve.png (needs matplotlib; no stage imports it).
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"cold AUC": ("cold", "auc"), "cold GAUC": ("cold", "gauc"), "NDCG@10": ("ranking", "ndcg@10"),
           "recall@10": ("ranking", "recall@10")}
SYSTEMS = ("M", "M0", "lexical C→J", "lexical J′→J", "lexical C+J′", "M, J′ shuffled", "M, oracle J′")
DIFFS = ("M - M0", "M - lexical C→J", "M - M, J′ shuffled")

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--markets", nargs="+", default=["default=data:ckpt/sft", "gap=data-gap:ckpt-gap/sft"],
               help="NAME=MARKET_DIR:GENERATOR for each curve (default: the default and the gap market, their SFT G)")
p.add_argument("--shares", default="0.01,0.02,0.05,0.1,0.3,1", help="shares of M's training seekers")
p.add_argument("--seeds", default="0,1,2", help="training seeds (default: 0,1,2)")
p.add_argument("--draws", default="0,1", help="draws of the subset of seekers (default: 0,1)")
p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default: 2)")
p.add_argument("--runs", default="ckpt/rec-curve", help="folder of the runs (default: ckpt/rec-curve)")
p.add_argument("--out", default="bench/results", help="folder of the results (default: bench/results)")
p.add_argument("--keep", help="an earlier rec-curve.json whose runs count as done (checked against any rerun of them)")
p.add_argument("--report", action="store_true", help="only write the table and the figure of the runs done")
args = p.parse_args()
out, runs = Path(args.out), Path(args.runs)
markets = {m.split("=")[0]: m.split("=", 1)[1].split(":") for m in args.markets}


def key(r: dict) -> tuple:
    """A report row's (market, training seekers, seed, draw)."""
    return r["market"], r["seekers"], r["seed"], r["draw"]


kept = json.loads(Path(args.keep).read_text(encoding="utf-8")) if args.keep else []
kept_keys = {key(r) for r in kept}


def folder(name: str, seekers: int | None, seed: int, draw: int) -> Path:
    return runs / name / f"{seekers or 'all'}-s{seed}-d{draw}"


def done(name: str, seekers: int | None, seed: int, draw: int, total: int) -> bool:
    """Whether a planned run (seekers None: all `total` of them) has its folder in RUNS or a row in --keep."""
    return (folder(name, seekers, seed, draw) / "metrics.json").is_file() or (name, seekers or total, seed, draw) in kept_keys


def run(name: str, seekers: int | None, seed: int, draw: int, total: int):
    market_dir, generator = markets[name]
    f = folder(name, seekers, seed, draw)
    if done(name, seekers, seed, draw, total):
        return
    cmd = [sys.executable, str(ROOT / "train_rec.py"), "--market-dir", market_dir, "--generator", generator,
           "--seed", str(seed), "--draw", str(draw), "--out", str(f), "--no-scratch", "--eval-every", "50",
           *(["--seekers", str(seekers)] if seekers else [])]
    f.parent.mkdir(parents=True, exist_ok=True)
    with open(f.parent / f"{f.name}.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"{name}: {f.name} done", flush=True)


def row(name: str, f: Path) -> dict:
    m = json.loads((f / "metrics.json").read_text())
    out = {"market": name, "seekers": m["counts"]["train_seekers"], "seed": m["settings"]["seed"],
           "draw": m["settings"]["draw"], "seconds": m["seconds"]["total"]}
    for label, (split, key) in METRICS.items():
        out[label] = {s: m[split][s][key] for s in SYSTEMS} | {d: m[split][d][key] for d in DIFFS}
    return out


def report():
    out.mkdir(parents=True, exist_ok=True)
    rows = [row(name, f) for name in markets for f in sorted((runs / name).glob("*-s*-d*"))
            if (f / "metrics.json").is_file()]
    rerun = {key(r): r for r in rows}
    for r in kept:
        if key(r) not in rerun:
            rows.append(r)
        elif {k: v for k, v in rerun[key(r)].items() if k != "seconds"} != {k: v for k, v in r.items() if k != "seconds"}:
            sys.exit(f"{args.keep}: the run {key(r)} gave other numbers when it ran again in {args.runs}")
        else:
            print(f"{key(r)}: the rerun gives the kept numbers exactly")
    rows.sort(key=key)
    (out / "rec-curve.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    lines = []
    for name in markets:
        at_market = [r for r in rows if r["market"] == name]
        if not at_market:
            continue
        lines += [f"**{name} market** ({markets[name][0]}, J′ of {markets[name][1]}): M − M0 on the test seekers, "
                  "mean ± standard deviation over runs (seeds × draws), and how many runs' 95% bootstrap intervals lie "
                  "above / below zero; the last column: where J′ helps by the rule below", "",
                  "| M's seekers | runs | " + " | ".join(METRICS) + " | J′ helps |", "|---:|---:|" + "---|" * (len(METRICS) + 1)]
        for n in sorted({r["seekers"] for r in at_market}):
            at = [r for r in at_market if r["seekers"] == n]
            cells = []
            for k in METRICS:
                d = np.array([r[k]["M - M0"]["diff"] for r in at])
                above, below = sum(r[k]["M - M0"]["lo"] > 0 for r in at), sum(r[k]["M - M0"]["hi"] < 0 for r in at)
                cells.append(f"{np.mean([r[k]['M0'] for r in at]):.3f} → {np.mean([r[k]['M'] for r in at]):.3f}: "
                             f"{d.mean():+.3f} ± {d.std(ddof=1) if len(d) > 1 else 0:.3f} ({above}↑ {below}↓)")
            lines.append(f"| {n} | {len(at)} | " + " | ".join(cells) + f" | {', '.join(helps(at)) or 'no'} |")
        ref = at_market[0]
        lines += ["", "Training-free references on the same test seekers: " + "; ".join(
            f"{k}: lexical C→J {ref[k]['lexical C→J']:.3f}, J′→J {ref[k]['lexical J′→J']:.3f}, C+J′ "
            f"{ref[k]['lexical C+J′']:.3f}" for k in ("cold AUC", "NDCG@10", "recall@10")), "",
            "J′ helps on a metric when M − M0 clears both kinds of noise, the seeker's own J′ is what helps and M "
            "beats word overlap: the mean of M − M0 over runs minus one standard deviation is above zero (at least 2 "
            "runs), every run's bootstrap interval of M − M0 and of M − (M fed another seeker's J′) lies above zero, "
            "and M's mean is above every lexical row's.", ""]
    (out / "rec-curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows)


def helps(at: list[dict]) -> list[str]:
    """The metrics on which J′ helps in these runs (one size of one market), by the rule the table states."""
    out = []
    for k in METRICS:
        d = np.array([r[k]["M - M0"]["diff"] for r in at])
        clears = len(d) > 1 and d.mean() - d.std(ddof=1) > 0 and all(r[k]["M - M0"]["lo"] > 0 for r in at)
        own = all(r[k]["M - M, J′ shuffled"]["lo"] > 0 for r in at)  # the seeker's own J′, not any JD-like text
        lexical = max(np.mean([r[k][s] for r in at]) for s in SYSTEMS if s.startswith("lexical"))
        if clears and own and np.mean([r[k]["M"] for r in at]) > lexical:
            out.append(k)
    return out


def plot(rows: list[dict]):
    try:
        import matplotlib
    except ImportError:
        print("the figure needs matplotlib: pip install matplotlib")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown, names = ("cold AUC", "NDCG@10"), [n for n in markets if any(r["market"] == n for r in rows)]
    fig, axes = plt.subplots(len(shown), len(names), figsize=(5.4 * len(names), 3.8 * len(shown)), squeeze=False)
    for col, name in enumerate(names):
        at_market = [r for r in rows if r["market"] == name]
        sizes = sorted({r["seekers"] for r in at_market})
        for line, k in enumerate(shown):
            ax = axes[line][col]
            for i, r in enumerate(at_market):  # each run with its bootstrap interval, spread a little sideways
                d = r[k]["M - M0"]
                x = r["seekers"] * (1 + 0.05 * (r["seed"] * 2 + r["draw"] - 2.5))
                ax.errorbar(x, d["diff"], yerr=[[d["diff"] - d["lo"]], [d["hi"] - d["diff"]]], fmt="o", ms=3,
                            color="tab:blue", alpha=0.5, lw=0.8, label="one run, 95% bootstrap interval" if i == 0 else None)
            diffs = [[r[k]["M - M0"]["diff"] for r in at_market if r["seekers"] == n] for n in sizes]
            ax.errorbar(sizes, [np.mean(d) for d in diffs], yerr=[np.std(d, ddof=1) if len(d) > 1 else 0 for d in diffs],
                        color="black", lw=1.6, capsize=4, label="mean ± sd over runs")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_title(f"{name} market: {k}")
            ax.set_xlabel("M's training seekers")
            ax.set_ylabel(f"M − M0, {k}")
            if line == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle("Does J′ help the matcher? M − M0 on the test seekers")
    fig.tight_layout()
    fig.savefig(out / "rec-curve.png", dpi=110)
    print(f"wrote {out / 'rec-curve.png'}")


if not args.report:
    total = {}
    for name, (market_dir, _) in markets.items():
        rec = [json.loads(x) for x in (Path(market_dir) / "rec_train.jsonl").read_text(encoding="utf-8").splitlines()]
        total[name] = len({r["cv"] for r in rec})  # the RM split's seekers: none of them in G's SFT data
    seeds, draws = [int(x) for x in args.seeds.split(",")], [int(x) for x in args.draws.split(",")]
    plan = [(name, None if float(share) >= 1 else max(2, round(float(share) * total[name])), seed, draw, total[name])
            for seed in seeds for draw in draws for share in args.shares.split(",") for name in markets
            if float(share) < 1 or draw == draws[0]]
    print(f"{len(plan)} runs of train_rec.py, {sum(not done(*x) for x in plan)} to do, {args.jobs} at once", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda x: run(*x), plan))
report()
