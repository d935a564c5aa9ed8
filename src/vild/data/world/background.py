"""Cluttered backgrounds (never a category) and the final sensor noise of every image.

Randomness comes only from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


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
