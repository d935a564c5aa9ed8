"""The text classifier: ViLD prompts, fast exact text encoding, an on-disk embedding cache.

    from vild.text import build_text_classifier, TextClassifier
    clf = build_text_classifier(teacher, ["circle", ["star", "pentagram"]])
    clf.embeddings  # [C, D] float32, rows L2-normalised;  clf.names  # ["circle", "star"]

Importing this package is light (no torch); the submodules import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "TextClassifier",
    "build_text_classifier",
    "TextEncoder",
    "EmbeddingCache",
    "default_cache_dir",
    "normalize_name",
    "article",
    "prompts_for",
    "resolve_templates",
    "vild_templates",
    "SINGLE_TEMPLATE",
    "parse_vocab_string",
    "read_vocab_file",
    "vocabulary_from_world",
    "vocabulary_from_lvis",
]

_WHERE = {
    "TextClassifier": "classifier",
    "build_text_classifier": "classifier",
    "TextEncoder": "encode",
    "EmbeddingCache": "cache",
    "default_cache_dir": "cache",
    "normalize_name": "prompts",
    "article": "prompts",
    "prompts_for": "prompts",
    "resolve_templates": "prompts",
    "vild_templates": "prompts",
    "SINGLE_TEMPLATE": "prompts",
    "parse_vocab_string": "vocab",
    "read_vocab_file": "vocab",
    "vocabulary_from_world": "vocab",
    "vocabulary_from_lvis": "vocab",
}

if TYPE_CHECKING:  # pragma: no cover
    from vild.text.cache import EmbeddingCache, default_cache_dir
    from vild.text.classifier import TextClassifier, build_text_classifier
    from vild.text.encode import TextEncoder
    from vild.text.prompts import (
        SINGLE_TEMPLATE,
        article,
        normalize_name,
        prompts_for,
        resolve_templates,
        vild_templates,
    )
    from vild.text.vocab import (
        parse_vocab_string,
        read_vocab_file,
        vocabulary_from_lvis,
        vocabulary_from_world,
    )


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        module = importlib.import_module(f"vild.text.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'vild.text' has no attribute {name!r}")
