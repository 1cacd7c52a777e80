"""How a recommender is measured: AUC, GAUC and LogLoss on labelled interactions, NDCG@k and recall@k of a
ranking against graded relevance, and the paired bootstrap over seekers that puts an interval on the
difference of two models. Pure functions of numpy arrays; ties are handled exactly, never by sort order.

    auc(scores, labels)                       # P(a positive outranks a negative), ties count half
    gauc(scores, labels, seekers)             # AUC per seeker with both labels, averaged over seekers
    ndcg_at_k(scores, gains, 10)              # one seeker's ranking of all jobs against graded gains
    paired_bootstrap(stat_a, stat_b, n_seekers)
"""

import math

import numpy as np


def _runs(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal values starts and ends (exclusive) in a sorted array."""
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    return starts, np.r_[starts[1:], len(xs)]


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    starts, ends = _runs(x[order])
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def auc(scores, labels) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative,
    a tie counting one half (the Mann–Whitney U statistic over n₊·n₋). nan without both labels."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    return float((_midranks(s)[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(scores, labels, groups) -> float:
    """Group AUC: the AUC within each seeker who has both a positive and a negative, averaged over those
    seekers with equal weight. It asks what a recommender is for: ordering one seeker's jobs.

    All seekers at once (the bootstrap calls this thousands of times): rows sorted by (seeker, score),
    each row's midrank within its seeker, then auc's Mann–Whitney formula per seeker by np.add.reduceat.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    g = np.unique(np.asarray(groups), return_inverse=True)[1]
    order = np.lexsort((s, g))
    gs, ss, ys = g[order], s[order], y[order]
    first, last = _runs(gs)  # each seeker's rows
    position = np.arange(len(s)) - np.repeat(first, last - first)  # 0-based, within the seeker
    tied = np.flatnonzero(np.r_[True, (gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1])])  # runs of one seeker's equal scores
    tied_end = np.r_[tied[1:], len(s)]
    midrank = np.repeat((position[tied] + position[tied_end - 1]) / 2 + 1, tied_end - tied)
    n_pos = np.add.reduceat(ys.astype(np.int64), first)
    n_neg = (last - first) - n_pos
    rank_sum = np.add.reduceat(midrank * ys, first)
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        return math.nan
    p, q = n_pos[both], n_neg[both]
    return float(np.mean((rank_sum[both] - p * (p + 1) / 2) / (p * q)))


def log_loss(probs, labels, eps: float = 1e-7) -> float:
    """−mean[y·log p + (1 − y)·log(1 − p)], p clipped to [eps, 1 − eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _top_k_weights(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's expected DCG discount 1/log2(1 + position) and its chance of being in the top k, over
    every order of the tied scores equally likely (so a constant score is a random ranking, not the
    input order)."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    position_discount = np.where(np.arange(n) < k, 1 / np.log2(np.arange(n) + 2), 0.0)
    discount, in_top = np.zeros(n), np.zeros(n)  # a run that starts at or past position k stays 0
    starts, ends = _runs(scores[order])
    for a, b in zip(starts[starts < k], ends[starts < k]):  # items a..b-1 share a score: each the mean of their positions
        discount[order[a:b]] = position_discount[a:b].mean()
        in_top[order[a:b]] = (min(b, k) - a) / (b - a)
    return discount, in_top


def ndcg_at_k(scores, gains, k: int) -> float:
    """DCG@k = Σ_{position i ≤ k} gain_i / log2(1 + i), divided by the DCG@k of the ideal order (gains
    sorted). Linear gains: the oracle's f in [0, 1]. nan when every gain is 0."""
    s, g = np.asarray(scores, dtype=np.float64), np.asarray(gains, dtype=np.float64)
    ideal = np.sort(g)[::-1][:k] @ (1 / np.log2(np.arange(min(k, len(g))) + 2))
    return float(_top_k_weights(s, k)[0] @ g / ideal) if ideal > 0 else math.nan


def recall_at_k(scores, relevant, k: int) -> float:
    """Relevant items among the top k, over min(k, relevant items): 1 when the top k is as full of them as
    it can be. nan when nothing is relevant."""
    r = np.asarray(relevant, dtype=bool)
    if not r.any():
        return math.nan
    return float(_top_k_weights(np.asarray(scores, dtype=np.float64), k)[1][r].sum() / min(k, r.sum()))


