"""The teacher's caption augmentation: colour-word dropout and frequent-word subsampling."""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from vild.teacher.pretrain import caption_words


_ARTICLE = re.compile(r"\b(a|an) (?=(\S))", re.IGNORECASE)


def strip_words(caption: str, words: Sequence[str]) -> tuple[str, bool]:
    """Remove whole `words` from a caption (fixing a/an); returns (caption, anything removed)."""
    if not words:
        return caption, False
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b ?",
                         re.IGNORECASE)
    out, n = pattern.subn("", caption)
    if not n:
        return caption, False
    out = re.sub(r"\s+", " ", out).strip()

    def fix(m: re.Match) -> str:
        art = "an" if m.group(2).lower() in "aeiou" else "a"
        return (art.capitalize() if m.group(1)[0].isupper() else art) + " "

    return _ARTICLE.sub(fix, out), True


def word_frequencies(captions: Sequence[str]) -> dict[str, float]:
    """Fraction of all caption words that are each word (lower-cased)."""
    counts: dict[str, int] = {}
    total = 0
    for c in captions:
        for w in caption_words(c):
            counts[w] = counts.get(w, 0) + 1
            total += 1
    return {w: n / max(total, 1) for w, n in counts.items()}


def subsample_words(caption: str, freq: dict[str, float], threshold: float, rng: np.random.Generator) -> str:
    """word2vec-style subsampling of frequent words: keep a word with probability
    min(1, sqrt(threshold / frequency)), so template words ("a", "photo", "of") mostly go and
    the informative ones (names, attributes) stay. Never returns an empty caption."""
    words = caption_words(caption)
    kept = [w for w in words if rng.random() < math.sqrt(threshold / max(freq.get(w, threshold), 1e-12))]
    return " ".join(kept) if kept else caption
