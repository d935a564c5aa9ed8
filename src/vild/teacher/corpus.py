"""The teacher's data: a ShapeWorld-OV world's web image-caption corpus and its categories.

Only `OUT/web/{split}.npz` images and `{split}_captions.json` captions are read for training,
never a detection annotation; `world.json` gives the categories (held-out checks) and the
colour words (caption colour dropout). Every problem with the files is one `VildError` line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vild.errors import VildError


@dataclass
class WebCorpus:
    """The web image-caption corpus of a ShapeWorld-OV world."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    captions: list[str]
    category_ids: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.captions)


def load_web_corpus(world_dir: str | os.PathLike, split: str = "train") -> WebCorpus:
    """`WORLD/web/{split}.npz` + `{split}_captions.json` -> WebCorpus (images as [N, 3, S, S])."""
    world = Path(world_dir).expanduser()
    npz_path = world / "web" / f"{split}.npz"
    cap_path = world / "web" / f"{split}_captions.json"
    if not world.is_dir():
        raise VildError(f"world folder not found: {world} (generate one with `vild make-world {world}`)")
    for p in (npz_path, cap_path):
        if not p.is_file():
            raise VildError(f"{p} is missing: {world} is not a complete ShapeWorld-OV world "
                            f"(re-run `vild make-world {world} --overwrite`)")
    try:
        with np.load(npz_path) as data:
            images = data["images"]
            ids = data["category_ids"] if "category_ids" in data.files else np.zeros(len(images), np.int64)
    except (KeyError, ValueError, OSError) as e:
        raise VildError(f"{npz_path} is not a web corpus npz (images, category_ids): {e}") from None
    try:
        captions = json.loads(cap_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VildError(f"{cap_path} is not valid JSON: {e}") from None
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise VildError(f"{npz_path}: images must be uint8 [N, S, S, 3], got {images.dtype} {images.shape}")
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise VildError(f"{cap_path} must be a JSON list of strings")
    if len(captions) != len(images) or len(ids) != len(images):
        raise VildError(f"{world / 'web'}: {len(images)} images, {len(captions)} captions and "
                        f"{len(ids)} category ids for split {split!r}; they must match")
    if len(images) == 0:
        raise VildError(f"{npz_path} holds no images")
    return WebCorpus(
        images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        captions=captions,
        category_ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)),
    )


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
