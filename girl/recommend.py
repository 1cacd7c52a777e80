"""Generation-enhanced recommendation (GIRL §3.4): the matcher M(C, J, J′) → ℝ scores a seeker against a
real job, reading also the JD J′ that G wrote for the seeker; M0(C, J) is the same matcher without J′.

    M = Matcher.from_generator(G, n_layers=2, use_jprime=True, lexical=TfIdf().fit(market_jds))  # M0: False
    logits = interaction_logits(M, tok, rows, jprime, max_len)   # P(accepted) = σ(logits) of {"cv", "jd"} rows
    j = encode_all(M, tok, market_jds, max_len)                  # every job once, then each seeker against all:
    every_job = M.logits(cv_features(M, tok, cvs, j, market_jds, max_len), jprime_features(M, tok, jprimes, j, market_jds, max_len))

M reads a pair of texts by late interaction (ColBERT, Khattab & Zaharia 2020): one encoder, started from G's
embeddings and lowest blocks, turns each token into a unit vector; every token of the seeker's text finds its
best match among the job's tokens and the other way round, and each side's matches are averaged with
weights the encoder gives its tokens (a CV's years and skills count, its name does not). A match is half
whether the two are the same token, half their cosine (the exact match of COIL, Gao et al. 2021):

    s(A → B) = Σ_i w_i · max_k ½·([a_i = b_k] + cos(a_i, b_k)),   w = softmax over A's tokens

The exact half makes a skill or a city named on both sides a match from the first step, so what training
must learn first is which tokens count (the weights), and the cosines learn what exact matching misses
(the encoder's context lets "3年" in a CV match "3年以上" in a JD and not "5年以上"). With cosines alone the
token matches barely learned in a default run (M0 at the lexical reference); the README's stage 4 has the numbers.

A mean-pooled vector of a whole text keeps what it is about and loses which words it holds; token matches
keep them. Beside the learned matches the head reads the training-free lexical reference (girl/lexical.py):

    M0(C, J)     = h · [s(C → J), s(J → C), lex(C, J)] + b
    M(C, J, J′)  = h · [s(C → J), s(J → C), lex(C, J), s(J′ → J), s(J → J′), lex(J′, J)] + b

h starts with weight LEX_INIT on the lexical scores: M starts from the reference and learns what word overlap
misses. A job's token vectors are computed once, so ranking a market for a seeker costs one encoding of the
seeker plus a [seeker tokens × job tokens] product per job.

A matcher is saved as an ordinary Hugging Face folder (its encoder, which transformers opens as a language
model) plus matcher.safetensors (token projection, token weights, head), matcher.json and the fitted
lexical reference (lexical.json). J′ are made once per generator and kept in a cache keyed by the
generator's weights, the CV and the sampling settings.
"""

import contextlib
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from girl.data import right_pad
from girl.evaluation import greedy_jds, sample_jds
from girl.files import CheckpointError, read_json, write_jsonl
from girl.lexical import TfIdf
from girl.lm import hub
from girl.lm.checkpoint import load_model, save_model
from girl.lm.model import Transformer
from girl.reward import best_of_n, u_scores
from girl.template import prompt_ids

SEEKER, JOB = 0, 1  # which of a token's two weights counts: as a seeker's text (C), as a job's (J, and J′)
EXACT = 0.5  # a token pair's match: this share is whether they are the same token, the rest their cosine
SIM_SCALE = 5.0  # cosines span [-1, 1]; scaled so that the head's logits have a useful range from the start
LEX_INIT, SIM_INIT, BIAS_INIT = 10.0, 1.0, -1.0  # the head's start: the lexical score plus the token matches


