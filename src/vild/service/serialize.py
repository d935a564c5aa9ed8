"""`Detections` -> the service's JSON: one object per detection, masks as COCO RLE."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def encode_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict]:
    """[N, H, W] mask probabilities (or bools) -> COCO compressed RLE dicts
    `{"size": [H, W], "counts": str}`: `vild.model.convert.masks_to_rle`, the one encoder."""
    from vild.model.convert import masks_to_rle

    return masks_to_rle(masks, threshold)  # one mask at a time: bounded memory on big images


def encode_masks_shared(masks: torch.Tensor, boxes: torch.Tensor, threshold: float = 0.5,
                        order: list[int] | None = None) -> list[dict]:
    """`encode_masks` of masks[order] (all, in order, by default), encoding each distinct mask
    once: ViLD's masks and boxes are class-agnostic, so the detections of one region under
    several labels share a box and a mask (checked, not assumed). Never copies the masks."""
    order = list(range(masks.shape[0])) if order is None else list(order)
    first: dict[tuple, int] = {}
    encoded: dict[int, dict] = {}
    out = []
    for i in order:
        j = first.setdefault(tuple(boxes[i].tolist()), i)
        if j != i and torch.equal(masks[i], masks[j]):
            i = j
        if i not in encoded:
            encoded[i] = encode_masks(masks[i:i + 1], threshold)[0]
        out.append(encoded[i])
    return out


def detections_json(
    detections: Any,
    vocabulary: Sequence[str] | None = None,
    *,
    with_masks: bool = True,
) -> dict:
    """A `Detections` -> `{"image_size": [H, W], "detections": [{"box", "score", "label",
    "label_id", "mask"?}, ...]}`, best score first. Label names come from the detections'
    `class_names` when present, else from `vocabulary`."""
    names = getattr(detections, "class_names", None) or vocabulary
    boxes = detections.boxes.detach().float().cpu()
    scores = detections.scores.detach().float().cpu()
    labels = detections.labels.detach().cpu().long()
    order = torch.argsort(scores, descending=True, stable=True)
    masks = getattr(detections, "masks", None)
    rles = encode_masks_shared(masks, boxes, order=order.tolist()) if (with_masks and masks is not None) else None
    h, w = detections.image_size
    out = []
    for rank, i in enumerate(order.tolist()):
        label_id = int(labels[i])
        item = {
            "box": [round(float(v), 2) for v in boxes[i].tolist()],
            "score": round(float(scores[i]), 5),
            "label": str(names[label_id]) if names is not None and 0 <= label_id < len(names) else str(label_id),
            "label_id": label_id,
        }
        if rles is not None:
            item["mask"] = rles[rank]
        out.append(item)
    return {"image_size": [int(h), int(w)], "detections": out}
