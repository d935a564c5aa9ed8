"""`WorldConfig`: everything that determines a ShapeWorld-OV world, and its checks.

Light (numpy only), so the CLI can show the defaults without the renderer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vild.errors import VildError

IMAGE_SIZE_RANGE = (64, 512)
WEB_SIZE_RANGE = (16, 256)
MAX_OBJECTS = 32


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world. Same config -> byte-identical files."""

    seed: int = 0
    num_train: int = 2000  # detection training images
    num_val: int = 500  # detection validation images
    num_web: int = 1000  # web (image, caption) training pairs PER CATEGORY
    num_web_val: int = 100  # held-out web pairs PER CATEGORY
    image_size: tuple[int, int] = (128, 128)  # (min, max) side; each image's H and W drawn in range
    web_size: int = 64  # web images are web_size x web_size
    min_objects: int = 1
    max_objects: int = 8
    min_object_size: float = 10.0  # px, the shape's longer side before rotation
    max_object_frac: float = 0.6  # largest object size as a fraction of the image's shorter side
    categories: str = "default"  # built-in variant name or path to a categories JSON file
    novel: str | int | tuple[str, ...] | None = None  # None: designed rare; k: k drawn by seed; names
    train_weights: tuple[float, float, float] = (1.0, 0.3, 0.06)  # object sampling weight f, c, r
    val_weights: tuple[float, float, float] = (1.0, 0.75, 0.5)  # flatter: APr must be measurable


def validate_config(cfg: WorldConfig) -> None:
    """Raise VildError on any out-of-range setting."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise VildError(msg)

    for name in ("seed", "num_train", "num_val", "num_web", "num_web_val", "web_size", "min_objects", "max_objects"):
        v = getattr(cfg, name)
        need(isinstance(v, (int, np.integer)) and not isinstance(v, bool), f"{name} must be an integer, got {v!r}")
    need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    need(1 <= cfg.num_train <= 1_000_000, f"num_train must be in 1..1000000, got {cfg.num_train}")
    need(1 <= cfg.num_val <= 1_000_000, f"num_val must be in 1..1000000, got {cfg.num_val}")
    need(1 <= cfg.num_web <= 100_000, f"num_web (per category) must be in 1..100000, got {cfg.num_web}")
    need(1 <= cfg.num_web_val <= 100_000, f"num_web_val (per category) must be in 1..100000, got {cfg.num_web_val}")
    lo, hi = size_pair(cfg.image_size)
    need(IMAGE_SIZE_RANGE[0] <= lo <= hi <= IMAGE_SIZE_RANGE[1],
         f"image size must be within {IMAGE_SIZE_RANGE[0]}..{IMAGE_SIZE_RANGE[1]} px with min <= max, got {lo}..{hi}")
    need(WEB_SIZE_RANGE[0] <= cfg.web_size <= WEB_SIZE_RANGE[1],
         f"web size must be in {WEB_SIZE_RANGE[0]}..{WEB_SIZE_RANGE[1]} px, got {cfg.web_size}")
    need(1 <= cfg.min_objects <= cfg.max_objects <= MAX_OBJECTS,
         f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {cfg.min_objects}..{cfg.max_objects}")
    need(0.05 < cfg.max_object_frac <= 0.95, f"max_object_frac must be in (0.05, 0.95], got {cfg.max_object_frac}")
    need(4 <= cfg.min_object_size <= cfg.max_object_frac * lo,
         f"min_object_size must be >= 4 px and <= max_object_frac x smallest image side "
         f"({cfg.max_object_frac * lo:.0f} px), got {cfg.min_object_size}")
    for name in ("train_weights", "val_weights"):
        w = getattr(cfg, name)
        need(len(w) == 3 and all(float(x) > 0 for x in w), f"{name} must be three positive numbers (f, c, r), got {w}")


def size_pair(size) -> tuple[int, int]:
    """`image_size` as (min, max) side: an int means both."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    try:
        lo, hi = size
        return int(lo), int(hi)
    except (TypeError, ValueError):
        raise VildError(f"image size must be an int or (min, max), got {size!r}") from None



def config_json(cfg: WorldConfig) -> dict:
    """The config as world.json stores it (tuples as lists)."""
    d = dataclasses.asdict(cfg)
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d
