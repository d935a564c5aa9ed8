"""Joint image/target transforms for detection training and evaluation.

Every transform maps `(image FloatTensor [3, H, W] in 0..1, target dict) -> (image, target)` and is
pure: inputs are never mutated (a new target dict and new tensors are returned). Boxes are xyxy
pixels. Per-instance keys (`boxes`, `labels`, `masks` [N, H, W]) and distillation keys
(`distill_boxes` [P, 4], `distill_embeddings` [P, D]) move and are filtered together.

Geometric transforms record how to map boxes back to the original image:
    target["scale"]        (sy, sx): resized = original * scale
    target["crop_offset"]  (oy, ox): current = resized - offset
    target["valid_size"]   (h, w) of the image content (the rest is padding)
`boxes_to_original(boxes, target)` applies the inverse (flips are not recorded: train only).

Randomness comes from a `torch.Generator` (given to the constructor or per call) or, when none
is given, the global torch RNG (which DataLoader seeds differently in every worker; a generator
held by a transform is copied into each worker with the same state, so prefer the global RNG
with `num_workers > 0`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "INSTANCE_KEYS",
    "DISTILL_KEYS",
    "hflip",
    "resize_crop_pad",
    "filter_instances",
    "boxes_to_original",
    "Compose",
    "RandomHorizontalFlip",
    "LargeScaleJitter",
    "ResizeLongestSide",
    "EvalTransform",
    "TrainTransform",
]

Target = dict[str, Any]
Pair = tuple[torch.Tensor, Target]

#: per-instance keys: first dimension N, filtered together
INSTANCE_KEYS = ("boxes", "labels", "masks")
#: per-proposal distillation keys: first dimension P, filtered together
DISTILL_KEYS = ("distill_boxes", "distill_embeddings", "distill_scores", "distill_weights")


# ----------------------------------------------------------------------------- functional


def _flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """[N, 4] xyxy -> mirrored around the vertical axis of an image `width` wide."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def hflip(image: torch.Tensor, target: Target) -> Pair:
    """Horizontal flip of image [3, H, W], boxes, masks and distill boxes."""
    width = int(image.shape[-1])
    out = dict(target)
    if "boxes" in target:
        out["boxes"] = _flip_boxes(target["boxes"], width)
    if "masks" in target:
        out["masks"] = target["masks"].flip(-1)
    if "distill_boxes" in target:
        out["distill_boxes"] = _flip_boxes(target["distill_boxes"], width)
    return image.flip(-1), out


def _nearest_indices(start: int, length: int, src: int, dst: int) -> torch.Tensor:
    """Source indices of `length` destination pixels from `start` when `src` pixels -> `dst`
    (half-pixel-centred nearest, as `F.interpolate(mode="nearest-exact")`)."""
    pos = (torch.arange(start, start + length, dtype=torch.float64) + 0.5) * (src / dst)
    return pos.floor().long().clamp_(0, src - 1)


def _transform_boxes(boxes: torch.Tensor, sx: float, sy: float, ox: float, oy: float,
                     clip_hw: tuple[int, int]) -> torch.Tensor:
    scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)
    shift = torch.tensor([ox, oy, ox, oy], dtype=boxes.dtype)
    out = boxes * scale - shift
    out[:, 0::2] = out[:, 0::2].clamp(0, clip_hw[1])
    out[:, 1::2] = out[:, 1::2].clamp(0, clip_hw[0])
    return out


