"""Reading vocabularies: comma lists, text files, ShapeWorld worlds and LVIS/COCO json files.

A vocabulary is a list of entries; an entry is a list of synonyms whose first element is the
display name (what `TextClassifier.names` reports).
"""

from __future__ import annotations

import os
from pathlib import Path

from vild.errors import VildError, VocabularyError
from vild.io import load_json


def _entry(text: str) -> list[str]:
    return [s.strip() for s in text.split("|") if s.strip()]


def parse_vocab_string(text: str) -> list[list[str]]:
    """``"circle, star|pentagram"`` -> ``[["circle"], ["star", "pentagram"]]``."""
    entries = [_entry(part) for part in text.split(",")]
    entries = [e for e in entries if e]
    if not entries:
        raise VocabularyError("the vocabulary is empty: give comma-separated names")
    return entries


def read_vocab_file(path: str | os.PathLike) -> list[list[str]]:
    """One category per line, synonyms separated by ``|``; blank lines and ``#`` comments are
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise VildError(f"vocabulary file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise VocabularyError(f"{path} is not UTF-8 text: {e}") from None
    entries = [_entry(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    entries = [e for e in entries if e]
    if not entries:
        raise VocabularyError(f"the vocabulary file {path} has no categories")
    return entries


def _from_categories(categories, where: str) -> list[list[str]]:
    if not isinstance(categories, list) or not categories:
        raise VildError(f"{where} has no 'categories' list")
    try:
        ordered = sorted(categories, key=lambda c: c["id"])
        entries = []
        for c in ordered:
            syn = c.get("synonyms") or []
            if not isinstance(syn, list):
                raise TypeError("synonyms is not a list")
            entries.append([c["name"], *syn])
    except (KeyError, TypeError, AttributeError) as e:
        raise VildError(f"{where}: malformed category entry ({e})") from None
    return entries


def vocabulary_from_world(world_dir: str | os.PathLike) -> list[list[str]]:
    """Categories (name + synonyms, in id order) of a ShapeWorld-OV world directory."""
    world_dir = Path(world_dir)
    path = world_dir / "world.json" if world_dir.is_dir() else world_dir
    data = load_json(path)
    return _from_categories(data.get("categories") if isinstance(data, dict) else None, str(path))


def vocabulary_from_lvis(path: str | os.PathLike) -> list[list[str]]:
    """Categories (name + synonyms, in id order) of an LVIS/COCO-format annotation json."""
    data = load_json(path)
    return _from_categories(data.get("categories") if isinstance(data, dict) else None, str(path))