@dataclass
class Tokens:
    """Texts as M reads them: unit token vectors [B, T, p], each token's weight logits as the seeker's text
    (column 0) and as the job's (column 1) [B, T, 2], the mask of real tokens [B, T] (bool) and the token
    ids [B, T], for the exact matches."""
    vectors: torch.Tensor
    weights: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor

    def __getitem__(self, index) -> "Tokens":
        return Tokens(self.vectors[index], self.weights[index], self.mask[index], self.ids[index])

    def select(self, rows: torch.Tensor) -> "Tokens":
        # index_select, not [rows]: its backward adds in a fixed order on the CPU, so a run repeats bit for bit
        return Tokens(*(x.index_select(0, rows) for x in (self.vectors, self.weights, self.mask, self.ids)))

    def __len__(self):
        return len(self.vectors)


def late_interaction(a: Tokens, b: Tokens, a_side: int = 0) -> torch.Tensor:
    """[..., 2]: s(a → b) and s(b → a) of aligned rows (or one a against every b by broadcasting), b a job's
    text and a the seeker's (C: a_side 0) or a JD written for them (J′: a_side 1, its tokens weighted as a
    job's are): each token's best match on the other side, EXACT·[same token] + (1 − EXACT)·cosine, weighted
    by the softmax of its weight logit over its text's real tokens."""
    same = a.ids[..., :, None] == b.ids[..., None, :]
    sim = torch.einsum("...id,...kd->...ik", a.vectors, b.vectors).mul_(1 - EXACT).add_(same, alpha=EXACT)
    sim = sim.masked_fill_(~b.mask[..., None, :], -2.0)
    a_best = sim.amax(-1)  # [..., Ta]: each of a's tokens, its best in b
    b_best = sim.masked_fill(~a.mask[..., :, None], -2.0).amax(-2)  # [..., Tb] (b's padding: weight 0 below)
    wa = a.weights[..., a_side].masked_fill(~a.mask, -torch.inf).softmax(-1)
    wb = b.weights[..., 1].masked_fill(~b.mask, -torch.inf).softmax(-1)
    return SIM_SCALE * torch.stack([(a_best * wa).sum(-1), (b_best * wb).sum(-1)], -1)


