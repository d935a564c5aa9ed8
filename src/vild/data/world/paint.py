"""The look of one object: its random pose and texture (`ObjectDraw`), a colour that stands out
from what lies behind it, and the paint of its texture on its local canvas.

Randomness comes only from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from vild.data.world.categories import COLOURS, TEXTURES, Category
from vild.data.world.raster import Raster, rasterise
from vild.data.world.shapes import transform, unit_shape

_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_RGB = np.array([COLOURS[n] for n in _COLOUR_NAMES], dtype=np.float32)
_TEXTURE_NAMES = tuple(TEXTURES)
_UNIT_CACHE: dict[tuple, list] = {}


def _unit(cat: Category) -> list:
    """The category's unit polygons, built once per (shape, params): every object reuses them."""
    key = (cat.shape, tuple(sorted(cat.params.items())))
    if key not in _UNIT_CACHE:
        _UNIT_CACHE[key] = unit_shape(cat.shape, cat.params)
    return _UNIT_CACHE[key]


@dataclass
class ObjectDraw:
    """The random appearance of one object (everything but its position)."""

    category: int  # index into the category list (0-based)
    size: float  # px: the shape's longer side before rotation
    rotation: float
    aspect: float
    flip: bool
    texture: str
    colour: str = ""
    rgb: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))


def sample_object(rng: np.random.Generator, categories: list[Category], cat_index: int, size: float) -> ObjectDraw:
    cat = categories[cat_index]
    return ObjectDraw(
        category=cat_index,
        size=float(size),
        rotation=float(cat.base_rotation + rng.uniform(-cat.rotation, cat.rotation)),
        aspect=float(np.exp(rng.uniform(-0.2, 0.2))),
        flip=bool(cat.flip and rng.random() < 0.5),
        texture=_TEXTURE_NAMES[int(rng.integers(len(_TEXTURE_NAMES)))],
    )


def raster_object(obj: ObjectDraw, categories: list[Category], centre: tuple[float, float]) -> Raster:
    ops = transform(_unit(categories[obj.category]), size=obj.size, rotation_deg=obj.rotation,
                    aspect=obj.aspect, flip=obj.flip, centre=centre)
    return rasterise(ops)


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def choose_colour(rng: np.random.Generator, behind: np.ndarray) -> tuple[str, np.ndarray]:
    """A colour name that contrasts with the mean colour `behind` the object, plus a jittered RGB."""
    dist = np.linalg.norm(_COLOUR_RGB - behind[None, :], axis=1)
    ok = np.flatnonzero(dist > 110)
    idx = int(rng.choice(ok)) if len(ok) else int(np.argmax(dist))
    rgb = np.clip(_COLOUR_RGB[idx] + rng.uniform(-12, 12, 3), 0, 255).astype(np.float32)
    return _COLOUR_NAMES[idx], rgb


def _second_colour(rgb: np.ndarray) -> np.ndarray:
    # same hue, clearly lighter or darker, but not so far that the pattern breaks the silhouette
    if _luma(rgb) < 140:
        return rgb * 0.45 + 255 * 0.55
    return rgb * 0.45


def texture_layer(rng: np.random.Generator, obj: ObjectDraw, alpha: np.ndarray) -> np.ndarray:
    """RGB float32 [h, w, 3] paint for an object on its local canvas (colour x texture)."""
    h, w = alpha.shape
    rgb = obj.rgb
    kind = obj.texture
    if kind == "solid":
        return np.broadcast_to(rgb, (h, w, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    second = _second_colour(rgb)
    if kind == "striped":
        period = max(3.0, obj.size / rng.uniform(3.5, 6.0))
        sel = (u / period) % 1.0 < 0.5
    elif kind == "checkered":
        cell = max(2.5, obj.size / rng.uniform(3.0, 5.0))
        sel = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
    elif kind == "dotted":
        spacing = max(4.0, obj.size / rng.uniform(3.5, 5.5))
        du = (u / spacing) % 1.0 - 0.5
        dv = (v / spacing) % 1.0 - 0.5
        sel = (du * du + dv * dv) > 0.3 ** 2  # True = base colour, False = dot
    elif kind == "gradient":
        t = (u - u.min()) / max(1e-6, float(u.max() - u.min()))
        end = rgb * 0.35 if _luma(rgb) > 60 else rgb * 0.3 + 200 * 0.7
        return (rgb[None, None] * (1 - t[..., None]) + end[None, None] * t[..., None]).astype(np.float32)
    elif kind == "outline":
        border = int(np.clip(round(obj.size * 0.12), 1, 6))
        inner = np.asarray(Image.fromarray(alpha).filter(ImageFilter.MinFilter(2 * border + 1)), np.float32) / 255.0
        edge = rgb * 0.3 if _luma(rgb) > 70 else rgb * 0.3 + 255 * 0.7  # a thick dark (or light) border
        return (rgb[None, None] * inner[..., None] + edge[None, None] * (1 - inner[..., None])).astype(np.float32)
    else:  # pragma: no cover - guarded by TEXTURES
        raise ValueError(kind)
    return np.where(sel[..., None], rgb[None, None], second[None, None]).astype(np.float32)


def mean_under(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return image.reshape(-1, 3).mean(axis=0)
    return image[mask].mean(axis=0)
