"""LVIS (federated) evaluation through the `lvis` package: AP, AP50, AP75, APs/m/l, APr/c/f."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from vild.errors import VildError
from vild.evaluation._common import (
    PathLike,
    check_results,
    load_dataset_dict,
    load_results_list,
    quiet,
    results_for_iou_type,
    select_image_ids,
    to_percent,
)

if TYPE_CHECKING:
    from lvis import LVIS

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
IOU_TYPES = ("segm", "bbox")


class _NumpyCompat(types.ModuleType):
    """numpy, plus the `np.float` alias (removed in numpy 1.24) that lvis 0.5.3 still uses in
    `LVISEval.accumulate`. Installed as the `np` global of `lvis.eval` only."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str):
        if name == "float":
            return float
        return getattr(np, name)


def _import_lvis():
    """Import lvis without its side effects on the process: `lvis/__init__` calls
    `logging.basicConfig(level=WARN)` (a root handler the application did not ask for), and
    `lvis.eval` needs `np.float`."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import lvis
    import lvis.eval

    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    if not hasattr(np, "float") and not isinstance(lvis.eval.np, _NumpyCompat):
        lvis.eval.np = _NumpyCompat()
    return lvis


def load_lvis_gt(gt: PathLike | dict | LVIS) -> LVIS:
    """An `lvis.LVIS` from a path, a dict or an existing `LVIS` (returned as is), checked for
    the federated fields LVISEval needs."""
    LVIS = _import_lvis().LVIS

    if isinstance(gt, LVIS):
        return gt
    data = load_dataset_dict(gt)
    for img in data["images"]:
        lacking = [
            k for k in ("id", "height", "width", "neg_category_ids", "not_exhaustive_category_ids")
            if k not in img
        ]
        if lacking:
            raise VildError(f"LVIS ground truth image {img.get('id')} lacks {lacking}")
    for cat in data["categories"]:
        if cat.get("frequency") not in ("r", "c", "f"):
            raise VildError(
                f"LVIS ground truth category {cat.get('id')} has no frequency 'r'|'c'|'f'"
            )
    obj = LVIS.__new__(LVIS)
    obj.logger = logging.getLogger("lvis.lvis")
    obj.dataset = data
    obj._create_index()
    return obj


def _empty_results(lvis_gt: LVIS):
    """An `LVISResults` with no detections (`LVISResults([])` crashes on `results[0]`)."""
    LVISResults = _import_lvis().LVISResults

    res = LVISResults.__new__(LVISResults)
    res.logger = logging.getLogger("lvis.results")
    res.dataset = {**lvis_gt.dataset, "annotations": []}
    res._create_index()
    return res


def evaluate_lvis(
    gt: PathLike | dict | LVIS,
    results: PathLike | Sequence[dict],
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    max_dets: int = 300,
    image_ids: Iterable[int] | None = None,
) -> dict[str, dict[str, float]]:
    """LVIS v1 evaluation: `{iou_type: {AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR}}`,
    floats in percent; NaN where undefined (e.g. APr when the images hold no rare objects).

    results: COCO-format result dicts (`detections_to_coco_results`) or a path to their JSON;
    at most `max_dets` per image are kept, highest score first (the LVIS rule: 300 per image,
    not per category). Ids not in the ground truth are an error.
    image_ids: evaluate on these ground-truth images only (default all).
    """
    lvis = _import_lvis()
    LVISEval, LVISResults = lvis.LVISEval, lvis.LVISResults

    iou_types = tuple(iou_types)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {t!r}")
    with quiet():
        lvis_gt = load_lvis_gt(gt)
    results = load_results_list(results)
    check_results(results, lvis_gt.get_img_ids(), lvis_gt.get_cat_ids(), iou_types)
    img_ids = select_image_ids(lvis_gt.get_img_ids(), image_ids)

    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        dts = results_for_iou_type(results, iou_type, set(img_ids))
        with quiet():
            if dts:
                lvis_dt = LVISResults(lvis_gt, dts, max_dets=max_dets)
            else:
                lvis_dt = _empty_results(lvis_gt)
            ev = LVISEval(lvis_gt, lvis_dt, iou_type=iou_type)
            ev.params.img_ids = img_ids
            ev.params.max_dets = max_dets
            ev.run()
        metrics = {k: to_percent(ev.results[k]) for k in LVIS_METRICS}
        metrics["AR"] = to_percent(ev.results[f"AR@{max_dets}"])
        out[iou_type] = metrics
    return out


__all__ = ["LVIS_METRICS", "evaluate_lvis", "load_lvis_gt"]
