"""COCO-style (exhaustive) evaluation through pycocotools, with the open-vocabulary split
metrics: AP50 and Recall@100 (IoU 0.5) over novel and base categories separately."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from vild.errors import VildError
from vild.evaluation._common import (
    PathLike,
    check_results,
    load_dataset_dict,
    load_results_list,
    mean_valid,
    quiet,
    results_for_iou_type,
    select_image_ids,
    to_percent,
)

if TYPE_CHECKING:
    from pycocotools.coco import COCO

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SPLIT_METRICS = ("AP50_novel", "AP50_base", "Recall@100_novel", "Recall@100_base")
IOU_TYPES = ("segm", "bbox")


def load_coco_gt(gt: PathLike | dict | COCO) -> COCO:
    """A pycocotools `COCO` from a path, a dict or an existing `COCO` (returned as is), without
    its prints. LVIS-format files work: extra keys are ignored and a missing `iscrowd` is 0."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    data = load_dataset_dict(gt)
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
    coco = COCO()
    coco.dataset = data
    with quiet():
        coco.createIndex()
    return coco


def _results_coco(coco_gt: COCO, dts: list[dict]) -> COCO:
    from pycocotools.coco import COCO

    if dts:
        with quiet():
            return coco_gt.loadRes(dts)
    # loadRes([]) crashes on anns[0]: an empty results object by hand.
    res = COCO()
    res.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with quiet():
        res.createIndex()
    return res


def default_novel_category_ids(coco_gt: COCO) -> list[int]:
    """Categories marked `"novel": true`, else those of LVIS frequency 'r' (novel = rare)."""
    cats = coco_gt.dataset["categories"]
    flagged = [c["id"] for c in cats if c.get("novel") is True]
    if flagged:
        return sorted(flagged)
    return sorted(c["id"] for c in cats if c.get("frequency") == "r")


def run_cocoeval(
    coco_gt: COCO,
    dts: list[dict],
    iou_type: str,
    *,
    image_ids: Sequence[int] | None = None,
    max_dets: int = 100,
):
    """A silent, evaluated and accumulated `COCOeval` (its `stats` summarised too)."""
    from pycocotools.cocoeval import COCOeval

    coco_dt = _results_coco(coco_gt, dts)
    with quiet():
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def evaluate_coco(
    gt: PathLike | dict | COCO,
    results: PathLike | Sequence[dict],
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    novel_category_ids: Iterable[int] | None = None,
    image_ids: Iterable[int] | None = None,
    max_dets: int = 100,
) -> dict[str, dict[str, float]]:
    """COCO evaluation: `{iou_type: {AP, AP50, AP75, APs, APm, APl, AP50_novel, AP50_base,
    Recall@100_novel, Recall@100_base}}`, floats in percent, NaN where undefined.

    AP* are pycocotools' summary numbers (top `max_dets` detections per image). The split
    metrics average COCOeval's per-category precision / recall at IoU 0.5, area 'all',
    `max_dets` detections per image, over the novel categories and over the others (base);
    categories without ground truth in the evaluated images do not count. Recall@100 is the
    Rahman et al. (65/15 split) metric when max_dets = 100.

    novel_category_ids: default the categories flagged `"novel": true` in the ground truth,
    else those of frequency 'r'; none -> the novel metrics are NaN.
    """
    iou_types = tuple(iou_types)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {t!r}")
    coco_gt = load_coco_gt(gt)
    results = load_results_list(results)
    all_cats = sorted(coco_gt.getCatIds())
    check_results(results, coco_gt.getImgIds(), all_cats, iou_types)
    img_ids = select_image_ids(coco_gt.getImgIds(), image_ids)

    if novel_category_ids is None:
        novel = set(default_novel_category_ids(coco_gt))
    else:
        novel = {int(c) for c in novel_category_ids}
        unknown = sorted(novel - set(all_cats))
        if unknown:
            raise VildError(f"novel category ids not in the ground truth: {unknown[:5]}")
    novel_idx = [k for k, c in enumerate(all_cats) if c in novel]
    base_idx = [k for k, c in enumerate(all_cats) if c not in novel]

    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        dts = results_for_iou_type(results, iou_type, set(img_ids))
        ev = run_cocoeval(coco_gt, dts, iou_type, image_ids=img_ids, max_dets=max_dets)
        metrics = {k: to_percent(v) for k, v in zip(COCO_METRICS, ev.stats[:6])}
        p = ev.params
        t50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
        a_all = p.areaRngLbl.index("all")
        m = list(p.maxDets).index(max_dets)
        precision = ev.eval["precision"][t50, :, :, a_all, m]  # [R, K]
        recall = ev.eval["recall"][t50, :, a_all, m]  # [K]
        for name, idx in (("novel", novel_idx), ("base", base_idx)):
            if idx:
                metrics[f"AP50_{name}"] = mean_valid(precision[:, idx])
                metrics[f"Recall@100_{name}"] = mean_valid(recall[idx])
            else:
                metrics[f"AP50_{name}"] = math.nan
                metrics[f"Recall@100_{name}"] = math.nan
        out[iou_type] = metrics
    return out


__all__ = ["COCO_METRICS", "SPLIT_METRICS", "evaluate_coco", "load_coco_gt", "run_cocoeval"]
