"""The one prediction path: images -> `Detections` for any scoring method, precision and
batch. `vild.inference.Detector` (so `vild detect` and `vild serve`) and
`vild.evaluation.evaluate_detector` (`vild eval`) all call `predict`, so eval measures what
users run (tests/evaluation/test_eval_matches_detect.py).

    dets = predict(model, images, text_embeddings, method="vild-ensemble", base_mask=base,
                   threshold=0.0, max_detections=300, precision="bf16")
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from vild.model.methods import (
    CROP_METHODS,
    resolve_method,
    teacher_logit_scale,
    vocabulary_probabilities,
)
from vild.model.outputs import Detections

#: Each side of the network's resized input is at least this many pixels: thinner images are
#: padded (bottom / right, with the normalisation mean) before detection, then cropped back.
MIN_INPUT_SIDE = 32
PRECISIONS = ("fp32", "bf16")


def precision_context(device: torch.device | str, precision: str):
    """Autocast for "bf16" (weights stay fp32; matmuls and convolutions run in bfloat16);
    nothing for "fp32". Raises ValueError for any other name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def pad_thin_image(image: torch.Tensor, config) -> tuple[torch.Tensor, tuple[int, int]]:
    """[3, H, W] float -> (the image padded bottom/right with the normalisation mean so that
    no side of the network's resized input falls below MIN_INPUT_SIDE pixels, (H, W))."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    short, long = min(h, w), max(h, w)
    scale = min(config.min_size / short, config.max_size / long)
    need = min(MIN_INPUT_SIDE, config.min_size)
    if short * scale >= need:
        return image, (h, w)
    target = min(long, int(-(-need * long // config.max_size)) + 1)
    pad_h, pad_w = (target - h, 0) if h < w else (0, target - w)
    mean = torch.tensor(config.image_mean, device=image.device, dtype=image.dtype).view(3, 1, 1)
    padded = mean.expand(3, h + pad_h, w + pad_w).clone()
    padded[:, :h, :w] = image
    return padded, (h, w)


@dataclass
class EmbeddedBatch:
    """What scoring needs from one forward pass over a batch: the model's `RegionBatch`
    (features + regions in the resized input), the original image sizes (before thin-image
    padding), the teacher's crop embeddings per image (CLIP methods) or Nones, and the
    teacher's logit scale."""

    batch: object
    image_sizes: list[tuple[int, int]]
    crops: list[torch.Tensor | None]
    clip_scale: float


@torch.no_grad()
def embed_batch(model, images: list[torch.Tensor], *, method: str, teacher=None,
                num_crop_regions: int = 300, precision: str = "fp32") -> EmbeddedBatch:
    """One forward pass for all `images` ([3, H, W] floats in 0..1, any device): thin images
    padded, regions embedded; for the CLIP methods the top `num_crop_regions` regions by RPN
    objectness kept and their crops embedded by the teacher."""
    device = model.roi_heads.background.device
    fitted = [pad_thin_image(img.to(device, torch.float32), model.config) for img in images]
    batch = model.regions([f[0] for f in fitted], precision=precision)
    crops: list[torch.Tensor | None] = [None] * len(fitted)
    scale = 100.0
    if method in CROP_METHODS:
        if teacher is None:
            raise ValueError(f"method {method!r} classifies crops with the teacher: give a teacher")
        scale = teacher_logit_scale(teacher)
        for i, (padded, _) in enumerate(fitted):
            r = batch.regions[i]
            batch.regions[i] = r.select(r.objectness.argsort(descending=True)[:num_crop_regions])
            crops[i] = teacher.encode_regions(padded, batch.boxes_in_original(i)).to(device)
    return EmbeddedBatch(batch, [f[1] for f in fitted], crops, scale)


@torch.no_grad()
def predict(
    model,
    images: list[torch.Tensor],
    text_embeddings: torch.Tensor,
    *,
    base_mask: torch.Tensor | None = None,
    method: str | None = None,
    teacher=None,
    attribute_embeddings: torch.Tensor | None = None,
    class_names=None,
    threshold: float | None = None,
    max_detections: int | None = None,
    num_crop_regions: int = 300,
    precision: str = "fp32",
    output_device: str | torch.device | None = "cpu",
    batched: bool | None = None,
    max_mask_bytes: int | None = None,
) -> list[Detections]:
    """images (list of [3, H, W] in 0..1) -> one `Detections` per image, one forward pass.

    text_embeddings [C, D]; base_mask [C] bool (ensemble weighting; None: all novel);
    method: a name of `vild.model.methods.METHODS` (None: the model's own); attributes
    [A, D] cross every name with every attribute (label c * A + a); threshold /
    max_detections default to the config's score_thresh / detections_per_image; precision
    "fp32" | "bf16" (autocast on the network, scores and post-processing in fp32); batched:
    the post-processing branch (None: by device, see `vild.model.postprocess`);
    max_mask_bytes: the pasted masks of one image stay within this many bytes (fewer
    detections kept, with a warning; None: no bound).
    """
    if not images:
        return []
    cfg = model.config
    method = resolve_method(method, cfg.mode, with_teacher=teacher is not None)
    text_embeddings = model.check_text_embeddings(text_embeddings)
    if attribute_embeddings is not None:
        attribute_embeddings = model.check_text_embeddings(attribute_embeddings)
    embedded = embed_batch(model, images, method=method, teacher=teacher,
                           num_crop_regions=num_crop_regions, precision=precision)
    probs = [
        vocabulary_probabilities(method, cfg, model.roi_heads.background, r.embeddings,
                                 r.image_embeddings, crops, text_embeddings, base_mask,
                                 attribute_embeddings=attribute_embeddings,
                                 clip_scale=embedded.clip_scale)
        for r, crops in zip(embedded.batch.regions, embedded.crops)
    ]
    return model.detect_from_probabilities(
        embedded.batch, probs, threshold=threshold, max_detections=max_detections,
        image_sizes=embedded.image_sizes, class_names=class_names, output_device=output_device,
        precision=precision, batched=batched, max_mask_bytes=max_mask_bytes,
    )