def resize_crop_pad(
    image: torch.Tensor,
    target: Target,
    *,
    resized_size: tuple[int, int],
    crop_offset: tuple[int, int] = (0, 0),
    output_size: tuple[int, int] | None = None,
    pad_value: float = 0.0,
) -> Pair:
    """Resize to `resized_size` (h, w), crop from `crop_offset` (oy, ox), pad bottom/right
    with `pad_value` to `output_size` (h, w) (None = the cropped size, no padding).

    Boxes are scaled, shifted and clipped to the visible content; masks are resized with
    nearest-neighbour, cropped and zero-padded. Nothing is filtered here (`filter_instances`).
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    rh, rw = int(resized_size[0]), int(resized_size[1])
    oy, ox = int(crop_offset[0]), int(crop_offset[1])
    if rh < 1 or rw < 1:
        raise ValueError(f"resized size must be positive, got {resized_size}")
    if not (0 <= oy < rh and 0 <= ox < rw):
        raise ValueError(f"crop offset {crop_offset} outside resized image {resized_size}")
    out_h, out_w = (rh - oy, rw - ox) if output_size is None else map(int, output_size)
    ch, cw = min(rh - oy, out_h), min(rw - ox, out_w)
    sy, sx = rh / h, rw / w

    if (rh, rw) != (h, w):
        resized = F.interpolate(
            image[None].float(), size=(rh, rw), mode="bilinear", align_corners=False,
            antialias=(rh < h or rw < w),
        )[0].clamp_(0.0, 1.0)
    else:
        resized = image
    content = resized[:, oy:oy + ch, ox:ox + cw]
    if (ch, cw) != (out_h, out_w):
        new_image = image.new_full((image.shape[0], out_h, out_w), float(pad_value))
        new_image[:, :ch, :cw] = content
    else:
        new_image = content.clone() if resized is image else content.contiguous()

    out = dict(target)
    if "boxes" in target:
        out["boxes"] = _transform_boxes(target["boxes"], sx, sy, ox, oy, (ch, cw))
    if "distill_boxes" in target:
        out["distill_boxes"] = _transform_boxes(target["distill_boxes"], sx, sy, ox, oy, (ch, cw))
    if "masks" in target:
        masks = target["masks"]
        rows = _nearest_indices(oy, ch, h, rh)
        cols = _nearest_indices(ox, cw, w, rw)
        cropped = masks.index_select(1, rows).index_select(2, cols)
        if (ch, cw) != (out_h, out_w):
            new_masks = masks.new_zeros((masks.shape[0], out_h, out_w))
            new_masks[:, :ch, :cw] = cropped
            cropped = new_masks
        out["masks"] = cropped

    # compose with an earlier geometric transform: p * s0 - o0 -> (p * s0 - o0) * s1 - o1
    s0y, s0x = target.get("scale", (1.0, 1.0))
    o0y, o0x = target.get("crop_offset", (0.0, 0.0))
    out["scale"] = (s0y * sy, s0x * sx)
    out["crop_offset"] = (o0y * sy + oy, o0x * sx + ox)
    out["valid_size"] = (ch, cw)
    return new_image, out


def _select(value: Any, keep: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[keep]
    return [v for v, k in zip(value, keep.tolist()) if k]


def filter_instances(target: Target, *, min_size: float = 1.0) -> Target:
    """Drop degenerate instances (box side < `min_size` px, or empty mask) with their labels and
    masks, and degenerate distill boxes with their embeddings. Returns a new dict."""
    out = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
        if "masks" in target and target["masks"].shape[0] == boxes.shape[0]:
            keep = keep & (target["masks"].flatten(1) != 0).any(1)
        if not bool(keep.all()):
            for key in INSTANCE_KEYS:
                if key in target:
                    out[key] = _select(target[key], keep)
    if "distill_boxes" in target:
        boxes = target["distill_boxes"]
        keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
        if not bool(keep.all()):
            for key in DISTILL_KEYS:
                if key in target:
                    out[key] = _select(target[key], keep)
    return out


def boxes_to_original(boxes: torch.Tensor, target: Target) -> torch.Tensor:
    """Boxes [N, 4] xyxy in the transformed image -> xyxy in the original image (clipped to
    `target["orig_size"]` when present). Inverse of the recorded resize/crop (not of flips)."""
    sy, sx = target.get("scale", (1.0, 1.0))
    oy, ox = target.get("crop_offset", (0.0, 0.0))
    shift = torch.tensor([ox, oy, ox, oy], dtype=boxes.dtype, device=boxes.device)
    scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    out = (boxes + shift) / scale
    if "orig_size" in target:
        h, w = target["orig_size"]
        out[:, 0::2] = out[:, 0::2].clamp(0, w)
        out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


# ----------------------------------------------------------------------------- random helpers


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _randint(high_inclusive: int, generator: torch.Generator | None) -> int:
    if high_inclusive <= 0:
        return 0
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator))


# ----------------------------------------------------------------------------- transform classes


class Compose:
    """Apply transforms in order; a `generator` passed to the call is handed to each one."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target, *,
                 generator: torch.Generator | None = None) -> Pair:
        for t in self.transforms:
            if generator is not None and isinstance(t, (RandomHorizontalFlip, LargeScaleJitter,
                                                        TrainTransform, Compose)):
                image, target = t(image, target, generator=generator)
            else:
                image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Flip with probability `p`."""

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        self.p = float(p)
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target, *,
                 generator: torch.Generator | None = None) -> Pair:
        g = generator if generator is not None else self.generator
        if self.p > 0 and _uniform(g) < self.p:
            return hflip(image, target)
        return image, dict(target)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class LargeScaleJitter:
    """Large-scale jitter (Ghiasi et al. 2021; ViLD's recipe, 0.1-2.0 at 1024 there).

    A random factor s in `scale_range`; the image is resized (aspect kept) to fit in
    s*output_size x s*output_size, randomly cropped if larger than output_size, then padded
    bottom/right to output_size x output_size. Boxes are clipped; instances and distill boxes
    that become degenerate (side < `min_box_size` px, or an empty visible mask) are dropped.
    """

    def __init__(
        self,
        output_size: int,
        scale_range: tuple[float, float] = (0.5, 1.5),
        *,
        pad_value: float = 0.0,
        min_box_size: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not (0 < lo <= hi):
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if int(output_size) < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        self.output_size = int(output_size)
        self.scale_range = (lo, hi)
        self.pad_value = float(pad_value)
        self.min_box_size = float(min_box_size)
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target, *,
                 generator: torch.Generator | None = None) -> Pair:
        g = generator if generator is not None else self.generator
        h, w = int(image.shape[-2]), int(image.shape[-1])
        lo, hi = self.scale_range
        s = lo + (hi - lo) * _uniform(g)
        size = self.output_size
        factor = min(s * size / h, s * size / w)
        rh, rw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
        oy = _randint(rh - size, g)
        ox = _randint(rw - size, g)
        image, target = resize_crop_pad(
            image, target, resized_size=(rh, rw), crop_offset=(oy, ox),
            output_size=(size, size), pad_value=self.pad_value,
        )
        return image, filter_instances(target, min_size=self.min_box_size)

    def __repr__(self) -> str:
        return f"LargeScaleJitter(output_size={self.output_size}, scale_range={self.scale_range})"


class ResizeLongestSide:
    """Deterministic evaluation resize: the longer side becomes `output_size` (aspect kept, no
    crop, no padding). `target["scale"]` records the factor; see `boxes_to_original`.
    Nothing is filtered."""

    def __init__(self, output_size: int) -> None:
        if int(output_size) < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        self.output_size = int(output_size)

    def __call__(self, image: torch.Tensor, target: Target) -> Pair:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        factor = self.output_size / max(h, w)
        rh, rw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
        return resize_crop_pad(image, target, resized_size=(rh, rw))

    def __repr__(self) -> str:
        return f"ResizeLongestSide(output_size={self.output_size})"


#: the evaluation transform
EvalTransform = ResizeLongestSide


class TrainTransform:
    """Training augmentation: random horizontal flip (`hflip_prob`), then large-scale jitter to
    `output_size` x `output_size` with a factor in `scale_range`."""

    def __init__(
        self,
        output_size: int,
        scale_range: tuple[float, float] = (0.5, 1.5),
        hflip_prob: float = 0.5,
        *,
        pad_value: float = 0.0,
        min_box_size: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.generator = generator
        self.flip = RandomHorizontalFlip(hflip_prob)
        self.jitter = LargeScaleJitter(
            output_size, scale_range, pad_value=pad_value, min_box_size=min_box_size,
        )

    @property
    def output_size(self) -> int:
        return self.jitter.output_size

    def __call__(self, image: torch.Tensor, target: Target, *,
                 generator: torch.Generator | None = None) -> Pair:
        g = generator if generator is not None else self.generator
        image, target = self.flip(image, target, generator=g)
        return self.jitter(image, target, generator=g)

    def __repr__(self) -> str:
        return (f"TrainTransform(output_size={self.output_size}, "
                f"scale_range={self.jitter.scale_range}, hflip_prob={self.flip.p})")
