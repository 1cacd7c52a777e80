"""When does J′ help? M against M0 as M's training data grow: the learning curve of stage 4.

    python bench/rec_curve.py --market-dir data --generator ckpt/sft --name default
    python bench/rec_curve.py --market-dir data-gap --generator ckpt-gap/sft --name gap
    python bench/rec_curve.py --plot default gap          # the figure from the runs' numbers (needs matplotlib)

For each share of M's training seekers (1, 2, 5, 10, 30, 100%), each training seed and each draw of the
subset (one draw at 100%: the subset is everyone), train_rec.py trains M and M0 alike (the same steps, at
least --min-steps, each keeping its best step on the validation seekers) and measures them on the test
seekers. Every run is a subprocess with one thread; --jobs of them run at once. Each run's metrics.json is
kept under OUT/<name>/<seekers>-s<seed>-d<draw>/, so an interrupted bench goes on where it stopped. Writes
OUT/<name>.json (every run's numbers, M − M0 with its bootstrap interval) and OUT/<name>.md (a table: per
size, the mean of M − M0 over runs, the spread over runs, and how many runs' intervals clear zero); --plot
draws OUT/rec-curve.png.
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
SHARES = (0.01, 0.02, 0.05, 0.1, 0.3, 1.0)
METRICS = {"cold AUC": ("cold", "auc"), "cold GAUC": ("cold", "gauc"), "NDCG@10": ("ranking", "ndcg@10"),
           "recall@10": ("ranking", "recall@10")}

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--market-dir", default="data", help="the market (default: data)")
p.add_argument("--generator", default="ckpt/sft", help="G whose J′ M reads (default: ckpt/sft)")
p.add_argument("--name", default="default", help="name of the market's curve (default: default)")
p.add_argument("--seeds", default="0,1,2", help="training seeds (default: 0,1,2)")
p.add_argument("--draws", default="0,1", help="draws of the subset of seekers (default: 0,1)")
p.add_argument("--shares", default=",".join(map(str, SHARES)), help="shares of M's training seekers")
p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default: 2)")
p.add_argument("--out", default="bench/results/rec-curve", help="folder of the runs and results")
p.add_argument("--plot", nargs="+", metavar="NAME", help="only draw the figure of these curves' results")
p.add_argument("extra", nargs="*", help="more train_rec.py flags, after --")
args = p.parse_args()
out = Path(args.out)


def run(seekers: int, seed: int, draw: int, total: int) -> dict:
    folder = out / args.name / f"{seekers}-s{seed}-d{draw}"
    if not (folder / "metrics.json").is_file():
        cmd = [sys.executable, str(ROOT / "train_rec.py"), "--market-dir", args.market_dir, "--generator", args.generator,
               "--seed", str(seed), "--draw", str(draw), "--out", str(folder), "--no-scratch", "--bootstrap", "1000",
               *([] if seekers >= total else ["--seekers", str(seekers)]), *args.extra]
        log = folder.parent / f"{folder.name}.log"
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
        print(f"{args.name}: {folder.name} done", flush=True)
    m = json.loads((folder / "metrics.json").read_text())
    row = {"seekers": seekers, "seed": seed, "draw": draw, "seconds": m["seconds"]["total"]}
    for label, (split, key) in METRICS.items():
        d = m[split]
        row[label] = {"M": d["M"][key], "M0": d["M0"][key], "lexical C→J": d["lexical C→J"][key],
                      "lexical C+J′": d["lexical C+J′"][key], "M - M0": d["M - M0"][key],
                      "M - lexical C→J": d["M - lexical C→J"][key]}
    return row


def summarise(rows: list[dict]) -> str:
    lines = [f"| seekers | runs | {' | '.join(f'{k}: M0 → M, M − M0 mean ± sd [runs above 0 / below 0]' for k in METRICS)} |",
             "|---:|---:|" + "---|" * len(METRICS)]
    for n in sorted({r["seekers"] for r in rows}):
        at = [r for r in rows if r["seekers"] == n]
        cells = []
        for k in METRICS:
            d = np.array([r[k]["M - M0"]["diff"] for r in at])
            above = sum(r[k]["M - M0"]["lo"] > 0 for r in at)
            below = sum(r[k]["M - M0"]["hi"] < 0 for r in at)
            cells.append(f"{np.mean([r[k]['M0'] for r in at]):.3f} → {np.mean([r[k]['M'] for r in at]):.3f}, "
                         f"{d.mean():+.3f} ± {d.std(ddof=1) if len(d) > 1 else 0:.3f} [{above}/{below}]")
        lines.append(f"| {n} | {len(at)} | {' | '.join(cells)} |")
    lex = rows[0]
    lines += ["", "Training-free references on the same test seekers: " + ", ".join(
        f"{k} lexical C→J {lex[k]['lexical C→J']:.3f}, C+J′ {lex[k]['lexical C+J′']:.3f}" for k in METRICS)]
    return "\n".join(lines)


def plot(names: list[str]):
    try:
        import matplotlib
    except ImportError:
        sys.exit("the figure needs matplotlib: pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = ("cold AUC", "NDCG@10")
    fig, axes = plt.subplots(len(shown), len(names), figsize=(5.2 * len(names), 3.6 * len(shown)), squeeze=False)
    for col, name in enumerate(names):
        rows = json.loads((out / f"{name}.json").read_text())["runs"]
        sizes = sorted({r["seekers"] for r in rows})
        for row, k in enumerate(shown):
            ax = axes[row][col]
            for i, r in enumerate(rows):  # each run with its bootstrap interval, spread a little sideways
                d = r[k]["M - M0"]
                x = r["seekers"] * (1 + 0.06 * ((i % 6) - 2.5) / 2.5)
                ax.errorbar(x, d["diff"], yerr=[[d["diff"] - d["lo"]], [d["hi"] - d["diff"]]], fmt="o", ms=3,
                            color="tab:blue", alpha=0.45, lw=0.8)
            means = [np.mean([r[k]["M - M0"]["diff"] for r in rows if r["seekers"] == n]) for n in sizes]
            sds = [np.std([r[k]["M - M0"]["diff"] for r in rows if r["seekers"] == n], ddof=1)
                   if sum(r["seekers"] == n for r in rows) > 1 else 0 for n in sizes]
            ax.errorbar(sizes, means, yerr=sds, color="black", lw=1.6, capsize=4, label="mean ± sd over runs")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_title(f"{name} market: {k}")
            ax.set_xlabel("M's training seekers")
            ax.set_ylabel(f"M − M0 ({k})")
            if row == 0 and col == 0:
                ax.legend(fontsize=8, loc="best")
    fig.suptitle("Does J′ help the matcher? M − M0 on the test seekers (dots: runs with their 95% bootstrap intervals)")
    fig.tight_layout()
    fig.savefig(out / "rec-curve.png", dpi=120)
    print(f"wrote {out / 'rec-curve.png'}")


if args.plot:
    plot(args.plot)
    sys.exit(0)
rec = [json.loads(x) for x in (Path(args.market_dir) / "rec_train.jsonl").read_text(encoding="utf-8").splitlines()]
sft = {json.loads(x)["cv"] for x in (Path(args.market_dir) / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()}
total = len({r["cv"] for r in rec if r["cv"] not in sft})
plan = [(max(2, round(share * total)), seed, draw) for share in map(float, args.shares.split(","))
        for seed in map(int, args.seeds.split(",")) for draw in map(int, args.draws.split(","))
        if share < 1 or draw == int(args.draws.split(",")[0])]
print(f"{args.name}: {len(plan)} runs of train_rec.py ({total} training seekers at 100%), {args.jobs} at once", flush=True)
with ThreadPoolExecutor(args.jobs) as pool:
    rows = list(pool.map(lambda x: run(*x, total), plan))
(out / f"{args.name}.json").write_text(json.dumps({"market": args.market_dir, "generator": args.generator, "runs": rows},
                                                   indent=1, ensure_ascii=False) + "\n")
table = summarise(rows)
(out / f"{args.name}.md").write_text(table + "\n")
print(table)
