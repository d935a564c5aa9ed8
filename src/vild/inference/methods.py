"""Scoring methods over a detector's regions: the model's own heads, or the teacher on crops.

"native": the model's mode (ViLD-text, ViLD-image, ViLD, ViLD-ensemble).
"clip": CLIP on cropped regions: the teacher embeds the 1x + 1.5x crops of the top
        `num_crop_regions` proposals (by RPN objectness) and classifies them. Slow.
"text+clip": ViLD-text's probabilities ensembled with CLIP's on the same regions, with the
        ViLD-ensemble weighting (base: text^lambda * clip^(1-lambda), novel the reverse). Slow.
"""

from __future__ import annotations

import torch

from vild.model.heads import ensemble_probabilities, image_probabilities, text_logits
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


# ---------------------------------------------------------------- user-facing method names
#: Every scoring method by its paper name, in the order of the paper's table.
USER_METHODS = ("vild-text", "vild-image", "vild", "vild-ensemble", "clip", "vild-text+clip")
#: Methods that run the teacher's image tower on two crops of every region: slow.
CROP_METHODS = ("clip", "vild-text+clip")
DESCRIPTIONS = {
    "vild-text": "text head alone: cosine to text embeddings, softmax with the learned background",
    "vild-image": "distillation head alone: softmax over the vocabulary (no background)",
    "vild": "one head trained with both losses (ViLD)",
    "vild-ensemble": "text head and distillation head, geometric weighting (lambda on base)",
    "clip": "the teacher on 1x + 1.5x crops of every region (slow: two teacher passes per region)",
    "vild-text+clip": "text head ensembled with CLIP on crops (slow: two teacher passes per region)",
}
_NATIVE = {"text": "vild-text", "image": "vild-image", "vild": "vild", "ensemble": "vild-ensemble"}


def native_method(mode: str) -> str:
    """The method a model of `mode` ("text", "image", "vild", "ensemble") was trained for."""
    return _NATIVE[mode]


def methods_for_mode(mode: str, *, with_teacher: bool = True) -> tuple[str, ...]:
    """The methods a model of `mode` supports: its own heads, and with the teacher CLIP on
    crops (+ the ensemble of ViLD-text with it where the model has a text-only head)."""
    own = {
        "text": {"vild-text"},
        "image": {"vild-image"},
        "vild": {"vild"},
        "ensemble": {"vild-text", "vild-image", "vild-ensemble"},
    }[mode]
    if with_teacher:
        own.add("clip")
        if mode in ("text", "ensemble"):
            own.add("vild-text+clip")
    return tuple(m for m in USER_METHODS if m in own)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


def method_probabilities(
    method: str,
    config,
    background: torch.Tensor,
    embeddings: torch.Tensor,
    image_embeddings: torch.Tensor | None,
    crop_embeddings: torch.Tensor | None,
    text_embeddings: torch.Tensor,
    base_mask: torch.Tensor,
    *,
    clip_scale: float = 100.0,
    with_background: bool = True,
) -> torch.Tensor:
    """[P, C] probabilities of `method` for P regions against C text embeddings.

    embeddings [P, D]: the first (text) head's region embeddings; image_embeddings [P, D]:
    the ensemble's distillation head (None otherwise); crop_embeddings [P, D]: the teacher's
    1x + 1.5x crop embeddings (CLIP methods). base_mask [C] bool: categories labelled in
    training (ensemble weighting). `with_background=False` scores a set that is not a
    vocabulary of objects (attributes): the text head's softmax then runs over the set alone
    and every entry counts as novel in the ensembles.
    """
    text_embeddings = text_embeddings.float()
    if not with_background:
        base_mask = torch.zeros_like(base_mask)

    def p_text() -> torch.Tensor:
        if with_background:
            return _softmax(text_logits(embeddings.float(), text_embeddings, background.float(),
                                        config.temperature))[:, 1:]
        return _softmax(config.temperature * embeddings.float() @ text_embeddings.T)

    def p_image(head: torch.Tensor | None) -> torch.Tensor:
        if head is None:
            raise ValueError(f"method {method!r} needs the distillation head's embeddings")
        return image_probabilities(head.float(), text_embeddings, config.image_temperature)

    def p_clip() -> torch.Tensor:
        if crop_embeddings is None:
            raise ValueError(f"method {method!r} needs the teacher's crop embeddings")
        return _softmax(clip_scale * crop_embeddings.float() @ text_embeddings.T)

    lam = config.ensemble_lambda
    if method in ("vild-text", "vild"):
        return p_text()
    if method == "vild-image":
        return p_image(image_embeddings if config.mode == "ensemble" else embeddings)
    if method == "vild-ensemble":
        return ensemble_probabilities(p_text(), p_image(image_embeddings), base_mask, lam)
    if method == "clip":
        return p_clip()
    if method == "vild-text+clip":
        return ensemble_probabilities(p_text(), p_clip(), base_mask, lam)
    raise ValueError(f"method must be one of {USER_METHODS}, got {method!r}")
