"""Class-agnostic average recall of proposals (RPN) on a subset of categories, e.g. the novel
ones: AR@100/300/1000, COCO-style (recall averaged over IoU 0.50:0.05:0.95)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vild.errors import VildError
from vild.evaluation._common import PathLike, mean_valid, quiet, select_image_ids
from vild.evaluation.coco_eval import load_coco_gt

if TYPE_CHECKING:
    from pycocotools.coco import COCO


def _as_numpy(x: Any, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 + len(shape_tail) or a.shape[1:] != shape_tail:
        raise ValueError(f"{what} must be [P{''.join(f', {s}' for s in shape_tail)}], got {a.shape}")
    return a


def proposal_recall(
    gt: PathLike | dict | COCO,
    proposals: Mapping[int, tuple[Any, Any]],
    *,
    category_ids: Iterable[int] | None = None,
    limits: Sequence[int] = (100, 300, 1000),
    image_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """`{"AR@100": ..., "AR@300": ..., "AR@1000": ...}` in percent (NaN when the evaluated
    images hold no object of the categories).

    proposals: image id -> (boxes [P, 4] xyxy px, scores [P]) (tensors or arrays); the top
    `limit` by score of each image count for AR@limit.
    category_ids: ground-truth objects of these categories only (default all); proposals are
    class-agnostic.
    image_ids: images to evaluate (default: the keys of `proposals`); an evaluated image
    without proposals contributes misses.

    Runs pycocotools COCOeval with useCats=0, maxDets=limits, area 'all'. Images with no
    object of the subset are skipped: they cannot change recall.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    limits = sorted({int(x) for x in limits})
    if not limits or limits[0] <= 0:
        raise ValueError(f"limits must be positive, got {limits}")
    coco_gt = load_coco_gt(gt)
    all_cats = sorted(coco_gt.getCatIds())
    if not all_cats:
        raise VildError("ground truth has no categories")
    unknown_images = sorted(set(int(i) for i in proposals) - set(coco_gt.getImgIds()))
    if unknown_images:
        raise VildError(f"proposal image ids not in the ground truth: {unknown_images[:5]}")
    img_ids = select_image_ids(coco_gt.getImgIds(), proposals.keys() if image_ids is None else image_ids)
    if category_ids is None:
        cats = set(all_cats)
    else:
        cats = {int(c) for c in category_ids}
        unknown = sorted(cats - set(all_cats))
        if unknown:
            raise VildError(f"category ids not in the ground truth: {unknown[:5]}")

    wanted = set(img_ids)
    gt_anns = [
        a for a in coco_gt.dataset["annotations"]
        if a["category_id"] in cats and a["image_id"] in wanted
    ]
    eval_imgs = sorted({a["image_id"] for a in gt_anns})
    names = [f"AR@{k}" for k in limits]
    if not eval_imgs:
        return {n: math.nan for n in names}
    sub = COCO()
    sub.dataset = {
        "images": [coco_gt.imgs[i] for i in eval_imgs],
        "categories": coco_gt.dataset["categories"],
        "annotations": gt_anns,
    }
    with quiet():
        sub.createIndex()

    dts = []
    any_cat = all_cats[0]  # useCats=0 ignores it, but the index needs one that exists
    keep = limits[-1]
    for img_id in eval_imgs:
        if img_id not in proposals:
            continue
        boxes, scores = proposals[img_id]
        boxes = _as_numpy(boxes, (4,), "proposal boxes")
        scores = _as_numpy(scores, (), "proposal scores")
        if len(scores) != len(boxes):
            raise ValueError(f"image {img_id}: {len(boxes)} boxes but {len(scores)} scores")
        order = np.argsort(-scores, kind="stable")[:keep]
        for b, s in zip(boxes[order], scores[order]):
            dts.append({
                "image_id": int(img_id),
                "category_id": any_cat,
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                "score": float(s),
            })

    if dts:
        with quiet():
            coco_dt = sub.loadRes(dts)
    else:
        coco_dt = COCO()
        coco_dt.dataset = {"images": sub.dataset["images"], "categories": sub.dataset["categories"],
                           "annotations": []}
        with quiet():
            coco_dt.createIndex()

    with quiet():
        ev = COCOeval(sub, coco_dt, "bbox")
        p = ev.params
        p.imgIds = eval_imgs
        p.useCats = 0
        p.maxDets = limits
        p.areaRng = [[0.0, 1e10]]
        p.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    recall = ev.eval["recall"]  # [T, 1, 1, M]
    return {n: mean_valid(recall[:, 0, 0, m]) for m, n in enumerate(names)}


__all__ = ["proposal_recall"]
