"""Shared plumbing for the evaluators: silencing the chatty third-party APIs, loading ground
truth (path, dict or API object) and checking detection results against it."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vild.errors import VildError
from vild.io import load_json

PathLike = str | os.PathLike


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence pycocotools (prints to stdout) and lvis (logs warnings, calls `Logger.warn`).

    Swaps `sys.stdout` for the duration, so it is not thread-safe with other printers.
    """
    lvis_logger = logging.getLogger("lvis")
    old_level = lvis_logger.level
    lvis_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of empty slices etc.
            yield
    finally:
        lvis_logger.setLevel(old_level)


def load_dataset_dict(gt: PathLike | dict) -> dict:
    """An LVIS/COCO-format dict from a path or a dict (annotation dicts copied: the third-party
    evaluators add keys to them in place)."""
    if isinstance(gt, dict):
        data = gt
    elif isinstance(gt, (str, os.PathLike)):
        data = load_json(Path(gt))
        if not isinstance(data, dict):
            raise VildError(f"{gt}: ground truth must be a JSON object, got {type(data).__name__}")
    else:
        raise TypeError(f"ground truth must be a path, a dict or an API object, got {type(gt)}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise VildError(f"ground truth lacks {missing}: not an LVIS/COCO-format dataset")
    return {**data, "annotations": [dict(a) for a in data["annotations"]]}


def load_results_list(results: PathLike | Sequence[dict]) -> list[dict]:
    """Results from a JSON path or a list; each dict shallow-copied (the APIs mutate them)."""
    if isinstance(results, (str, os.PathLike)):
        data = load_json(Path(results))
        if not isinstance(data, list):
            raise VildError(f"{results}: results must be a JSON list of detections")
        results = data
    out = []
    for r in results:
        if not isinstance(r, dict):
            raise VildError(f"a result must be a dict, got {type(r).__name__}")
        out.append(dict(r))
    return out


def check_results(
    results: list[dict],
    image_ids: Iterable[int],
    category_ids: Iterable[int],
    iou_types: Sequence[str],
) -> None:
    """Raise a clear `VildError` where the results could not be evaluated against this GT."""
    image_ids, category_ids = set(image_ids), set(category_ids)
    need = {"image_id", "category_id", "score", "bbox"}
    for r in results:
        lacking = need - r.keys()
        if lacking:
            raise VildError(f"a result lacks {sorted(lacking)}: {_short(r)}")
    bad_images = sorted({r["image_id"] for r in results} - image_ids)
    if bad_images:
        raise VildError(
            f"{len(bad_images)} image ids in the results are not in the ground truth "
            f"(e.g. {bad_images[:5]}): wrong split or annotation file?"
        )
    bad_cats = sorted({r["category_id"] for r in results} - category_ids)
    if bad_cats:
        raise VildError(
            f"{len(bad_cats)} category ids in the results are not in the ground truth "
            f"(e.g. {bad_cats[:5]}): is the label -> category id mapping right?"
        )
    if "segm" in iou_types and any("segmentation" not in r for r in results):
        raise VildError(
            "mask AP asked for but some results have no 'segmentation': "
            "produce masks or evaluate with iou_types=('bbox',)"
        )


def results_for_iou_type(results: list[dict], iou_type: str, image_ids: set[int]) -> list[dict]:
    """Fresh copies for one evaluation run. For mask AP the box is dropped so that the APIs take
    the mask area (not the box area) as the detection's area for the s/m/l ranges, as
    detectron2 does."""
    out = []
    for r in results:
        if r["image_id"] not in image_ids:
            continue
        r = dict(r)
        if iou_type == "segm":
            r.pop("bbox", None)
        else:
            r.pop("segmentation", None)
        r.pop("area", None)
        r.pop("id", None)
        out.append(r)
    return out


def select_image_ids(all_ids: Iterable[int], image_ids: Iterable[int] | None) -> list[int]:
    all_ids = sorted(set(all_ids))
    if image_ids is None:
        return all_ids
    chosen = sorted({int(i) for i in image_ids})
    unknown = sorted(set(chosen) - set(all_ids))
    if unknown:
        raise VildError(f"image ids not in the ground truth: {unknown[:5]}")
    return chosen


def mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1 (the APIs' marker for 'undefined'), in percent; NaN if none."""
    valid = values[values > -1]
    return float(np.mean(valid) * 100.0) if valid.size else math.nan


def to_percent(value: float) -> float:
    """An API summary value (fraction, or -1 for undefined) in percent; NaN if undefined."""
    value = float(value)
    return math.nan if value < 0 else value * 100.0


def _short(obj: Any, limit: int = 120) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
