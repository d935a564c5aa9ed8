"""Proposals in, for `embed_regions`: what a proposer returns, clipped, filtered and ranked.

Split from `vild.regions.embed`; `select_proposals` is public (re-exported by `vild.regions`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from vild.errors import VildError

__all__ = ["Proposer", "select_proposals"]

Proposer = Callable[[list[torch.Tensor]], Sequence[Any]]


def select_proposals(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int], *,
                     num_proposals: int, min_box_size: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip boxes [P, 4] xyxy to the image (h, w), drop non-finite and boxes with a side below
    `min_box_size` px, keep the top `num_proposals` by score (stable) -> (boxes, scores) float32."""
    boxes = boxes.detach().to("cpu", torch.float32).reshape(-1, 4)
    scores = scores.detach().to("cpu", torch.float32).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise VildError(f"proposer returned {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    h, w = image_size
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = (
        torch.isfinite(boxes).all(1) & torch.isfinite(scores)
        & ((boxes[:, 2] - boxes[:, 0]) >= min_box_size)
        & ((boxes[:, 3] - boxes[:, 1]) >= min_box_size)
    )
    boxes, scores = boxes[keep], scores[keep]
    order = torch.sort(scores, descending=True, stable=True).indices[:num_proposals]
    return boxes[order].contiguous(), scores[order].contiguous()


def _unpack_proposal(p: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(p, dict):
        return p["boxes"], p["scores"]
    if hasattr(p, "boxes") and hasattr(p, "scores"):
        return p.boxes, p.scores
    boxes, scores = p
    return boxes, scores
