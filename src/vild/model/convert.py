"""`Detections` at the edges: a plain dict, COCO/LVIS results, `supervision.Detections`, the
transformers zero-shot-object-detection pipeline's list, and the one mask -> COCO RLE encoder
that every writer (`vild detect`, `vild eval`, the service) uses, with one threshold rule: a
pixel belongs to the mask when its probability is >= `mask_threshold` (0.5 unless told).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vild.errors import VildError

if TYPE_CHECKING:
    import torch

    from vild.model.outputs import Detections

MASK_THRESHOLD = 0.5


class ConversionError(VildError, ValueError):
    """Detections that cannot be converted (a label with no category id, masks of the wrong size)."""


def binary_masks(masks: torch.Tensor, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """[N, H, W] mask probabilities (or bools) -> [N, H, W] uint8 by the one rule: >= threshold."""
    return (masks.detach().float().cpu() >= threshold).numpy().astype(np.uint8)


def masks_to_rle(masks: torch.Tensor, threshold: float = MASK_THRESHOLD) -> list[dict]:
    """[N, H, W] mask probabilities -> N COCO compressed RLEs ``{"size": [H, W], "counts": str}``.

    One mask at a time: a binary copy of all of a big image's masks at once is GBs (the
    service's memory bound, tests/robustness), and one mask's copy is H x W bytes."""
    from pycocotools import mask as mask_utils

    out = []
    for mask in masks:
        binary = binary_masks(mask[None], threshold)[0]
        r = mask_utils.encode(np.asfortranarray(binary[:, :, None]))[0]
        out.append({"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")})
    return out


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of one `masks_to_rle` entry: -> [H, W] uint8."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts})


def detections_to_dict(det: Detections, *, mask_threshold: float = MASK_THRESHOLD) -> dict:
    """A plain JSON-able dict of one image's detections.

    ``{"image_size": [H, W], "boxes": [[x1, y1, x2, y2], ...] (pixels), "scores": [...],
    "labels": [...] (index into class_names), "label_names": [...] | None,
    "class_names": [...] | None, "masks": [RLE, ...] | None}``.
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
    with_masks: bool = True,
    mask_threshold: float = MASK_THRESHOLD,
    with_names: bool = False,
) -> list[dict]:
    """COCO/LVIS results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"
    [, "segmentation"]}`` per detection. ``category_ids[label]`` is the category id of a
    label; default ``label + 1`` (ids 1..C in vocabulary order). The segmentation (when
    `with_masks` and the detections carry masks) is `masks_to_rle`'s. ``with_names`` adds
    ``"category_name"`` (ignored by COCO tools). Raises `ConversionError` (a ValueError)."""
    import torch

    n = len(det)
    if category_ids is None:
        count = len(det.class_names) if det.class_names is not None else (
            int(det.labels.max()) + 1 if n else 0)
        category_ids = list(range(1, count + 1))
    if n == 0:
        return []
    boxes = det.boxes.detach().to("cpu", torch.float64).numpy()
    scores = det.scores.detach().to("cpu", torch.float64).numpy()
    labels = det.labels.detach().to("cpu", torch.int64).numpy()
    if labels.min() < 0 or labels.max() >= len(category_ids):
        raise ConversionError(
            f"cannot convert detections to COCO results: labels must lie in "
            f"0..{len(category_ids) - 1} (one per category id), got {labels.min()}..{labels.max()}")
    cat_map = np.asarray([int(c) for c in category_ids], dtype=np.int64)
    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    rles = None
    if with_masks and det.masks is not None:
        if tuple(det.masks.shape[1:]) != tuple(det.image_size):
            raise ConversionError(
                f"cannot convert detections to COCO results: masks are "
                f"{tuple(det.masks.shape[1:])}, expected image size {tuple(det.image_size)}")
        rles = masks_to_rle(det.masks, mask_threshold)
    names = det.label_names if with_names else None
    out = []
    for i in range(n):
        r = {
            "image_id": int(image_id),
            "category_id": int(cat_map[labels[i]]),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores[i]),
        }
        if rles is not None:
            r["segmentation"] = rles[i]
        if names is not None:
            r["category_name"] = names[i]
        out.append(r)
    return out


def detections_to_supervision(det: Detections, *, mask_threshold: float = MASK_THRESHOLD):
    """A `supervision.Detections` (xyxy, confidence, class_id, mask, data["class_name"])."""
    try:
        import supervision as sv
    except ImportError:
        raise VildError(
            "to_supervision() needs the optional 'supervision' package: pip install 'vild[supervision]'"
        ) from None
    import torch

    xyxy = det.boxes.detach().to("cpu", torch.float32).numpy().reshape(-1, 4)
    masks = binary_masks(det.masks, mask_threshold).astype(bool) if det.masks is not None else None
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


def detections_to_hf(det: Detections, *, threshold: float | None = None, top_k: int | None = None) -> list[dict]:
    """What the transformers ``zero-shot-object-detection`` pipeline returns for one image:
    ``[{"score": float, "label": str, "box": {"xmin": int, "ymin": int, "xmax": int,
    "ymax": int}}, ...]`` sorted by score, highest first (a stable sort: ties keep detection
    order). As the pipeline does, box corners are cast with ``Tensor.int()``, i.e. truncated
    toward zero, not rounded; ``threshold`` keeps scores above it and ``top_k`` the first k
    (the pipeline's own call arguments; default: every detection). Needs ``class_names``."""
    import torch

    if det.class_names is None:
        raise ConversionError(
            "to_hf() needs class names (the label strings): give Detections(class_names=...); "
            "Detector results carry them")
    # the pipeline: `score = scores[i].item()` and `xmin, ... = box.int().tolist()`
    scores = det.scores.detach().to("cpu", torch.float32).tolist()
    boxes = det.boxes.detach().to("cpu", torch.float32).int().tolist()
    out = [
        {"score": score, "label": label,
         "box": {"xmin": box[0], "ymin": box[1], "xmax": box[2], "ymax": box[3]}}
        for score, label, box in zip(scores, det.label_names or [], boxes)
        if threshold is None or score > threshold
    ]
    out.sort(key=lambda r: r["score"], reverse=True)
    return out[:top_k] if top_k else out
