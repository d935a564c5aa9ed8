"""The teacher's data: a ShapeWorld-OV world's web image-caption corpus and its categories.

Only `OUT/web/{split}.npz` images and `{split}_captions.json` captions are read for training,
never a detection annotation; `world.json` gives the categories (held-out checks) and the
colour words (caption colour dropout). Every problem with the files is one `VildError` line.
The corpus reader is the world's own (`vild.data.world.layout`, an earlier stage).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vild.data.world.layout import WebCorpus, load_web_corpus
from vild.errors import VildError

__all__ = ["WebCorpus", "load_categories", "load_web_corpus", "world_colour_words"]


def world_colour_words(world_dir: Path) -> list[str]:
    """Colour names of a world (world.json["colours"]), [] if it lists none."""
    try:
        data = json.loads((Path(world_dir) / "world.json").read_text(encoding="utf-8"))
        return [c["name"] if isinstance(c, dict) else str(c) for c in data.get("colours", [])]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return []


def load_categories(world_dir: str | os.PathLike) -> list[dict]:
    """`WORLD/world.json["categories"]`: [{id, name, synonyms, frequency, novel}, ...]."""
    path = Path(world_dir).expanduser() / "world.json"
    if not path.is_file():
        raise VildError(f"{path} is missing (generate the world with `vild make-world`)")
    try:
        cats = json.loads(path.read_text(encoding="utf-8"))["categories"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise VildError(f"{path} has no categories list: {e}") from None
    return cats
