"""Generation-enhanced recommendation (GIRL §3.4): the matcher M(C, J, J′) → ℝ scores a seeker against a
real job, reading also the JD J′ that G wrote for the seeker; M0(C, J) is the same matcher without J′.

    M = Matcher.from_generator(G, n_layers=2, use_jprime=True)   # M0: use_jprime=False
    c, j, jp = (M.encode(*texts_to_batch(tok, texts, max_len)) for texts in (cvs, jds, jprimes))
    logits = M.score(c, j, jp)                                   # P(accepted) = σ(logits), pair by pair
    every_job = score_all(M, c, encode_all(M, tok, market_jds, max_len), jp)   # [seekers, jobs]

C, J and J′ are encoded separately by one shared encoder (mean of its last hidden states), so ranking a
whole market for a seeker costs one encoding per job, once, plus one per seeker. A small MLP reads the
interaction features [c, j, c⊙j, |c−j|] and, for M, [j′, j′⊙j, |j′−j|]: J′ is written in the language
of JDs, so comparing it with J is comparing like with like.

A matcher is saved as an ordinary Hugging Face folder (its encoder, which transformers opens as a
language model) plus matcher.safetensors (the head) and matcher.json. J′ are made once per generator and
kept in a cache keyed by the generator's weights, the CV and the sampling settings.
"""

import contextlib
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save

from girl.data import right_pad
from girl.evaluation import greedy_jds, sample_jds
from girl.files import CheckpointError, write_jsonl
from girl.lm.checkpoint import load_model, save_model
from girl.lm.model import Transformer
from girl.reward import u_scores
from girl.template import prompt_ids


class Matcher(nn.Module):
    """M(C, J, J′) when use_jprime, else M0(C, J): one shared encoder, an MLP over interaction features."""

    def __init__(self, config, use_jprime: bool, hidden: int = 256):
        super().__init__()
        self.config, self.use_jprime, self.hidden = config, use_jprime, hidden
        self.encoder = Transformer(config, lm_head=False)
        d = config.dim
        self.head = nn.Sequential(nn.Linear((7 if use_jprime else 4) * d, hidden), nn.GELU(), nn.Linear(hidden, 1))

    @classmethod
    def from_generator(cls, G: Transformer, n_layers: int | None = None, use_jprime: bool = True,
                       hidden: int = 256) -> "Matcher":
        """An encoder started from a language model: its embeddings, lowest n_layers blocks (default: all)
        and final norm; a new head."""
        # the encoder has no LM head: call it tied, so that it is saved (and opens in transformers) without one
        M = cls(replace(G.config, n_layers=n_layers or G.config.n_layers, tie_embeddings=True), use_jprime, hidden)
        wanted = M.encoder.state_dict().keys()
        M.encoder.load_state_dict({k: v for k, v in G.state_dict().items() if k in wanted})
        return M.to(next(G.parameters()).device)

    def encode(self, ids, attention_mask) -> torch.Tensor:
        """[B, dim]: the mean of the encoder's last hidden states over each text's tokens."""
        h = self.encoder.hidden_states(ids, attention_mask).float()
        m = attention_mask[..., None].float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    def score(self, c, j, jp=None) -> torch.Tensor:
        """Logits [B] of the pairs (c[i], j[i]), reading jp[i] too when the matcher uses J′ (and ignoring
        it when not). c, j, jp: encodings [B, dim], or [dim] broadcast against the others."""
        c, j = torch.broadcast_tensors(c, j)
        features = [c, j, c * j, (c - j).abs()]
        if self.use_jprime:
            jp = jp.expand_as(j)
            features += [jp, jp * j, (jp - j).abs()]
        return self.head(torch.cat(features, -1)).squeeze(-1)

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
               autocast=contextlib.nullcontext) -> torch.Tensor:
    """M's encodings [N, dim] of many texts, batch by batch (sorted by length, so padding stays short)."""
    device = next(M.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), M.config.dim, device=device)
    was_training = M.training
    M.eval()
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        with autocast():
            out[idx] = M.encode(*texts_to_batch(tok, [texts[k] for k in idx], max_len, device))
    M.train(was_training)
    return out