def ordered(better, worse) -> np.ndarray:
    """Per pair, 1 where a judge scores better_i above worse_i, ½ for a tie, 0 otherwise."""
    a, b = np.asarray(better, dtype=np.float64), np.asarray(worse, dtype=np.float64)
    return (a > b) + 0.5 * (a == b)


def ordered_share(better, worse) -> float:
    """The share of pairs a judge orders right (ties count half); nan without pairs."""
    right = ordered(better, worse)
    return float(right.mean()) if len(right) else math.nan


def paired_bootstrap(stat_a, stat_b, n_groups: int, n_resamples: int = 1000, seed: int = 0) -> dict:
    """The difference stat_a − stat_b of two models on the same seekers, with a 95% percentile interval
    from resampling the seekers with replacement (Efron & Tibshirani, 1993, ch. 13).

    stat_x(sample) -> float reads an array of seeker indices (repeats allowed); both models see the same
    samples, so what the seekers have in common cancels out of the difference.
    """
    rng = np.random.default_rng(seed)
    everyone = np.arange(n_groups)
    a, b = stat_a(everyone), stat_b(everyone)
    diffs = []
    for _ in range(n_resamples):
        sample = rng.integers(0, n_groups, n_groups)
        diffs.append(stat_a(sample) - stat_b(sample))
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return dict(a=a, b=b, diff=a - b, lo=float(lo), hi=float(hi))


# ----------------------------------------------------------------------------- reports of several models

def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


