"""What each stage is measured by: held-out losses of G and U, and the J′ a generator writes for held-out CVs
(U's score, KL to a reference policy, diversity, and the oracle's score when the caller hands one in).

    s = sample_jds(G, tok, prompts, max_new_tokens=128, temperature=0.7, generator=g, ref=G_sft)
    u = u_scores(U, tok_u, cvs, s.texts, lang)             # U(C, J′) for each J′ (girl/reward.py)
    distinct_n(s.tokens, 2)                                # share of distinct bigrams over all J′
    rows, examples = table(...)                            # generate.py --eval

`oracle` arguments take any object with eval(texts) -> {"oracle", "oracle_sem", "parse_rate"} and
score(i, text) -> float, such as girl.market.Oracle: the method never imports the market itself.
"""

import contextlib
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from girl import ranking
from girl.data import IGNORE, collate
from girl.lm.sampling import decoded, generate, response_logprobs, rollout
from girl.losses import rm_loss, sft_loss
from girl.reward import best_of_n, pair_scores, u_scores


@torch.no_grad()
def sft_eval_loss(G, examples: list[dict], pad_id: int, batch_size: int, autocast=contextlib.nullcontext) -> float:
    """L_sft over held-out examples: the mean over all their JD tokens."""
    G.eval()
    device = next(G.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i : i + batch_size], pad_id)
        with autocast():
            logits = G(b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
        labels = b["labels"].to(device)
        total += sft_loss(logits, labels, reduction="sum").item()
        count += (labels[:, 1:] != IGNORE).sum().item()
    G.train()
    return total / count


@torch.no_grad()
def rm_eval(U, triples: dict[str, list], pad_id: int, batch_size: int, margin: float = 0.0, center_coef: float = 0.0,
            autocast=contextlib.nullcontext) -> dict:
    """L_rmt, accuracy (U(C, J+) > U(C, J−)) and the rewards' mean and std on each held-out set of encoded
    triples, keys prefixed by the set's name; `loss`, the mean of the sets' losses, picks the best U."""
    U.eval()
    out = {}
    for prefix, pairs in triples.items():
        pos, neg = map(torch.cat, zip(*(pair_scores(U, pairs[i : i + batch_size], pad_id, autocast)
                                        for i in range(0, len(pairs), batch_size))))
        both = torch.cat([pos, neg])
        out |= {f"{prefix}eval_loss": rm_loss(pos, neg, margin, center_coef).item(),
                f"{prefix}eval_accuracy": (pos > neg).float().mean().item(),
                f"{prefix}reward_mean": both.mean().item(), f"{prefix}reward_std": both.std().item()}
    U.train()
    out["loss"] = statistics.fmean(out[f"{prefix}eval_loss"] for prefix in triples)
    return out


def judge_on_jobs(score, cvs: list[str], best: list[str], random: list[str], candidates: list[list[str]],
                  gains: list, k: int = 10) -> dict:
    """A judge of fit on real jobs of held-out seekers: U, or any score(cvs, jds) -> [n] scores of pairs.

    best_vs_random: the share of seekers whose best job of the market (best[i]) it scores above a random job
    of the market (random[i]), ties counting half. ndcg@k: its order of each seeker's candidates (e.g. the jobs a
    lexical score retrieves) against their gains (the oracle's f), averaged over seekers."""
    s_best, s_random = np.asarray(score(cvs, best)), np.asarray(score(cvs, random))
    flat = np.asarray(score([c for c, js in zip(cvs, candidates) for _ in js], [j for js in candidates for j in js]))
    ends = np.cumsum([len(js) for js in candidates])
    ndcg = [ranking.ndcg_at_k(s, g, k) for s, g in zip(np.split(flat, ends[:-1]), gains)]
    return {"best_vs_random": ranking.ordered_share(s_best, s_random), f"ndcg@{k}": float(np.nanmean(ndcg))}


def judges_report(judges: dict, bench, compare: list[tuple], k: int = 10, seed: int = 0) -> dict:
    """Judges of fit (name -> score(cvs, jds) -> [n]) on a bench of held-out seekers (girl.market.JudgeBench, or
    any object with its fields): "triples", the share of its (C, J+, J−) triples each orders right, with each
    (a, b) of compare as a − b and its paired-bootstrap interval over CVs; "jobs", judge_on_jobs of each;
    "judges", their names. A part the bench has nothing for (no triples, no seekers) is None."""
    out = {"judges": list(judges), "triples": None, "jobs": None}
    if bench.triples:
        cvs = [r["cv"] for r in bench.triples]
        pos = {n: np.asarray(f(cvs, [r["jd_pos"] for r in bench.triples])) for n, f in judges.items()}
        neg = {n: np.asarray(f(cvs, [r["jd_neg"] for r in bench.triples])) for n, f in judges.items()}
        out["triples"] = ranking.pairs_report(pos, neg, cvs, compare, seed=seed)
    if bench.cvs:
        out["jobs"] = {n: judge_on_jobs(f, bench.cvs, bench.best, bench.random, bench.candidates, bench.gains, k)
                       for n, f in judges.items()} | {"n_seekers": len(bench.cvs),
                                                      "candidates": max(map(len, bench.candidates))}
    return out


def judges_markdown(report: dict, title: str, k: int = 10) -> str:
    """judges_report as a table: a row per judge, then each difference with its 95% interval over CVs."""
    t, j = report["triples"] or {}, report["jobs"] or {}
    cell = lambda d, key, n: f"{d[n][key]:.3f}" if n in d else "–"
    lines = [f"**{title}**: {t.get('n_triples', 0)} (C, J+, J−) triples of {t.get('n_cvs', 0)} CVs; real jobs of "
             f"{j.get('n_seekers', 0)} seekers (re-ranked: the {j.get('candidates', 0)} jobs the lexical score "
             "retrieves for each, graded by the oracle's f)", "",
             f"| judge | triples ordered right | best job above a random job | NDCG@{k} re-ranked |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {cell(t, 'accuracy', n)} | {cell(j, 'best_vs_random', n)} | {cell(j, f'ndcg@{k}', n)} |"
              for n in report["judges"]]
    for name, d in t.items():
        if isinstance(d, dict) and isinstance(d.get("accuracy"), dict):
            a = d["accuracy"]
            lines.append(f"| {name} (95% CI over CVs) | {a['diff']:+.3f} [{a['lo']:+.3f}, {a['hi']:+.3f}] | | |")
    return "\n".join(lines) + "\n"


@dataclass
class Samples:
    texts: list[str]  # J′ as text, without the EOS
    tokens: list[list[int]]  # J′ as G's tokens, without the EOS
    ended: list[bool]  # whether J′ ended with EOS (not cut by max_new_tokens)
    kl: list[float] | None  # Σ_t log π(a_t|s_t) − log π_ref(a_t|s_t) per J′, when a reference is given

    @property
    def lengths(self) -> list[int]:
        """Tokens generated per J′, counting the EOS: what the policy chose to write."""
        return [len(t) + e for t, e in zip(self.tokens, self.ended)]

    def add(self, tok, response: torch.Tensor, mask: torch.Tensor):
        tokens, texts, ended = decoded(tok, response, mask)
        self.tokens += tokens
        self.texts += texts
        self.ended += ended


@torch.no_grad()
def sample_jds(G, tok, prompts: list[list[int]], max_new_tokens: int, temperature: float,
               generator: torch.Generator, ref=None, autocast=contextlib.nullcontext,
               batch_size: int = 64) -> Samples:
    """One J′ per prompt from the plain tempered softmax of G, batch by batch from one generator.

    With ref, each J′ also gets its KL term: k1 summed over the J′'s tokens, log π − log π_ref under the
    same temperature. Its mean over J′ sampled from π is an unbiased estimate of KL(π ‖ π_ref) per J′."""
    out = Samples([], [], [], [] if ref is not None else None)
    for i in range(0, len(prompts), batch_size):
        batch = rollout(G, prompts[i : i + batch_size], max_new_tokens, tok.eos_id, tok.pad_or_eos_id, temperature,
                        generator)
        out.add(tok, batch.response, batch.mask)
        if ref is not None:
            with autocast():
                lp, _ = response_logprobs(G, batch.ids, batch.attention_mask, batch.prompt_len, temperature)
                lp_ref, _ = response_logprobs(ref, batch.ids, batch.attention_mask, batch.prompt_len, temperature)
            out.kl += ((lp - lp_ref) * batch.mask).sum(-1).tolist()
    return out


@torch.no_grad()
def greedy_jds(G, tok, prompts: list[list[int]], max_new_tokens: int, autocast=contextlib.nullcontext,
               batch_size: int = 64) -> Samples:
    """The most likely token at every step: the J′ G writes when it is not sampled (no KL: not a
    distribution to compare)."""
    out = Samples([], [], [], None)
    for i in range(0, len(prompts), batch_size):
        with autocast():
            g = generate(G, prompts[i : i + batch_size], max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_or_eos_id,
                         greedy=True)
        out.add(tok, g.tokens, g.mask)
    return out


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / all n-grams, over every sequence together.
    1 when no n-gram repeats anywhere; low when G writes the same J′ for everyone."""
    grams = [tuple(t[i : i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def policy_eval(G, tok, prompts: list[list[int]], cvs: list[str], U, tok_u, lang: str, seed: int,
                max_new_tokens: int, temperature: float, ref, autocast=contextlib.nullcontext, oracle=None) -> dict:
    """A policy on held-out CVs (train_ppo.py, before and after), sampled from `seed`: U's mean score and
    its std, KL to the reference per J′, length, EOS rate, the oracle's mean, and the first CV's J′."""
    g = torch.Generator(device=next(G.parameters()).device).manual_seed(seed)
    s = sample_jds(G, tok, prompts, max_new_tokens, temperature, g, ref=ref, autocast=autocast)
    scores = u_scores(U, tok_u, cvs, s.texts, lang, autocast)
    out = {"reward": scores.mean().item(), "reward_std": scores.std().item(), "kl": sum(s.kl) / len(s.kl),
           "response_length": sum(s.lengths) / len(s.lengths), "eos_rate": sum(s.ended) / len(s.ended)}
    if oracle is not None:
        out.update(oracle.eval(s.texts))
    out["example"] = {"cv": cvs[0], "jd": s.texts[0]}
    return out


# ----------------------------------------------------------------------------- the evaluation table

def table(systems: list[tuple], U, tok_u, tok, cvs: list[str], prompts: list[list[int]], lang: str, *,
          temperature: float, max_new_tokens: int, seed: int, best_of: int, batch_size: int = 64,
          autocast=contextlib.nullcontext, oracle=None, references: dict | None = None) -> tuple[list, list]:
    """The table of generate.py --eval: a row per system, and three example CVs with every system's J′.

    systems: [(name, G, ref)], the first the SFT model (ref None), the next ones compared with it by KL.
    Each G is sampled from the same seed at `temperature`, and decoded greedily. Best-of-N samples N J′
    per CV from the first G and keeps the one U scores highest; its KL to that G is at most
    log N − (N − 1)/N (Beirami et al., 2024). references: {name: one real JD text per CV}.
    """
    def sampled(G, ref, n=1):
        g = torch.Generator(device=next(G.parameters()).device).manual_seed(seed)
        return sample_jds(G, tok, [q for q in prompts for _ in range(n)], max_new_tokens, temperature, g, ref=ref,
                          autocast=autocast, batch_size=batch_size)

    def measure(name, texts, tokens, u, kl, t0) -> dict:
        u_mean, u_sem = statistics.fmean(u), statistics.stdev(u) / math.sqrt(len(u)) if len(u) > 1 else 0.0
        r = {"system": name, "u_score": u_mean, "u_score_sem": u_sem, "distinct_2": distinct_n(tokens, 2),
             "length": statistics.fmean(len(t) for t in tokens), "kl_to_sft": kl, "seconds": time.time() - t0}
        if oracle is not None:
            r.update(oracle.eval(texts))
        print(f"{name}: " + "  ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)), flush=True)
        return r

    def scored(texts, n=1):
        return u_scores(U, tok_u, [c for c in cvs for _ in range(n)], texts, lang, autocast).tolist()

    rows, written = [], {}  # written: system -> (J′, U's scores) for the examples
    for name, G, ref in systems:
        t0 = time.time()
        s = sampled(G, ref)
        u = scored(s.texts)
        stage = 1 if ref is None else 3
        rows.append(measure(f"{name} (G after stage {stage})", s.texts, s.tokens, u,
                            0.0 if ref is None else statistics.fmean(s.kl), t0))
        written[name] = (s.texts, u)
        t0 = time.time()  # and decoded greedily, as a deployed G might be
        s = greedy_jds(G, tok, prompts, max_new_tokens, autocast, batch_size)
        rows.append(measure(f"{name}, greedy", s.texts, s.tokens, scored(s.texts), None, t0))
    t0, N = time.time(), best_of
    s = sampled(systems[0][1], None, N)
    u_all = scored(s.texts, N)
    pick = best_of_n(u_all, N)
    rows.append(measure(f"best-of-{N} on {systems[0][0]}, ranked by U", [s.texts[i] for i in pick],
                        [s.tokens[i] for i in pick], [u_all[i] for i in pick], math.log(N) - (N - 1) / N, t0))
    written[f"best-of-{N}"] = ([s.texts[i] for i in pick], [u_all[i] for i in pick])
    first = None  # U's scores of the first reference (a random real JD), which the others are compared with
    for name, texts in (references or {}).items():
        t0 = time.time()
        u = scored(texts)
        rows.append(measure(name, texts, [tok.encode(t) for t in texts], u, None, t0))
        if first is None:
            first = (name, u)
        else:  # e.g. the seeker's best job above a random job: does U know fit, not only form?
            rows[-1]["u_above"] = {"than": first[0], "share": ranking.ordered_share(u, first[1])}

    examples = [{"cv": cvs[i], "jds": {system: {"jd": texts[i], "u_score": u[i],
                                                "oracle": oracle.score(i, texts[i]) if oracle else None}
                                       for system, (texts, u) in written.items()}}
                for i in range(min(3, len(cvs)))]
    return rows, examples


def markdown(rows: list[dict], settings: dict, examples: list[dict]) -> str:
    """The table and the examples as Markdown (eval.md)."""
    oracle = "oracle" in rows[0]
    head = "| | U's score | " + ("oracle | parse rate | " if oracle else "") + "distinct-2 | mean length | KL to SFT |"
    lines = [f"{settings['cvs']} held-out CVs, J′ sampled at temperature {settings['temperature']} (≤ "
             f"{settings['max_new_tokens']} tokens, seed {settings['seed']}); ± is the standard error; length in G's "
             "tokens; KL in nats per J′.", "", head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in rows:
        kl = r["kl_to_sft"]
        kl = "—" if kl is None else f"≤ {kl:.2f} (log N − (N−1)/N)" if r["system"].startswith("best-of") else f"{kl:.2f}"
        cells = [r["system"], f"{r['u_score']:.3f} ± {r['u_score_sem']:.3f}"]
        if oracle:
            cells += [f"{r['oracle']:.3f} ± {r['oracle_sem']:.3f}", f"{r['parse_rate']:.3f}"]
        cells += [f"{r['distinct_2']:.3f}", f"{r['length']:.1f}", kl]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\nU scores {r['system']} above {r['u_above']['than']} for {r['u_above']['share']:.1%} of these CVs."
              for r in rows if "u_above" in r]
    for i, e in enumerate(examples):
        lines += ["", f"Held-out CV {i}:", "", "```", e["cv"], "```", ""]
        for system, jd in e["jds"].items():
            score = f"U {jd['u_score']:.2f}" + (f", oracle {jd['oracle']:.3f}" if jd.get("oracle") is not None else "")
            lines += [f"{system} ({score}):", "", "```", jd["jd"], "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
