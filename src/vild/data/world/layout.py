"""Reading a generated ShapeWorld-OV folder (light: numpy and json; torch only once the web
corpus is loaded)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vild.errors import VildError

if TYPE_CHECKING:  # pragma: no cover
    import torch

WORLD_VERSION = 1


def image_file_name(index: int) -> str:
    """File name of detection image `index` (0-based); its LVIS image id is index + 1."""
    return f"{index + 1:06d}.png"


@dataclass
class WebCorpus:
    """The web image-caption corpus of a ShapeWorld-OV world, laid out for the teacher."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    captions: list[str]  # N strings
    category_ids: torch.Tensor  # int64 [N], LVIS category ids 1..C

    def __len__(self) -> int:
        return len(self.captions)


def load_web_corpus(world_dir: str | os.PathLike, split: str = "train") -> WebCorpus:
    """`WORLD/web/{split}.npz` + `{split}_captions.json` -> WebCorpus (images as [N, 3, S, S]).
    Needs only the web folder, not world.json; every problem is one `VildError` line."""
    import torch  # here, not at module level: `vild make-world` never needs it

    world = Path(world_dir).expanduser()
    npz_path, cap_path = _web_files(world, split)
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


def _web_files(root: Path, split: str) -> tuple[Path, Path]:
    return root / "web" / f"{split}.npz", root / "web" / f"{split}_captions.json"


@dataclass(frozen=True)
class World:
    """A generated world on disk. Paths follow docs/architecture.md ("ShapeWorld-OV on disk")."""

    root: Path
    info: dict  # the parsed world.json

    @property
    def categories(self) -> list[dict]:
        """[{"id", "name", "synonyms", "frequency", "novel", "def", "shape"}], ids 1..C in order."""
        return self.info["categories"]

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def colour_words(self) -> list[str]:
        """The colour names the captions use (world.json["colours"]); [] if it lists none."""
        return [c["name"] if isinstance(c, dict) else str(c) for c in self.info.get("colours", [])]

    @property
    def novel_ids(self) -> list[int]:
        return [c["id"] for c in self.categories if c["novel"]]

    @property
    def base_ids(self) -> list[int]:
        return [c["id"] for c in self.categories if not c["novel"]]

    @property
    def train_images(self) -> Path:
        return self.root / "train" / "images"

    @property
    def train_annotations_base(self) -> Path:
        return self.root / "train" / "annotations_base.json"

    @property
    def train_annotations_all(self) -> Path:
        return self.root / "train" / "annotations_all.json"

    @property
    def val_images(self) -> Path:
        return self.root / "val" / "images"

    @property
    def val_annotations(self) -> Path:
        return self.root / "val" / "annotations.json"

    def web_paths(self, split: str = "train") -> tuple[Path, Path]:
        if split not in ("train", "val"):
            raise VildError(f"web split must be 'train' or 'val', got {split!r}")
        return _web_files(self.root, split)

    def load_web(self, split: str = "train") -> WebCorpus:
        """The web image-caption corpus of `split` ("train" or "val") in memory, as the
        teacher reads it (`load_web_corpus`)."""
        self.web_paths(split)  # checks the split name
        return load_web_corpus(self.root, split)


def load_world(path) -> World:
    """Open a folder written by `vild make-world` (checks that generation finished)."""
    root = Path(path)
    meta = root / "world.json"
    if not meta.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise VildError(f"{root} has no world.json: not a ShapeWorld-OV folder, or its generation did not finish")
        raise VildError(f"no ShapeWorld-OV world at {root} (run `vild make-world {root}`)")
    try:
        info = json.loads(meta.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise VildError(f"{meta} is not valid JSON: {e}") from None
    if info.get("version") != WORLD_VERSION:
        raise VildError(f"{meta}: world version {info.get('version')!r}, this vild reads version {WORLD_VERSION}")
    return World(root, info)