@torch.no_grad()
def score_all(M: Matcher, c: torch.Tensor, j: torch.Tensor, jp: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [S, N]: every seeker (encodings c [S, dim], jp [S, dim]) against every job (j [N, dim])."""
    return torch.stack([M.score(c[s], j, None if jp is None else jp[s]) for s in range(len(c))])


@torch.no_grad()
def interaction_logits(M: Matcher, tok, rows: list[dict], jprime: dict, max_len: int,
                       autocast=contextlib.nullcontext) -> torch.Tensor:
    """M's logits [n] of {"cv", "jd"} rows, each distinct text encoded once; jprime: CV -> its J′."""
    cvs, jds = list(dict.fromkeys(r["cv"] for r in rows)), list(dict.fromkeys(r["jd"] for r in rows))
    c, j = encode_all(M, tok, cvs, max_len, autocast=autocast), encode_all(M, tok, jds, max_len, autocast=autocast)
    jp = encode_all(M, tok, [jprime[x] for x in cvs], max_len, autocast=autocast) if M.use_jprime else None
    ci, ji = {x: i for i, x in enumerate(cvs)}, {x: i for i, x in enumerate(jds)}
    a, b = torch.tensor([ci[r["cv"]] for r in rows]), torch.tensor([ji[r["jd"]] for r in rows])
    return M.score(c[a], j[b], None if jp is None else jp[a]).cpu()


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
    """An HF folder of M's encoder (config.json, model.safetensors, tokenizer.json) with M's head in
    matcher.safetensors and what it reads in matcher.json; written whole or not at all."""
    head = {k: v.detach().cpu().contiguous() for k, v in M.head.state_dict().items()}
    spec = {"use_jprime": M.use_jprime, "hidden": M.hidden, "pooling": "mean",
            "features": ["c", "j", "c*j", "|c-j|"] + (["j'", "j'*j", "|j'-j|"] if M.use_jprime else [])}
    save_model(folder, M.encoder, tok, args=args, metrics=metrics,
               files={"matcher.safetensors": save(head), "matcher.json": (json.dumps(spec, indent=2) + "\n").encode()})


def load_matcher(folder, device=None) -> Matcher:
    folder = Path(folder)
    spec_file = folder / "matcher.json"
    if not spec_file.is_file():
        raise CheckpointError(f"{folder}: no matcher.json; pass a matcher's folder, as train_rec.py writes it")
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    encoder = load_model(folder, dtype=torch.float32, device=device)
    M = Matcher(encoder.config, spec["use_jprime"], spec["hidden"]).to(device)
    encoder.lm_head = None  # tied to the embeddings; the matcher reads hidden states only
    M.encoder = encoder
    M.head.load_state_dict(load_file(str(folder / "matcher.safetensors")))
    return M.eval()


def weights_digest(folder) -> str:
    """sha256 of a model folder's weight files: what makes two generators the same generator."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("model*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class JPrimeCache:
    """J′ of each CV under one generator and one sampling setting, kept as JSONL in
    cache_dir/<key>.jsonl, key = sha256(generator's weights, settings): a changed generator or setting
    is another file, so a stale J′ is never read. Rows are {"cv": sha256 of the CV, "jprime": text}."""

    def __init__(self, cache_dir, generator_folder, settings: dict):
        key = hashlib.sha256((weights_digest(generator_folder) + json.dumps(settings, sort_keys=True)).encode())
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
            u = u_scores(U, tok_u, [c for c in part for _ in range(best_of)], s.texts, lang,
                         autocast).view(len(part), best_of)
            texts = [s.texts[k * best_of + b] for k, b in enumerate(u.argmax(1).tolist())]
        cache.add(part, texts)
        if log:
            log(f"J′ {min(i + chunk, len(todo))}/{len(todo)}")
