"""`Detections` at the edges: a plain dict, COCO results, `supervision.Detections`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vild.errors import VildError

if TYPE_CHECKING:
    from vild.model.outputs import Detections


def masks_to_rle(masks, threshold: float = 0.5) -> list[dict]:
    """[N, H, W] mask probabilities -> N COCO compressed RLEs ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    binary = (masks.detach().to("cpu") > threshold).numpy().astype(np.uint8)
    if binary.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of one `masks_to_rle` entry: -> [H, W] uint8."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts})


def detections_to_dict(det: Detections, *, mask_threshold: float = 0.5) -> dict:
    """A plain JSON-able dict of one image's detections.

    ``{"image_size": [H, W], "boxes": [[x1, y1, x2, y2], ...] (pixels), "scores": [...],
    "labels": [...] (index into class_names), "label_names": [...] | None,
    "class_names": [...] | None, "masks": [RLE, ...] | None}``; RLE = COCO compressed RLE of
    ``mask > mask_threshold`` with ``counts`` as a str.
    """
    import torch

    return {
        "image_size": [int(det.image_size[0]), int(det.image_size[1])],
        "boxes": [[float(v) for v in row] for row in det.boxes.detach().to("cpu", torch.float64).tolist()],
        "scores": [float(s) for s in det.scores.detach().to("cpu", torch.float64).tolist()],
        "labels": [int(i) for i in det.labels.detach().cpu().tolist()],
        "label_names": det.label_names,
        "class_names": list(det.class_names) if det.class_names is not None else None,
        "masks": masks_to_rle(det.masks, mask_threshold) if det.masks is not None else None,
    }


def detections_to_coco(
    det: Detections,
    image_id: int,
    category_ids: Sequence[int] | None = None,
    *,
    mask_threshold: float = 0.5,
    with_names: bool = False,
) -> list[dict]:
    """COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score",
    "segmentation"}`` per detection. ``category_ids[label]`` is the category id of a label;
    default ``label + 1`` (ids 1..C in vocabulary order). ``with_names`` adds
    ``"category_name"`` (ignored by COCO tools)."""
    from vild.evaluation.results import detections_to_coco_results

    if category_ids is None:
        n = len(det.class_names) if det.class_names is not None else (
            int(det.labels.max()) + 1 if len(det) else 0)
        category_ids = list(range(1, n + 1))
    try:
        results = detections_to_coco_results(
            det, image_id, category_ids, with_masks=True, mask_threshold=mask_threshold
        )
    except ValueError as e:
        raise VildError(f"cannot convert detections to COCO results: {e}") from None
    if with_names and det.class_names is not None:
        for r, name in zip(results, det.label_names or []):
            r["category_name"] = name
    return results


def detections_to_supervision(det: Detections, *, mask_threshold: float = 0.5):
    """A `supervision.Detections` (xyxy, confidence, class_id, mask, data["class_name"])."""
    try:
        import supervision as sv
    except ImportError:
        raise VildError(
            "to_supervision() needs the optional 'supervision' package: pip install 'vild[supervision]'"
        ) from None
    import torch

    xyxy = det.boxes.detach().to("cpu", torch.float32).numpy().reshape(-1, 4)
    masks = None
    if det.masks is not None:
        masks = (det.masks.detach().cpu() > mask_threshold).numpy().astype(bool)
    data = {}
    if det.class_names is not None:
        data["class_name"] = np.array(det.label_names or [], dtype=str)
    return sv.Detections(
        xyxy=xyxy,
        mask=masks,
        confidence=det.scores.detach().to("cpu", torch.float32).numpy(),
        class_id=det.labels.detach().cpu().numpy().astype(int),
        data=data,
    )
