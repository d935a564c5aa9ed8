"""A tiny LVIS-v1-format ground truth built in memory, and helpers to make results from it."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

H, W = 80, 100

# id, name, frequency (r = rare = novel)
CATEGORIES = [
    (1, "circle", "f"),
    (2, "square", "c"),
    (3, "star", "r"),
    (4, "heart", "r"),
    (5, "triangle", "f"),
    (6, "moon", "c"),  # never annotated: must not count anywhere
]
RARE = (3, 4)

# image id -> [(category id, shape, (cy, cx, ry, rx))]
OBJECTS = {
    1: [(1, "ellipse", (20, 25, 12, 15)), (2, "rect", (55, 70, 14, 18)), (3, "ellipse", (20, 75, 10, 12))],
    2: [(1, "ellipse", (40, 30, 20, 22)), (5, "rect", (30, 75, 12, 10)), (4, "ellipse", (65, 70, 9, 14))],
    3: [(2, "rect", (25, 25, 12, 12)), (3, "ellipse", (55, 30, 15, 18)),
        (1, "ellipse", (25, 75, 10, 10)), (1, "rect", (62, 78, 10, 14))],
}
NEG = {1: [4, 5], 2: [3], 3: [4, 5, 6]}
NOT_EXHAUSTIVE = {1: [], 2: [], 3: [1]}


def shape_mask(shape: str, params: tuple[int, int, int, int], dy: int = 0, dx: int = 0) -> np.ndarray:
    cy, cx, ry, rx = params
    cy, cx = cy + dy, cx + dx
    yy, xx = np.mgrid[0:H, 0:W]
    if shape == "ellipse":
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    else:
        m = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    return m.astype(np.uint8)


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def build_gt() -> dict:
    images, annotations = [], []
    image_count = {c: set() for c, _, _ in CATEGORIES}
    instance_count = {c: 0 for c, _, _ in CATEGORIES}
    for img_id, objs in OBJECTS.items():
        images.append({
            "id": img_id, "height": H, "width": W, "file_name": f"{img_id:06d}.png",
            "neg_category_ids": NEG[img_id], "not_exhaustive_category_ids": NOT_EXHAUSTIVE[img_id],
        })
        for cat, shape, params in objs:
            m = shape_mask(shape, params)
            annotations.append({
                "id": len(annotations) + 1, "image_id": img_id, "category_id": cat,
                "bbox": bbox_of(m), "area": float(m.sum()), "segmentation": encode(m),
            })
            image_count[cat].add(img_id)
            instance_count[cat] += 1
    categories = [
        {"id": c, "name": n, "synonyms": [n], "frequency": f, "def": n,
         "image_count": len(image_count[c]), "instance_count": instance_count[c]}
        for c, n, f in CATEGORIES
    ]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


def results_from_gt(gt: dict, *, categories=None, shift: int = 0, score: float = 1.0,
                    with_masks: bool = True) -> list[dict]:
    """One detection per GT object (of `categories`, default all), optionally shifted by
    `shift` pixels right and down."""
    out = []
    objs = [(img, cat, shape, params) for img, lst in OBJECTS.items() for cat, shape, params in lst]
    for i, (img, cat, shape, params) in enumerate(objs):
        if categories is not None and cat not in categories:
            continue
        m = shape_mask(shape, params, dy=shift, dx=shift)
        r = {"image_id": img, "category_id": cat, "bbox": bbox_of(m), "score": score - 0.01 * i}
        if with_masks:
            r["segmentation"] = encode(m)
        out.append(r)
    return out
