"""Scoring methods over a detector's regions: the model's own heads, or the teacher on crops.

"native": the model's mode (ViLD-text, ViLD-image, ViLD, ViLD-ensemble).
"clip": CLIP on cropped regions: the teacher embeds the 1x + 1.5x crops of the top
        `num_crop_regions` proposals (by RPN objectness) and classifies them. Slow.
"text+clip": ViLD-text's probabilities ensembled with CLIP's on the same regions, with the
        ViLD-ensemble weighting (base: text^lambda * clip^(1-lambda), novel the reverse). Slow.
"""

from __future__ import annotations

import torch

from vild.model.heads import ensemble_probabilities, text_logits
from vild.model.outputs import Detections

METHODS = ("native", "clip", "text+clip")
SLOW_METHODS = ("clip", "text+clip")


def teacher_logit_scale(teacher) -> float:
    scale = getattr(teacher.model, "logit_scale", None)
    return float(scale.exp().item()) if isinstance(scale, torch.Tensor) else 100.0


@torch.no_grad()
def detect_batch(
    model,
    images: list[torch.Tensor],
    text_embeddings: torch.Tensor,
    *,
    base_mask: torch.Tensor | None = None,
    method: str = "native",
    teacher=None,
    num_crop_regions: int = 300,
) -> list[Detections]:
    """images (list of [3, H, W] in 0..1) -> one `Detections` per image, by `method`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "native":
        return model(images, text_embeddings, base_mask=base_mask).detections
    if teacher is None:
        raise ValueError(f"method {method!r} needs the teacher")
    text_embeddings = text_embeddings.float()
    if base_mask is None:
        base_mask = torch.zeros(text_embeddings.shape[0], dtype=torch.bool)
    batch = model.regions(images)
    scale = teacher_logit_scale(teacher)
    probs = []
    for i, (image, regions) in enumerate(zip(images, batch.regions)):
        keep = regions.objectness.argsort(descending=True)[:num_crop_regions]
        regions = regions.select(keep)
        batch.regions[i] = regions
        crops = teacher.encode_regions(image, batch.boxes_in_original(i)).to(text_embeddings.device)
        p_clip = torch.softmax(scale * crops.float() @ text_embeddings.T, dim=-1)
        if method == "clip":
            probs.append(p_clip)
            continue
        cfg = model.config
        logits = text_logits(regions.embeddings, text_embeddings, model.roi_heads.background, cfg.temperature)
        p_text = torch.softmax(logits, dim=-1)[:, 1:]
        probs.append(ensemble_probabilities(p_text, p_clip, base_mask, cfg.ensemble_lambda))
    return model.detect_from_probabilities(batch, probs)
