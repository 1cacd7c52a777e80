"""The training-free reference every learned judge stands beside: the cosine of character n-gram TF-IDF
vectors of two texts (a CV C or a J′ against a real JD J). It needs no training, no tokenizer and no
language-specific rules, so a matcher (or a reward model) that does not beat it has learned less than word
overlap knows.

    tfidf = TfIdf().fit(market_jds)                # idf from the JDs a seeker is matched against
    s = tfidf.cosine(cvs, jds)                     # [n] cos(C_i, J_i), pair by pair
    S = tfidf.cosine_all(cvs, jds)                 # [S, N] every CV against every JD

It computes what scikit-learn's TfidfVectorizer(analyzer="char", ngram_range=(1, 2)) computes with its
defaults (lower case, runs of white space made one space, raw counts, smooth idf, rows of unit length):
tests/test_lexical.py proves them equal. A text's n-grams that the fitted JDs never hold are ignored.
"""

import math
import re
from collections import Counter

import numpy as np
import torch

_RUNS_OF_SPACE = re.compile(r"\s\s+")  # what scikit-learn's char analyzer folds: two or more, into one space


def char_ngrams(text: str, n_min: int = 1, n_max: int = 2) -> list[str]:
    """The character n-grams of a text, n_min <= n <= n_max, after lower-casing and folding runs of white space."""
    text = _RUNS_OF_SPACE.sub(" ", text.lower())
    return [text[i : i + n] for n in range(n_min, n_max + 1) for i in range(len(text) - n + 1)]


class TfIdf:
    """x(d) = tf(t, d) · idf(t) over the fitted vocabulary, scaled to unit length, where tf is the count of
    n-gram t in d and idf(t) = ln((1 + n) / (1 + df(t))) + 1 over the n fitted texts."""

    def __init__(self, n_min: int = 1, n_max: int = 2):
        self.n_min, self.n_max = n_min, n_max
        self.vocabulary: dict[str, int] = {}
        self.idf = np.zeros(0)
        self._vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # text -> its vector's (columns, values), once

    def fit(self, texts: list[str]) -> "TfIdf":
        df: Counter = Counter()
        for t in texts:
            df.update(set(char_ngrams(t, self.n_min, self.n_max)))
        grams = sorted(df)  # sorted, as scikit-learn orders its columns
        self.vocabulary = {g: i for i, g in enumerate(grams)}
        self.idf = np.array([math.log((1 + len(texts)) / (1 + df[g])) + 1 for g in grams])
        self._vectors = {}  # those of the previous fit
        return self

    def transform(self, texts: list[str]) -> torch.Tensor:
        """Sparse float64 [len(texts), vocabulary]: each text's unit-length TF-IDF vector (all zero when
        none of its n-grams was fitted)."""
        rows, cols, vals = [], [], []
        for r, t in enumerate(texts):
            c, v = self._vector(t)
            rows.append(np.full(len(c), r))
            cols.append(c)
            vals.append(v)
        cat = (lambda xs, dtype: np.concatenate(xs) if xs else np.zeros(0, dtype))
        index = torch.from_numpy(np.stack([cat(rows, np.int64), cat(cols, np.int64)]))
        return torch.sparse_coo_tensor(index, torch.from_numpy(cat(vals, np.float64)),
                                       (len(texts), len(self.vocabulary)), check_invariants=False).coalesce()

    def _vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The columns and values of one text's unit vector (none when no n-gram of it was fitted); each
        text is vectorised once and kept, as matchers read the same CVs and JDs step after step."""
        if text not in self._vectors:
            counts = Counter(self.vocabulary[g] for g in char_ngrams(text, self.n_min, self.n_max) if g in self.vocabulary)
            c = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            v = np.fromiter(counts.values(), dtype=np.float64, count=len(counts)) * self.idf[c]
            self._vectors[text] = (c, v / np.linalg.norm(v) if len(v) else v)
        return self._vectors[text]

    def cosine(self, a: list[str], b: list[str]) -> np.ndarray:
        """[n] cos(a_i, b_i) of aligned texts; each distinct text is vectorised once."""
        ua, ub = list(dict.fromkeys(a)), list(dict.fromkeys(b))
        ia, ib = {t: i for i, t in enumerate(ua)}, {t: i for i, t in enumerate(ub)}
        xa, xb = self.transform(ua), self.transform(ub)
        pa = xa.index_select(0, torch.tensor([ia[t] for t in a], dtype=torch.long))
        pb = xb.index_select(0, torch.tensor([ib[t] for t in b], dtype=torch.long))
        return torch.sparse.sum(pa * pb, dim=1).to_dense().numpy() if len(a) else np.zeros(0)

    def cosine_all(self, a: list[str], b: list[str], chunk: int = 256) -> np.ndarray:
        """[len(a), len(b)]: every text of a against every text of b (b made dense `chunk` texts at a time)."""
        xa, xb = self.transform(a), self.transform(b)
        out = np.zeros((len(a), len(b)))
        for i in range(0, len(b), chunk):
            out[:, i : i + chunk] = torch.sparse.mm(xa, xb.index_select(0, torch.arange(i, min(i + chunk, len(b)))).to_dense().T).numpy()
        return out
