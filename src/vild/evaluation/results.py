"""`Detections` -> COCO/LVIS results format (the list-of-dicts json both evaluators read)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vild.errors import VildError
from vild.io import atomic_write_text, load_json

if TYPE_CHECKING:  # torch stays unimported until detections are converted
    from vild.model.outputs import Detections


def detections_to_coco_results(
    detections: Detections,
    image_id: int,
    category_ids: Sequence[int],
    *,
    with_masks: bool = True,
    mask_threshold: float = 0.5,
) -> list[dict]:
    """One result dict per detection:
    `{"image_id", "category_id", "bbox": [x, y, w, h], "score"[, "segmentation"]}`.

    `category_ids[label]` is the dataset category id of vocabulary entry `label`. The
    segmentation (present when `with_masks` and the detections carry masks) is the compressed
    RLE of `masks > mask_threshold`, with `counts` as str so it serialises to JSON.
    """
    import torch
    from pycocotools import mask as mask_utils

    n = len(detections)
    if n == 0:
        return []
    boxes = detections.boxes.detach().to("cpu", torch.float64).numpy()
    scores = detections.scores.detach().to("cpu", torch.float64).numpy()
    labels = detections.labels.detach().to("cpu", torch.int64).numpy()
    if labels.min() < 0 or labels.max() >= len(category_ids):
        raise ValueError(
            f"labels must lie in 0..{len(category_ids) - 1} (one per category id), "
            f"got {labels.min()}..{labels.max()}"
        )
    cat_map = np.asarray([int(c) for c in category_ids], dtype=np.int64)
    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]

    rles = None
    if with_masks and detections.masks is not None:
        masks = detections.masks.detach().cpu()
        if tuple(masks.shape[1:]) != tuple(detections.image_size):
            raise ValueError(
                f"masks are {tuple(masks.shape[1:])}, expected image size {detections.image_size}"
            )
        binary = (masks > mask_threshold).numpy().astype(np.uint8)  # [N, H, W]
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")

    out = []
    for i in range(n):
        r = {
            "image_id": int(image_id),
            "category_id": int(cat_map[labels[i]]),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores[i]),
        }
        if rles is not None:
            r["segmentation"] = {"size": [int(s) for s in rles[i]["size"]], "counts": rles[i]["counts"]}
        out.append(r)
    return out


def save_results(path: str | os.PathLike, results: Sequence[dict]) -> None:
    """Write a results json atomically (compact: it can be large)."""
    atomic_write_text(path, json.dumps(list(results), separators=(",", ":")) + "\n")


def load_results(path: str | os.PathLike) -> list[dict]:
    data = load_json(path)
    if not isinstance(data, list):
        raise VildError(f"{path}: results must be a JSON list of detections")
    return data