class Matcher(nn.Module):
    """M(C, J, J′) when use_jprime, else M0(C, J): one encoder, token matches and the lexical score, a linear head."""

    def __init__(self, config, use_jprime: bool, proj: int = 64, lexical: TfIdf | None = None):
        super().__init__()
        self.config, self.use_jprime, self.proj_dim = config, use_jprime, proj
        self.lexical = lexical or TfIdf()
        self.encoder = Transformer(config, lm_head=False)
        self.proj = nn.Linear(config.dim, proj, bias=False)  # token vectors for the matches
        self.token_weight = nn.Linear(config.dim, 2)  # how much a token counts, as the seeker's text / the job's
        self.head = nn.Linear(6 if use_jprime else 3, 1)
        with torch.no_grad():  # M starts where M0 does: what it does with J′ it learns
            self.head.weight.zero_()[0, :3] = torch.tensor([SIM_INIT, SIM_INIT, LEX_INIT])
            self.head.bias.fill_(BIAS_INIT)

    @classmethod
    def from_generator(cls, G: Transformer | None, n_layers: int | None = None, use_jprime: bool = True,
                       proj: int = 64, lexical: TfIdf | None = None, config=None) -> "Matcher":
        """An encoder started from a language model: its embeddings, lowest n_layers blocks (default: all)
        and final norm. G None: the same encoder from a random init (config given), the reference that shows
        what G's weights give M."""
        base = config if G is None else G.config
        # the encoder has no LM head: call it tied, so that it is saved (and opens in transformers) without one
        M = cls(replace(base, n_layers=n_layers or base.n_layers, tie_embeddings=True), use_jprime, proj, lexical)
        if G is not None:
            wanted = M.encoder.state_dict().keys()
            M.encoder.load_state_dict({k: v for k, v in G.state_dict().items() if k in wanted})
            M = M.to(next(G.parameters()).device)
        return M

    def tokens(self, ids, attention_mask) -> Tokens:
        h = self.encoder.hidden_states(ids, attention_mask).float()
        return Tokens(F.normalize(self.proj(h), dim=-1), self.token_weight(h), attention_mask.bool(), ids)

    def lexical_scores(self, a: list[str], b: list[str]) -> torch.Tensor:
        return torch.tensor(self.lexical.cosine(a, b), dtype=torch.float32, device=self.head.weight.device)

    def logits(self, cj: torch.Tensor, jpj: torch.Tensor | None = None) -> torch.Tensor:
        """The head over the features [..., 3] of (C, J): s(C → J), s(J → C), lex(C, J); and for M the same
        [..., 3] of (J′, J). M0 ignores jpj."""
        features = torch.cat([cj, jpj], -1) if self.use_jprime else cj
        return self.head(features).squeeze(-1)

    def pair_logits(self, c: Tokens, j: Tokens, jp: Tokens | None, cvs: list[str], jds: list[str],
                    jprimes: list[str] | None = None) -> torch.Tensor:
        """Logits [n] of aligned pairs: c[i], j[i] (and jp[i]) are the token vectors of cvs[i], jds[i] (jprimes[i])."""
        cj = torch.cat([late_interaction(c, j), self.lexical_scores(cvs, jds)[:, None]], -1)
        jpj = (torch.cat([late_interaction(jp, j, JOB), self.lexical_scores(jprimes, jds)[:, None]], -1)
               if self.use_jprime else None)
        return self.logits(cj, jpj)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def texts_to_batch(tok, texts: list[str], max_len: int, device=None):
    """input_ids and attention_mask [B, T] of texts encoded alone (no template), cut to max_len tokens
    (none: [0, 0] tensors)."""
    if not texts:
        return torch.zeros(0, 0, dtype=torch.long, device=device), torch.zeros(0, 0, dtype=torch.long, device=device)
    ids, mask = right_pad([(tok.encode(t) or [tok.pad_or_eos_id])[:max_len] for t in texts], tok.pad_or_eos_id)
    return ids.to(device), mask.to(device)