class SeekerRows:
    """Each seeker's rows (group[i]: the seeker 0, 1, … of row i), laid out once in seeker order, so that the
    bootstrap's thousands of samples of seekers become their rows by array arithmetic."""

    def __init__(self, group: np.ndarray):
        self.flat = np.argsort(group, kind="stable")  # seeker 0's rows, then seeker 1's, … each in row order
        self.sizes = np.bincount(group)
        self.first = np.cumsum(self.sizes) - self.sizes  # where seeker k's rows start in flat

    def sample(self, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the sampled seekers and their seeker ids in the sample: a seeker drawn twice is two
        seekers, as the bootstrap means."""
        sizes = self.sizes[sample]
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # 0, 1, … in each drawn seeker
        return self.flat[np.repeat(self.first[sample], sizes) + within], np.repeat(np.arange(len(sample)), sizes)


INTERACTION_METRICS = {  # metric(logits, labels, groups) of labelled interactions
    "auc": lambda s, y, g: auc(s, y),
    "gauc": gauc,
    "log_loss": lambda s, y, g: log_loss(_sigmoid(s), y),
}


def interaction_report(logits: dict, labels, groups, pairs: list[tuple], n_resamples: int = 1000, seed: int = 0) -> dict:
    """AUC, GAUC and LogLoss of each model's logits (name -> [n] array) on the same interactions, and for
    each (a, b) in pairs the difference a − b with its paired-bootstrap interval over seekers (groups)."""
    y, g = np.asarray(labels), np.asarray(groups)
    seekers, g_index = np.unique(g, return_inverse=True)
    rows_of = SeekerRows(g_index)

    def on(name, metric):
        def stat(sample):
            idx, new_g = rows_of.sample(sample)
            return metric(np.asarray(logits[name])[idx], y[idx], new_g)
        return stat

    out = {name: {m: f(np.asarray(s), y, g) for m, f in INTERACTION_METRICS.items()} for name, s in logits.items()}
    out |= {"n_interactions": len(y), "n_seekers": len(seekers), "positive_rate": float(y.mean())}
    for a, b in pairs:
        out[f"{a} - {b}"] = {m: paired_bootstrap(on(a, f), on(b, f), len(seekers), n_resamples, seed)
                             for m, f in INTERACTION_METRICS.items()}
    return out


def pairs_report(pos: dict, neg: dict, groups, pairs: list[tuple], n_resamples: int = 1000, seed: int = 0) -> dict:
    """Each judge's share of (C, J+, J−) triples ordered right (pos, neg: name -> [n] scores of J+ and J−), and
    for each (a, b) in pairs the difference a − b with its paired-bootstrap interval over CVs (groups): the
    triples of one CV share its seeker, so the CV is what is drawn."""
    cvs, g = np.unique(np.asarray(groups), return_inverse=True)
    rows_of = SeekerRows(g)
    right = {n: ordered(pos[n], neg[n]) for n in pos}

    def on(name):
        return lambda sample: float(right[name][rows_of.sample(sample)[0]].mean())

    out = {n: {"accuracy": float(r.mean())} for n, r in right.items()} | {"n_triples": len(g), "n_cvs": len(cvs)}
    for a, b in pairs:
        out[f"{a} - {b}"] = {"accuracy": paired_bootstrap(on(a), on(b), len(cvs), n_resamples, seed)}
    return out


def ranking_report(scores: dict, gains: np.ndarray, relevant: np.ndarray, k: int, pairs: list[tuple],
                   n_resamples: int = 1000, seed: int = 0) -> dict:
    """NDCG@k and recall@k of each system's scores [S seekers, N jobs] against gains and relevant [S, N],
    averaged over seekers (those without a relevant job skipped for recall), with paired-bootstrap
    intervals of the differences in pairs."""
    per = {name: {f"ndcg@{k}": np.array([ndcg_at_k(s[i], gains[i], k) for i in range(len(gains))]),
                  f"recall@{k}": np.array([recall_at_k(s[i], relevant[i], k) for i in range(len(gains))])}
           for name, s in scores.items()}
    out = {name: {m: float(np.nanmean(v)) for m, v in d.items()} for name, d in per.items()}
    out["n_seekers"] = len(gains)
    for a, b in pairs:
        out[f"{a} - {b}"] = {m: paired_bootstrap(lambda x, m=m: np.nanmean(per[a][m][x]),
                                                 lambda x, m=m: np.nanmean(per[b][m][x]), len(gains), n_resamples, seed)
                             for m in per[a]}
    return out


def markdown(metrics: dict, k: int) -> str:
    """train_rec.py's tables: each split's systems (learned ones beside the references) and the differences
    with their 95% paired intervals. LogLoss only for the matchers, whose scores are logits."""
    def interval(d):
        return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"

    def systems(m, keys):
        return [n for n, v in m.items() if isinstance(v, dict) and keys[0] in v and not isinstance(v[keys[0]], dict)]

    def differences(m, keys):
        return [n for n, v in m.items() if isinstance(v, dict) and keys[0] in v and isinstance(v[keys[0]], dict)]

    out = []
    for split, title in (("cold", "cold-start test seekers (never seen by any stage)"),
                         ("warm", "warm seekers (held-out interactions of M's training seekers)")):
        if split not in metrics:
            continue
        m, keys = metrics[split], ("auc", "gauc", "log_loss")
        out += [f"**{title}**: {m['n_interactions']} interactions of {m['n_seekers']} seekers, "
                f"{m['positive_rate']:.1%} accepted", "", "| scored by | AUC | GAUC | LogLoss |", "|---|---:|---:|---:|"]
        out += [f"| {n} | {m[n]['auc']:.3f} | {m[n]['gauc']:.3f} | "
                + (f"{m[n]['log_loss']:.4f} |" if n.startswith("M") else "– |") for n in systems(m, keys)]
        out += [f"| {n} (95% CI) | {interval(m[n]['auc'])} | {interval(m[n]['gauc'])} | "
                + (f"{interval(m[n]['log_loss'])} |" if all(x.startswith("M") for x in n.split(" - ")) else "– |")
                for n in differences(m, keys)] + [""]
    if "ranking" in metrics:
        r, keys = metrics["ranking"], (f"ndcg@{k}", f"recall@{k}")
        out += [f"**ranking every job for {r['n_seekers']} test seekers**, graded by the oracle's f (relevant for "
                f"recall: f ≥ 0.6); their J′: oracle {r['jprime_oracle']['oracle']:.3f}, parse rate "
                f"{r['jprime_oracle']['parse_rate']:.3f}", "", f"| ranking by | NDCG@{k} | recall@{k} |", "|---|---:|---:|"]
        out += [f"| {n} | {r[n][keys[0]]:.3f} | {r[n][keys[1]]:.3f} |" for n in systems(r, keys)]
        out += [f"| {n} (95% CI) | {interval(r[n][keys[0]])} | {interval(r[n][keys[1]])} |" for n in differences(r, keys)]
        out.append("")
    return "\n".join(out)
