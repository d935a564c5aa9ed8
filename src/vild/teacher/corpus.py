"""The teacher's data: a ShapeWorld-OV world's web image-caption corpus and its categories.

Only `OUT/web/{split}.npz` images and `{split}_captions.json` captions are read for training,
never a detection annotation; `world.json` gives the categories (held-out checks) and the
colour words (caption colour dropout). Every problem with the files is one `VildError` line.
The corpus reader is the world's own (`vild.data.world.layout`, an earlier stage).
"""

from __future__ import annotations

import os
from pathlib import Path

from vild.data.world.layout import WebCorpus, load_web_corpus, load_world
from vild.errors import VildError

__all__ = ["WebCorpus", "load_categories", "load_web_corpus", "world_colour_words"]


def world_colour_words(world_dir: str | os.PathLike) -> list[str]:
    """Colour names of a world (caption colour dropout); [] for a folder with only a web
    corpus, which is all the teacher needs."""
    try:
        return load_world(Path(world_dir).expanduser()).colour_words
    except VildError:
        return []


def load_categories(world_dir: str | os.PathLike) -> list[dict]:
    """The world's categories: [{id, name, synonyms, frequency, novel, ...}, ...]."""
    categories = load_world(Path(world_dir).expanduser()).info.get("categories")
    if not isinstance(categories, list):
        raise VildError(f"{Path(world_dir) / 'world.json'} has no categories list")
    return categories