@torch.no_grad()
def encode_all(M: Matcher, tok, texts: list[str], max_len: int, batch_size: int = 128,
               autocast=contextlib.nullcontext) -> Tokens:
    """M's token vectors of many texts, batch by batch (sorted by length, so padding stays short), padded
    to the longest."""
    device = next(M.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    ids = [(tok.encode(t) or [tok.pad_or_eos_id])[:max_len] for t in texts]  # as texts_to_batch cuts them
    width = max(map(len, ids), default=1)
    out = Tokens(torch.zeros(len(texts), width, M.proj_dim, device=device), torch.zeros(len(texts), width, 2, device=device),
                 torch.zeros(len(texts), width, dtype=torch.bool, device=device),
                 torch.full((len(texts), width), -1, dtype=torch.long, device=device))
    was_training = M.training
    M.eval()
    for i in range(0, len(order), batch_size):
        idx = torch.tensor(order[i : i + batch_size], device=device)
        x, mask = right_pad([ids[k] for k in idx.tolist()], tok.pad_or_eos_id)
        with autocast():
            t = M.tokens(x.to(device), mask.to(device))
        for full, part in zip((out.vectors, out.weights, out.mask, out.ids), (t.vectors, t.weights, t.mask, t.ids)):
            full[idx, : part.shape[1]] = part.to(full.dtype)
    M.train(was_training)
    return out


@torch.no_grad()
def all_features(c: Tokens, j: Tokens, lex: np.ndarray, side: int = SEEKER, chunk: int = 512) -> torch.Tensor:
    """[S, N, 3]: the features of every seeker's text (c: S texts; side SEEKER for CVs, JOB for J′) against
    every job (j: N texts), with lex [S, N] the lexical scores; jobs in chunks, so memory stays at chunk × tokens²."""
    out = torch.empty(len(c), len(j), 3, device=c.vectors.device)
    out[..., 2] = torch.as_tensor(lex, dtype=torch.float32, device=c.vectors.device)
    for s in range(len(c)):
        for k in range(0, len(j), chunk):
            out[s, k : k + chunk, :2] = late_interaction(c[s : s + 1], j[k : k + chunk], side)
    return out


@torch.no_grad()
def cv_features(M: Matcher, tok, cvs: list[str], j: Tokens, jds: list[str], max_len: int,
                autocast=contextlib.nullcontext) -> torch.Tensor:
    """[S, N, 3]: each seeker's CV against every job, whose token vectors j are computed once (encode_all)."""
    return all_features(encode_all(M, tok, cvs, max_len, autocast=autocast), j, M.lexical.cosine_all(cvs, jds), SEEKER)


def jprime_features(M: Matcher, tok, jprimes: list[str], j: Tokens, jds: list[str], max_len: int,
                    autocast=contextlib.nullcontext) -> torch.Tensor:
    """[S, N, 3]: each seeker's J′ against every job: M.logits(cv_features(...), jprime_features(...))."""
    return all_features(encode_all(M, tok, jprimes, max_len, autocast=autocast), j, M.lexical.cosine_all(jprimes, jds), JOB)


@torch.no_grad()
def interaction_logits(M: Matcher, tok, rows: list[dict], jprime: dict | list[dict], max_len: int,
                       autocast=contextlib.nullcontext, jobs: tuple[list[str], Tokens] | None = None):
    """M's logits [n] of {"cv", "jd"} rows; jprime: CV -> its J′. Given a list of such maps, a list of logits,
    M reading each (the J′ of G, of an oracle, of another seeker): every distinct text is encoded once.
    jobs: (JDs, their encode_all) already computed, holding every row's JD (a market's jobs)."""
    maps = jprime if isinstance(jprime, list) else [jprime]
    cvs = list(dict.fromkeys(r["cv"] for r in rows))
    jds = jobs[0] if jobs else list(dict.fromkeys(r["jd"] for r in rows))
    j = jobs[1] if jobs else encode_all(M, tok, jds, max_len, autocast=autocast)
    c = encode_all(M, tok, cvs, max_len, autocast=autocast)
    ci, ji = {x: i for i, x in enumerate(cvs)}, {x: i for i, x in enumerate(jds)}
    a = torch.tensor([ci[r["cv"]] for r in rows], device=c.vectors.device)
    b = torch.tensor([ji[r["jd"]] for r in rows], device=c.vectors.device)
    texts = list(dict.fromkeys(m[x] for m in maps for x in cvs)) if M.use_jprime else []
    jp = encode_all(M, tok, texts, max_len, autocast=autocast) if texts else None
    ti = {x: i for i, x in enumerate(texts)}
    out = []
    for m in maps:
        rows_jp = [m[r["cv"]] for r in rows] if M.use_jprime else None
        sel = jp.select(torch.tensor([ti[x] for x in rows_jp], device=c.vectors.device)) if M.use_jprime else None
        out.append(M.pair_logits(c.select(a), j.select(b), sel, [r["cv"] for r in rows], [r["jd"] for r in rows],
                                 rows_jp).cpu())
    return out if isinstance(jprime, list) else out[0]


def warm_split(rows: list[dict], per_seeker: int) -> tuple[list[dict], list[dict]]:
    """(training rows, warm held-out rows): per_seeker interactions of each seeker who has at least
    2·per_seeker held out, chosen by a hash of (CV, JD), so the split needs no random draw and is the
    same on every run; the seeker's other interactions stay in training."""
    by_cv: dict[str, list[dict]] = {}
    for r in rows:
        by_cv.setdefault(r["cv"], []).append(r)
    train, held = [], []
    for group in by_cv.values():
        if len(group) < 2 * per_seeker:
            train += group
            continue
        group = sorted(group, key=lambda r: text_key(r["cv"] + "\n" + r["jd"]))
        held += group[:per_seeker]
        train += group[per_seeker:]
    return train, held


# ----------------------------------------------------------------------------- on disk

def save_matcher(folder, M: Matcher, tok, args=None, metrics: dict | None = None):
    """An HF folder of M's encoder (config.json, model.safetensors, tokenizer.json) with the rest of M in
    matcher.safetensors, what it reads in matcher.json and its lexical reference in lexical.json; written
    whole or not at all."""
    rest = {f"{name}.{k}": v.detach().cpu().contiguous() for name in ("proj", "token_weight", "head")
            for k, v in getattr(M, name).state_dict().items()}
    features = ["s(C→J)", "s(J→C)", "lex(C,J)"] + (["s(J′→J)", "s(J→J′)", "lex(J′,J)"] if M.use_jprime else [])
    spec = {"use_jprime": M.use_jprime, "proj": M.proj_dim, "interaction": "late (token MaxSim)", "exact": EXACT,
            "features": features}
    lexical = {"n_min": M.lexical.n_min, "n_max": M.lexical.n_max, "vocabulary": M.lexical.vocabulary,
               "idf": M.lexical.idf.tolist()}
    save_model(folder, M.encoder, tok, args=args, metrics=metrics,
               files={"matcher.safetensors": save(rest), "matcher.json": (json.dumps(spec, indent=2) + "\n").encode(),
                      "lexical.json": json.dumps(lexical, ensure_ascii=False).encode()})


def load_matcher(folder, device=None) -> Matcher:
    folder = Path(folder)
    spec_file = folder / "matcher.json"
    if not spec_file.is_file():
        raise CheckpointError(f"{folder}: no matcher.json; pass a matcher's folder, as train_rec.py writes it")
    spec = read_json(spec_file)
    if spec.get("exact", 0.0) != EXACT:
        raise CheckpointError(f"{spec_file}: a matcher whose token matches weigh exact matches {spec.get('exact', 0.0)}, "
                              f"this code {EXACT} (an older train_rec.py): its scores would be wrong; train it again")
    if not (folder / "lexical.json").is_file() or not (folder / "matcher.safetensors").is_file():
        raise CheckpointError(f"{folder}: lexical.json or matcher.safetensors is missing: a matcher folder is written "
                              "whole by train_rec.py; copy all of it, or train it again")
    saved = read_json(folder / "lexical.json")
    try:
        lexical = TfIdf(saved["n_min"], saved["n_max"])
        lexical.vocabulary, lexical.idf = dict(saved["vocabulary"]), np.array(saved["idf"], dtype=np.float64)
        use_jprime, proj = bool(spec["use_jprime"]), int(spec["proj"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: matcher.json or lexical.json lacks or garbles a field ({e!r}): train it "
                              "again") from None
    encoder = load_model(folder, dtype=torch.float32, device=device)
    M = Matcher(encoder.config, use_jprime, proj, lexical).to(device)
    encoder.lm_head = None  # tied to the embeddings; the matcher reads hidden states only
    M.encoder = encoder
    try:
        rest = load_file(str(folder / "matcher.safetensors"))
        for name in ("proj", "token_weight", "head"):
            getattr(M, name).load_state_dict({k.split(".", 1)[1]: v for k, v in rest.items() if k.startswith(name + ".")})
    except (SafetensorError, RuntimeError) as e:
        raise CheckpointError(f"{folder / 'matcher.safetensors'}: not the weights of this matcher ({str(e)[:200]}): "
                              "copy the folder again, or train it again") from None
    if not all(torch.isfinite(t).all() for t in rest.values()):
        raise CheckpointError(f"{folder / 'matcher.safetensors'}: holds nan or inf values: train it again")
    return M.eval()


def weights_digest(folder) -> str:
    """sha256 of a model's weight files (a local folder, or a hub id's cached files): what makes two generators
    the same generator."""
    h = hashlib.sha256()
    for f in sorted(hub.resolve(folder).glob("model*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def jprime_settings(lang: str, max_new_tokens: int, best_of: int = 1, temperature: float = 0.7, seed: int = 0,
                    u_folder=None) -> dict:
    """What a CV's J′ depends on besides G's weights: JPrimeCache's settings. Greedy J′ (best_of 1) depend on the
    language and the length; the best of N sampled J′ also on the temperature, the seed and U's weights (U picks)."""
    settings = {"best_of": best_of, "max_new_tokens": max_new_tokens, "lang": lang}
    if best_of > 1:
        if u_folder is None:
            raise ValueError("best_of > 1: U chooses among the samples, so its folder is part of the key")
        settings |= {"temperature": temperature, "u": weights_digest(u_folder), "seed": seed}
    return settings


class JPrimeCache:
    """J′ of each CV under one generator and one sampling setting, kept as JSONL in
    cache_dir/<key>.jsonl, key = sha256(generator's weights, settings): a changed generator or setting
    is another file, so a stale J′ is never read. Rows are {"cv": sha256 of the CV, "jprime": text}.
    generator_sha256: the generator's weights_digest, which train_rec.py also records with the matchers."""

    def __init__(self, cache_dir, generator_folder, settings: dict):
        self.generator_sha256 = weights_digest(generator_folder)
        key = hashlib.sha256((self.generator_sha256 + json.dumps(settings, sort_keys=True)).encode())
        self.path = Path(cache_dir) / f"{key.hexdigest()[:24]}.jsonl"
        self.settings = settings
        self.texts: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                self.texts[row["cv"]] = row["jprime"]

    def missing(self, cvs: list[str]) -> list[str]:
        """The distinct CVs without a J′ yet, in first-seen order."""
        return list(dict.fromkeys(c for c in cvs if text_key(c) not in self.texts))

    def add(self, cvs: list[str], jprimes: list[str]):
        """Keep these J′ and write the whole cache again (atomically: an interrupted run keeps what it had)."""
        self.texts.update({text_key(c): t for c, t in zip(cvs, jprimes, strict=True)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(self.path, [{"cv": k, "jprime": t} for k, t in self.texts.items()])

    def __getitem__(self, cv: str) -> str:
        return self.texts[text_key(cv)]


def make_jprimes(cache: JPrimeCache, G, tok, cvs: list[str], lang: str, max_cv_tokens: int, *, max_new_tokens: int,
                 best_of: int = 1, temperature: float = 0.7, U=None, tok_u=None, seed: int = 0, chunk: int = 256,
                 autocast=contextlib.nullcontext, log=None):
    """Write the J′ of every CV that the cache lacks, chunk by chunk (an interrupted run keeps the chunks done).

    best_of 1: G's greedy J′. best_of N: N J′ sampled at `temperature`, the one U scores highest (the
    paper's "validate suitability in advance"; U reads the text). CVs are cut to max_cv_tokens.
    """
    todo = cache.missing(cvs)
    for i in range(0, len(todo), chunk):
        part = todo[i : i + chunk]
        prompts = [prompt_ids(tok, c, lang, max_cv_tokens)[0] for c in part]
        if best_of == 1:
            texts = greedy_jds(G, tok, prompts, max_new_tokens, autocast=autocast).texts
        else:
            g = torch.Generator(device=next(G.parameters()).device).manual_seed(seed + i)
            s = sample_jds(G, tok, [p for p in prompts for _ in range(best_of)], max_new_tokens, temperature, g,
                           autocast=autocast)
            u = u_scores(U, tok_u, [c for c in part for _ in range(best_of)], s.texts, lang, autocast)
            texts = [s.texts[k] for k in best_of_n(u, best_of)]
        cache.add(part, texts)
        if log:
            log(f"J′ {min(i + chunk, len(todo))}/{len(todo)}")
