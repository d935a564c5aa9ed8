"""Procedural drawing of ShapeWorld-OV scenes and web crops, with exact instance masks.

Every object is rasterised on its own small canvas at `SUPERSAMPLE`x resolution (PIL polygon
fill, holes carved), box-filtered down to a coverage alpha in 0..255, and alpha-composited onto
the image. Its mask is `alpha >= 128`; the *visible* mask of an instance removes the masks of
objects drawn after it. Pixels of the image and of the masks come from the same alpha, so the
masks are exact for the rendered image (including holes: ring, gear, frame, ...).

Randomness comes only from the `numpy.random.Generator` passed in, so a scene is a pure
function of its seed.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vild.data.world.categories import COLOURS, TEXTURES, Category
from vild.data.world.shapes import transform, unit_shape

SUPERSAMPLE = 4
MIN_VISIBLE_PX = 16  # an instance must keep at least this many visible mask pixels
MIN_VISIBLE_FRAC = 0.45  # ... and this fraction of its unoccluded, unclipped area
MIN_INSIDE_FRAC = 0.7  # at most 30% of an object may fall outside the image
PLACEMENT_TRIES = 12

_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_RGB = np.array([COLOURS[n] for n in _COLOUR_NAMES], dtype=np.float32)
_TEXTURE_NAMES = tuple(TEXTURES)
_UNIT_CACHE: dict[tuple, list] = {}


def _unit(cat: Category) -> list:
    key = (cat.shape, tuple(sorted(cat.params.items())))
    if key not in _UNIT_CACHE:
        _UNIT_CACHE[key] = unit_shape(cat.shape, cat.params)
    return _UNIT_CACHE[key]


# ------------------------------------------------------------------ rasterisation


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


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo)))))


# ------------------------------------------------------------------ appearance


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


def mean_under(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return image.reshape(-1, 3).mean(axis=0)
    return image[mask].mean(axis=0)


# ------------------------------------------------------------------ backgrounds


def _muted(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.45), rng.uniform(0.3, 0.85))
    return np.array([r, g, b], dtype=np.float32) * 255


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cluttered background, float32 [H, W, 3]: gradient + colour blotches + distractor strokes
    and blobs (never a category) + pixel noise."""
    c1, c2 = _muted(rng), _muted(rng)
    yy = np.arange(height, dtype=np.float32)[:, None] / max(height, width)
    xx = np.arange(width, dtype=np.float32)[None, :] / max(height, width)
    kind = int(rng.integers(3))
    if kind == 0:
        th = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(th) + yy * np.sin(th)
    elif kind == 1:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    else:
        t = np.zeros((height, width), np.float32)
    t = np.broadcast_to(t, (height, width))
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    img = c1[None, None] + (c2 - c1)[None, None] * t[..., None]
    # low-frequency colour blotches
    gh, gw = (int(v) for v in rng.integers(2, 7, 2))
    grid = np.clip(128 + rng.normal(0, 45, (gh, gw, 3)), 0, 255).astype(np.uint8)
    blotch = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32) - 128.0
    img += blotch * rng.uniform(0.1, 0.6)
    img = np.clip(img, 0, 255)
    img = _distractors(rng, img)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1, 10))
    return img


def _distractors(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    height, width = img.shape[:2]
    scale = max(height, width)
    area = height * width / (128.0 * 128.0)
    base = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGBA")
    over = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)

    def colour(alpha_lo: int, alpha_hi: int) -> tuple:
        c = _muted(rng) if rng.random() < 0.6 else rng.uniform(0, 255, 3)
        return (*(int(x) for x in c), int(rng.integers(alpha_lo, alpha_hi)))

    for _ in range(int(rng.poisson(3.0 * area))):  # strokes: polylines and arcs
        if rng.random() < 0.6:
            n = int(rng.integers(2, 5))
            start = rng.uniform(-0.1, 1.1, 2) * scale
            pts = start + np.cumsum(rng.normal(0, 0.25 * scale, (n, 2)), axis=0)
            draw.line([tuple(p) for p in pts.tolist()], fill=colour(60, 200), width=int(rng.integers(1, 4)))
        else:
            cx, cy = rng.uniform(0, 1, 2) * scale
            r = rng.uniform(0.05, 0.4) * scale
            a0 = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], a0, a0 + rng.uniform(30, 160),
                     fill=colour(60, 200), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.poisson(1.5 * area))):  # irregular blobs (jagged, semi-transparent)
        n = int(rng.integers(7, 12))
        cx, cy = rng.uniform(0, 1, 2) * scale
        r = max(2.0, rng.uniform(0.03, 0.2) * scale)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.35, 1.0, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=colour(40, 130))
    if rng.random() < 0.2:  # faint hatching
        step = int(rng.integers(4, 10))
        c = colour(25, 70)
        for k in range(-scale, 2 * scale, step):
            draw.line([(k, 0), (k + scale, scale)], fill=c, width=1)
    out = Image.alpha_composite(base, over).convert("RGB")
    return np.asarray(out, dtype=np.float32).copy()


def finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Light sensor noise over everything, then uint8."""
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1, 5))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


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
