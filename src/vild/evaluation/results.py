"""`Detections` -> COCO/LVIS results format (the list-of-dicts json both evaluators read)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

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
    `{"image_id", "category_id", "bbox": [x, y, w, h], "score"[, "segmentation"]}`, by
    `vild.model.convert.detections_to_coco` (the one converter and RLE encoder);
    `category_ids[label]` is the dataset category id of vocabulary entry `label`."""
    from vild.model.convert import detections_to_coco

    return detections_to_coco(detections, image_id, category_ids, with_masks=with_masks,
                              mask_threshold=mask_threshold)


def save_results(path: str | os.PathLike, results: Sequence[dict]) -> None:
    """Write a results json atomically (compact: it can be large)."""
    atomic_write_text(path, json.dumps(list(results), separators=(",", ":")) + "\n")


def load_results(path: str | os.PathLike) -> list[dict]:
    data = load_json(path)
    if not isinstance(data, list):
        raise VildError(f"{path}: results must be a JSON list of detections")
    return data
