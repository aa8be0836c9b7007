"""`tfidf`: hashed TF-IDF vectors, an ablation without a language model.

Features are lowercased word n-grams and, optionally, character n-grams inside words (marked
with `<` and `>` at word boundaries, as in fastText). Each feature is weighted by sublinear term
frequency `1 + ln(count)` times the smoothed inverse document frequency
`ln((1 + n) / (1 + df)) + 1`, then hashed into `dim` buckets with a hash-derived sign, so
collisions cancel out on average instead of piling up. Rows are L2-normalised.

Document frequencies are counted over the texts of one `encode` call (the catalog), so the
same catalog always gives the same vectors. It needs seconds, not minutes: nothing is cached.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from marlrec.encoders import Encoder
from marlrec.registry import PluginError

WORD = re.compile(r"\w+")


class TfidfEncoder(Encoder):
    """Sparse lexical features folded into a dense, fixed-width vector per text."""

    @dataclass(kw_only=True)
    class Config:
        dim: int = 384
        """Width of the embeddings (hash buckets)."""
        word_ngrams: int = 1
        """Longest word n-gram used: 1 for single words, 2 adds word pairs, ..."""
        char_ngrams: int = 0
        """Length of the character n-grams taken inside each word; 0 uses none."""

    config: Config

    def __init__(self, config: Config, *, cache_dir: Path, device: torch.device) -> None:
        super().__init__(config, cache_dir=cache_dir, device=device)
        for key, least in (("dim", 1), ("word_ngrams", 1), ("char_ngrams", 0)):
            if getattr(config, key) < least:
                raise PluginError(
                    f"{self.where}: {key} must be at least {least}, got {getattr(config, key)}"
                )

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed `texts` in order as a float32 CPU tensor (len(texts), dim)."""
        counts = [Counter(self.features(text)) for text in texts]
        document_frequency = Counter(feature for c in counts for feature in c)
        columns, signed_idf = self._weights(document_frequency, len(texts))
        rows = np.repeat(np.arange(len(texts)), [len(c) for c in counts])
        cols = np.array([columns[f] for c in counts for f in c], dtype=np.int64)
        idf = np.array([signed_idf[f] for c in counts for f in c], dtype=np.float64)
        tf = 1.0 + np.log(np.array([n for c in counts for n in c.values()], dtype=np.float64))
        matrix = np.zeros((len(texts), self.config.dim), dtype=np.float64)
        np.add.at(matrix, (rows, cols), tf * idf)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix /= np.where(norms > 0, norms, 1.0)  # a text without features stays all zeros
        return torch.from_numpy(matrix.astype(np.float32))

    def _weights(
        self, document_frequency: Counter[str], n_texts: int
    ) -> tuple[dict[str, int], dict[str, float]]:
        """Each feature's hash bucket, and its smoothed IDF carrying the feature's hash sign."""
        columns, signed_idf = {}, {}
        for feature, df in document_frequency.items():
            columns[feature], sign = _bucket(feature, self.config.dim)
            signed_idf[feature] = sign * (math.log((1 + n_texts) / (1 + df)) + 1.0)
        return columns, signed_idf

    def features(self, text: str) -> list[str]:
        """The word n-grams and character n-grams of one text, with repeats."""
        words = WORD.findall(text.lower())
        out = [
            " ".join(words[i : i + n])
            for n in range(1, self.config.word_ngrams + 1)
            for i in range(len(words) - n + 1)
        ]
        size = self.config.char_ngrams
        if size:
            for word in words:
                marked = f"<{word}>"
                out.extend(f"#{marked[i : i + size]}" for i in range(len(marked) - size + 1))
        return out


def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """A stable (column, sign) for a feature: Python's own `hash` changes between runs."""
    value = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return value % dim, 1.0 if value >> 63 else -1.0
