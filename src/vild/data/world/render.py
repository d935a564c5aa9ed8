"""Procedural drawing of ShapeWorld-OV scenes and web crops, with exact instance masks.

Objects are rasterised to a coverage alpha (`vild.data.world.raster`), painted
(`vild.data.world.paint`) and alpha-composited onto a cluttered background
(`vild.data.world.background`) back to front. The *visible* mask of an instance removes the
masks of objects drawn after it, so the masks are exact for the rendered image.

Randomness comes only from the `numpy.random.Generator` passed in, so a scene is a pure
function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vild.data.world.background import background, finish
from vild.data.world.categories import Category
from vild.data.world.paint import ObjectDraw, choose_colour, mean_under, raster_object, sample_object, texture_layer
from vild.data.world.raster import Raster, composite, full_mask

MIN_VISIBLE_PX = 16  # an instance must keep at least this many visible mask pixels
MIN_VISIBLE_FRAC = 0.45  # ... and this fraction of its unoccluded, unclipped area
MIN_INSIDE_FRAC = 0.7  # at most 30% of an object may fall outside the image
PLACEMENT_TRIES = 12


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A size drawn log-uniformly from [lo, max(hi, lo)]."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo)))))


# ------------------------------------------------------------------ scenes


@dataclass
class Instance:
    category: int  # 0-based index into the category list
    mask: np.ndarray  # bool [H, W] visible mask
    colour: str
    texture: str
    size: float


def render_scene(
    rng: np.random.Generator,
    categories: list[Category],
    weights: np.ndarray,
    *,
    height: int,
    width: int,
    min_objects: int = 1,
    max_objects: int = 8,
    min_size: float = 10.0,
    max_frac: float = 0.6,
) -> tuple[np.ndarray, list[Instance]]:
    """One detection image: uint8 [H, W, 3] and its instances (visible masks), back to front.

    Objects are placed one by one; a placement is rejected (up to PLACEMENT_TRIES times, then
    the object is skipped) if it would leave any instance with less than MIN_VISIBLE_FRAC of
    its area or MIN_VISIBLE_PX pixels visible, so every drawn object is annotated."""
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    img = background(rng, height, width)
    n_obj = int(rng.integers(min_objects, max_objects + 1))
    max_size = max(min_size, max_frac * min(height, width))
    placed: list[tuple[ObjectDraw, Raster, np.ndarray, int]] = []  # obj, raster, full mask, area
    for _ in range(n_obj):
        cat = int(rng.choice(len(categories), p=p))
        obj = sample_object(rng, categories, cat, log_uniform(rng, min_size, max_size))
        sub = rng.uniform(0, 1, 2)
        raster = raster_object(obj, categories, (float(sub[0]), float(sub[1])))
        area = int(raster.mask.sum())
        if area < MIN_VISIBLE_PX:
            continue
        for _try in range(PLACEMENT_TRIES):
            dx, dy = int(rng.integers(0, width)), int(rng.integers(0, height))
            cand = Raster(raster.alpha, raster.x0 + dx, raster.y0 + dy)
            m = full_mask(cand, height, width)
            if m.sum() < max(MIN_VISIBLE_PX, MIN_INSIDE_FRAC * area):
                continue
            ok = True
            for _o, _r, pm, parea in placed:
                if (pm & ~m).sum() < max(MIN_VISIBLE_PX, MIN_VISIBLE_FRAC * parea):
                    ok = False
                    break
            if not ok:
                continue
            obj.colour, obj.rgb = choose_colour(rng, mean_under(img, m))
            composite(img, cand, texture_layer(rng, obj, cand.alpha))
            placed = [(o, r, pm & ~m, pa) for o, r, pm, pa in placed]
            placed.append((obj, cand, m, area))
            break
    instances = [Instance(o.category, pm, o.colour, o.texture, o.size) for o, _r, pm, _a in placed]
    return finish(rng, img), instances


# ------------------------------------------------------------------ web crops


@dataclass
class Crop:
    image: np.ndarray  # uint8 [S, S, 3]
    category: int
    colour: str
    texture: str
    size: float  # px at detection scale
    size_word: str  # "small" | "medium" | "large"
    neighbours: int


def size_word(size: float, ref: float) -> str:
    if size < 0.17 * ref:
        return "small"
    if size > 0.38 * ref:
        return "large"
    return "medium"


def render_crop(
    rng: np.random.Generator,
    categories: list[Category],
    cat_index: int,
    *,
    out_size: int = 64,
    ref_size: int = 128,
    min_size: float = 10.0,
    max_frac: float = 0.6,
) -> Crop:
    """One web image: a single object framed like a detector proposal crop, resized to S x S.

    The object is drawn at detection scale (same size range as in `ref_size` detection images)
    on a cluttered background, fills 50-95% of the crop's width / height (a third of the time
    with 1.5x context: 33-63%), with jitter, sometimes with parts of neighbouring objects at the
    edges; the crop is then resized (squashed) to S x S like the teacher resizes proposals."""
    # web objects start at 1.4x the smallest detection size: crops of 10 px objects are blurs
    # that no teacher can name, and they would only add label noise to its training
    size0 = log_uniform(rng, min(1.4 * min_size, max_frac * ref_size), max_frac * ref_size)
    obj = sample_object(rng, categories, cat_index, size0)
    fill = rng.uniform(0.5, 0.95)
    if rng.random() < 1 / 3:
        fill /= 1.5
    fx = float(np.clip(fill * rng.uniform(0.88, 1.12), 0.3, 0.97))
    fy = float(np.clip(fill * rng.uniform(0.88, 1.12), 0.3, 0.97))
    raster = raster_object(obj, categories, (0.0, 0.0))
    ys, xs = np.nonzero(raster.mask)
    cap = 1.5 * out_size  # never draw a canvas larger than 1.5 S: shrink the scene instead
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    if max(bw / fx, bh / fy) > cap:
        obj.size *= cap / max(bw / fx, bh / fy) * 0.97
        raster = raster_object(obj, categories, (0.0, 0.0))
        ys, xs = np.nonzero(raster.mask)
        bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    W = int(np.clip(round(bw / fx), bw, cap))
    H = int(np.clip(round(bh / fy), bh, cap))
    left = (W - bw) * rng.uniform(0.15, 0.85)
    top = (H - bh) * rng.uniform(0.15, 0.85)
    dx = int(round(left - (raster.x0 + xs.min())))
    dy = int(round(top - (raster.y0 + ys.min())))
    main = Raster(raster.alpha, raster.x0 + dx, raster.y0 + dy)

    img = background(rng, H, W)
    n_nb = int(rng.choice(3, p=[0.45, 0.35, 0.2]))
    for _ in range(n_nb):  # partial neighbours at the crop's edges, behind the main object
        nb = sample_object(rng, categories, int(rng.integers(len(categories))), obj.size * rng.uniform(0.5, 1.3))
        side = int(rng.integers(4))
        out = nb.size * rng.uniform(-0.1, 0.35)  # how far the neighbour's centre lies outside
        along = rng.uniform(0, 1)
        cx, cy = [(along * W, -out), (along * W, H + out), (-out, along * H), (W + out, along * H)][side]
        nr = raster_object(nb, categories, (float(cx), float(cy)))
        m = full_mask(nr, H, W)
        if not m.any():
            continue
        nb.colour, nb.rgb = choose_colour(rng, mean_under(img, m))
        composite(img, nr, texture_layer(rng, nb, nr.alpha))
    m = full_mask(main, H, W)
    obj.colour, obj.rgb = choose_colour(rng, mean_under(img, m))
    composite(img, main, texture_layer(rng, obj, main.alpha))
    pil = Image.fromarray(finish(rng, img))
    if (W, H) != (out_size, out_size):
        pil = pil.resize((out_size, out_size), Image.BILINEAR)
    return Crop(np.asarray(pil, dtype=np.uint8), cat_index, obj.colour, obj.texture, size0,
                size_word(size0, ref_size), n_nb)
