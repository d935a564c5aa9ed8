"""Reading a generated ShapeWorld-OV folder (light: numpy and json only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vild.errors import VildError

WORLD_VERSION = 1


def image_file_name(index: int) -> str:
    """File name of detection image `index` (0-based); its LVIS image id is index + 1."""
    return f"{index + 1:06d}.png"


@dataclass(frozen=True)
class WebCorpus:
    images: np.ndarray  # uint8 [N, S, S, 3]
    category_ids: np.ndarray  # int64 [N], LVIS category ids 1..C
    captions: list[str]  # N strings


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
        return self.root / "web" / f"{split}.npz", self.root / "web" / f"{split}_captions.json"

    def load_web(self, split: str = "train") -> WebCorpus:
        """The web image-caption corpus of `split` ("train" or "val") in memory."""
        npz_path, cap_path = self.web_paths(split)
        with np.load(npz_path) as data:
            images, ids = data["images"], data["category_ids"]
        captions = json.loads(cap_path.read_text("utf-8"))
        return WebCorpus(images, ids, captions)


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
