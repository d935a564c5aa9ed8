"""Procedural shapes as polygons in a unit frame (pure numpy, no drawing).

A shape is a list of `(points [N, 2] float, fill)` operations in image-like coordinates
(x right, y down), drawn in order: `fill=1` adds the polygon, `fill=0` carves it out (holes:
ring, gear, frame, house door, crescent). `unit_shape` normalises the union of the filled
polygons so that it is centred on the origin and its longer side spans [-1, 1].

`SHAPES[type] = ShapeType(build, rotation, flip)`: `build(**params)` makes the polygons,
`rotation` is the default maximum absolute random rotation in degrees (180 = any
orientation; small for upright objects such as house or tree), `flip` whether a random
mirror image is allowed. Category files (variants/*.json) name a type and its params.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Poly = tuple[np.ndarray, int]


def _ngon(n: int, r: float = 1.0, cx: float = 0.0, cy: float = 0.0, start_deg: float = -90.0) -> np.ndarray:
    a = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 72) -> np.ndarray:
    return _ngon(n, r, cx, cy, 0.0)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle_deg: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    return _rotate(pts, angle_deg) + np.array([cx, cy])


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _rotate(pts: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return pts @ np.array([[c, s], [-s, c]])


# ---------------------------------------------------------------- shape builders


def circle() -> list[Poly]:
    return [(_circle(), 1)]


def polygon(sides: int = 6) -> list[Poly]:
    sides = int(sides)
    # a flat bottom edge for every n (a square has axis-aligned sides, a triangle points up)
    start = -90.0 if sides % 2 else -90.0 + 180.0 / sides
    return [(_ngon(sides, start_deg=start), 1)]


def star(points: int = 5, inner: float = 0.42) -> list[Poly]:
    points = int(points)
    a = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, float(inner))
    return [(np.stack([r * np.cos(a), r * np.sin(a)], axis=1), 1)]


def heart() -> list[Poly]:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [(np.stack([x, y], axis=1) / 16.0, 1)]


def arrow(head: float = 0.9, head_width: float = 0.9, shaft: float = 0.24) -> list[Poly]:
    hx = 1.0 - head
    pts = [(-1, -shaft), (hx, -shaft), (hx, -head_width), (1, 0), (hx, head_width), (hx, shaft), (-1, shaft)]
    return [(np.array(pts, dtype=np.float64), 1)]


def crescent(offset: float = 0.45, inner: float = 0.82) -> list[Poly]:
    return [(_circle(), 1), (_circle(inner, offset, -0.12), 0)]


def cross(arm: float = 0.6) -> list[Poly]:
    a = arm / 2
    pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
    return [(np.array(pts, dtype=np.float64), 1)]


def ring(inner: float = 0.55) -> list[Poly]:
    return [(_circle(), 1), (_circle(inner), 0)]


def semicircle() -> list[Poly]:
    t = np.linspace(np.pi, 2 * np.pi, 48)
    return [(np.stack([np.cos(t), np.sin(t)], axis=1), 1)]


def bolt() -> list[Poly]:
    pts = [(0.1, -1), (0.7, -1), (0.25, -0.15), (0.65, -0.15), (-0.4, 1), (-0.05, 0.15), (-0.45, 0.15)]
    return [(np.array(pts, dtype=np.float64), 1)]


def cloud() -> list[Poly]:
    return [
        (_circle(0.45, -0.5, 0.1), 1),
        (_circle(0.6, 0.05, -0.2), 1),
        (_circle(0.45, 0.55, 0.1), 1),
        (_rect(-0.5, 0.1, 0.55, 0.55), 1),
    ]


def flower(petals: int = 6) -> list[Poly]:
    petals = int(petals)
    ops: list[Poly] = []
    width = min(0.34, 2.0 / petals)
    for k in range(petals):
        ang = -90.0 + 360.0 * k / petals
        a = np.deg2rad(ang)
        ops.append((_ellipse(0.5 * np.cos(a), 0.5 * np.sin(a), 0.5, width, ang), 1))
    ops.append((_circle(0.38), 1))
    return ops


def gear(teeth: int = 8, hole: float = 0.3) -> list[Poly]:
    teeth = int(teeth)
    ops: list[Poly] = [(_circle(0.72), 1)]
    tooth = _rect(0.6, -0.17, 1.0, 0.17)
    for k in range(teeth):
        ops.append((_rotate(tooth, -360.0 * k / teeth), 1))
    ops.append((_circle(hole), 0))
    return ops


def hourglass() -> list[Poly]:
    pts = [(-0.8, -1), (0.8, -1), (0.12, 0), (0.8, 1), (-0.8, 1), (-0.12, 0)]
    return [(np.array(pts, dtype=np.float64), 1)]


def teardrop() -> list[Poly]:
    r, cy = 0.6, 0.4
    d = 1.0 + cy
    alpha = np.degrees(np.arccos(r / d))
    tangent = [(r * np.cos(np.deg2rad(-90 + s * alpha)), cy + r * np.sin(np.deg2rad(-90 + s * alpha))) for s in (-1, 1)]
    tri = np.array([(0.0, -1.0), tangent[1], tangent[0]], dtype=np.float64)
    return [(_circle(r, 0, cy), 1), (tri, 1)]


def lshape() -> list[Poly]:
    pts = [(-0.75, -1), (-0.2, -1), (-0.2, 0.45), (0.75, 0.45), (0.75, 1), (-0.75, 1)]
    return [(np.array(pts, dtype=np.float64), 1)]


def house() -> list[Poly]:
    pts = [(0, -1), (1, -0.1), (0.75, -0.1), (0.75, 1), (-0.75, 1), (-0.75, -0.1), (-1, -0.1)]
    return [(np.array(pts, dtype=np.float64), 1), (_rect(-0.2, 0.35, 0.2, 1.2), 0)]


def mushroom() -> list[Poly]:
    t = np.linspace(np.pi, 2 * np.pi, 40)
    cap = np.stack([np.cos(t), -0.05 + 0.8 * np.sin(t)], axis=1)
    cap = np.concatenate([cap, [[0.8, 0.1], [-0.8, 0.1]]])
    stem = np.array([(-0.25, 0.0), (0.25, 0.0), (0.32, 0.9), (-0.32, 0.9)], dtype=np.float64)
    return [(cap, 1), (stem, 1)]


def bone() -> list[Poly]:
    ops: list[Poly] = [(_rect(-0.7, -0.12, 0.7, 0.12), 1)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            ops.append((_circle(0.29, sx * 0.7, sy * 0.22, n=36), 1))
    return ops


def frame(inner: float = 0.55) -> list[Poly]:
    return [(_rect(-1, -1, 1, 1), 1), (_rect(-inner, -inner, inner, inner), 0)]


def pacman(mouth: float = 75.0) -> list[Poly]:
    t = np.deg2rad(np.linspace(mouth / 2, 360 - mouth / 2, 64))
    pts = np.concatenate([[[0.0, 0.0]], np.stack([np.cos(t), np.sin(t)], axis=1)])
    return [(pts, 1)]


def tree(tiers: int = 3) -> list[Poly]:
    tiers = int(tiers)
    ops: list[Poly] = []
    for k in range(tiers):
        top = -1.0 + 0.55 * k * 3 / tiers
        half = 0.5 + 0.4 * k / max(1, tiers - 1)
        bottom = top + 0.85 * 3 / tiers + 0.1
        ops.append((np.array([(0, top), (half, bottom), (-half, bottom)], dtype=np.float64), 1))
    ops.append((_rect(-0.15, 0.6, 0.15, 1.0), 1))
    return ops


@dataclass(frozen=True)
class ShapeType:
    build: Callable[..., list[Poly]]
    rotation: float  # default max |random rotation| in degrees
    flip: bool  # random mirror allowed


SHAPES: dict[str, ShapeType] = {
    "circle": ShapeType(circle, 180, False),
    "polygon": ShapeType(polygon, 180, False),
    "star": ShapeType(star, 180, False),
    "heart": ShapeType(heart, 30, False),
    "arrow": ShapeType(arrow, 180, False),
    "crescent": ShapeType(crescent, 180, True),
    "cross": ShapeType(cross, 20, False),
    "ring": ShapeType(ring, 180, False),
    "semicircle": ShapeType(semicircle, 180, False),
    "bolt": ShapeType(bolt, 25, True),
    "cloud": ShapeType(cloud, 15, True),
    "flower": ShapeType(flower, 180, False),
    "gear": ShapeType(gear, 180, False),
    "hourglass": ShapeType(hourglass, 180, False),
    "teardrop": ShapeType(teardrop, 30, False),
    "lshape": ShapeType(lshape, 20, False),
    "house": ShapeType(house, 12, False),
    "mushroom": ShapeType(mushroom, 15, False),
    "bone": ShapeType(bone, 180, False),
    "frame": ShapeType(frame, 180, False),
    "pacman": ShapeType(pacman, 180, True),
    "tree": ShapeType(tree, 10, False),
}


def unit_shape(shape_type: str, params: dict | None = None) -> list[Poly]:
    """Polygons of a shape, centred, the longer side of its filled extent spanning [-1, 1]."""
    ops = SHAPES[shape_type].build(**(params or {}))
    filled = np.concatenate([p for p, f in ops if f])
    lo, hi = filled.min(axis=0), filled.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    return [((p - centre) / half, f) for p, f in ops]


def transform(ops: list[Poly], *, size: float, rotation_deg: float = 0.0, aspect: float = 1.0,
              flip: bool = False, centre: tuple[float, float] = (0.0, 0.0)) -> list[Poly]:
    """Unit polygons -> pixel polygons: mirror, stretch (x by sqrt(aspect), y by 1/sqrt(aspect)),
    scale so the unit extent [-1, 1] becomes `size` px, rotate, translate to `centre` (x, y)."""
    sx = np.sqrt(aspect) * (-1.0 if flip else 1.0)
    sy = 1.0 / np.sqrt(aspect)
    scale = np.array([sx, sy]) * size / 2.0
    out = []
    for pts, fill in ops:
        q = _rotate(pts * scale, rotation_deg) + np.asarray(centre, dtype=np.float64)
        out.append((q, fill))
    return out
