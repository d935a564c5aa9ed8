"""Rasterising an object's polygons into an exact coverage alpha, and placing it on an image.

Every object is rasterised on its own small canvas at `SUPERSAMPLE`x resolution (PIL polygon
fill, holes carved) and box-filtered down to a coverage alpha in 0..255. Its mask is
`alpha >= 128`; pixels of the image (`composite`) and of the masks (`full_mask`) come from the
same alpha, so the masks are exact for the rendered image (including holes: ring, gear, frame, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4


@dataclass
class Raster:
    """Coverage of one object: `alpha` uint8 [h, w] whose pixel (0, 0) is image pixel (y0, x0)."""

    alpha: np.ndarray
    x0: int
    y0: int

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= 128


def rasterise(ops: list, supersample: int = SUPERSAMPLE) -> Raster:
    """Pixel-space polygons [(points [N, 2] xy, fill)] -> coverage alpha on a tight local canvas.
    Pixel (i, j) covers the square [j, j + 1) x [i, i + 1) of the continuous plane."""
    filled = np.concatenate([p for p, f in ops if f])
    x0 = int(np.floor(filled[:, 0].min())) - 1
    y0 = int(np.floor(filled[:, 1].min())) - 1
    w = int(np.ceil(filled[:, 0].max())) + 1 - x0
    h = int(np.ceil(filled[:, 1].max())) + 1 - y0
    ss = supersample
    canvas = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(canvas)
    offset = np.array([x0, y0], dtype=np.float64)
    for pts, fill in ops:
        q = (pts - offset) * ss - 0.5  # PIL samples pixel centres at integer coordinates
        draw.polygon([tuple(p) for p in q.tolist()], fill=255 if fill else 0)
    alpha = np.asarray(canvas.resize((w, h), Image.BOX), dtype=np.uint8)
    return Raster(alpha, x0, y0)


def composite(image: np.ndarray, raster: Raster, layer: np.ndarray) -> None:
    """Alpha-blend `layer` (local canvas) into float image [H, W, 3] in place, clipped to it."""
    H, W = image.shape[:2]
    h, w = raster.alpha.shape
    xa, ya = max(0, raster.x0), max(0, raster.y0)
    xb, yb = min(W, raster.x0 + w), min(H, raster.y0 + h)
    if xa >= xb or ya >= yb:
        return
    sl = (slice(ya - raster.y0, yb - raster.y0), slice(xa - raster.x0, xb - raster.x0))
    a = raster.alpha[sl].astype(np.float32)[..., None] / 255.0
    region = image[ya:yb, xa:xb]
    region *= 1.0 - a
    region += layer[sl] * a


def full_mask(raster: Raster, height: int, width: int) -> np.ndarray:
    """The object's mask (alpha >= 128) on the whole image, bool [H, W]."""
    out = np.zeros((height, width), dtype=bool)
    h, w = raster.alpha.shape
    xa, ya = max(0, raster.x0), max(0, raster.y0)
    xb, yb = min(width, raster.x0 + w), min(height, raster.y0 + h)
    if xa < xb and ya < yb:
        out[ya:yb, xa:xb] = raster.mask[ya - raster.y0:yb - raster.y0, xa - raster.x0:xb - raster.x0]
    return out
