"""Region crops for the teacher: 1x and 1.5x boxes, cut and resized in one `roi_align` call.

Boxes are xyxy in pixels of the image they refer to, with pixel i covering [i, i + 1)
(the detection convention; `roi_align(aligned=True)` samples exactly that).

Crops that extend past the image border are filled with a constant colour: the teacher
fills them with its own normalisation mean, i.e. exactly zero at the image tower's input (the
"neutral" colour, the same as CLIP's letterbox padding). A 1.5x box is never clipped or
shifted to stay inside the image: its centre and size are always exactly those of the 1x
box scaled by 1.5, so the object stays centred and at the same relative scale in both crops.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import roi_align

# A crop box is at least this many pixels wide and high (degenerate boxes grow around their
# centre), so zero-size proposals give a tiny, well-defined crop instead of NaNs.
MIN_CROP_SIZE = 1.0


def _check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    boxes = torch.as_tensor(boxes)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, 4] xyxy, got shape {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        boxes = boxes.float()
    if boxes.numel() and not torch.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite coordinates")
    return boxes


def expand_boxes(boxes: torch.Tensor, scale: float = 1.5, *, min_size: float = 0.0) -> torch.Tensor:
    """[N, 4] xyxy -> [N, 4] xyxy with the same centres and `scale` x the width and height.

    Pure: returns a new tensor, never modifies `boxes`. Boxes with x2 < x1 or y2 < y1 are
    treated as zero-size at their centre. `min_size` (px) is a floor on the output width and
    height (applied after scaling). No clipping to any image: see the module docstring.
    """
    boxes = _check_boxes(boxes)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * scale
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=0) * scale
    if min_size > 0:
        w = w.clamp(min=min_size)
        h = h.clamp(min=min_size)
    return torch.stack([cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5], dim=1)


def region_boxes(boxes: torch.Tensor, scales: Sequence[float] = (1.0, 1.5)) -> torch.Tensor:
    """[N, 4] -> [len(scales), N, 4]: the crop box of every box at every scale (min 1 px)."""
    boxes = _check_boxes(boxes)
    return torch.stack([expand_boxes(boxes, s, min_size=MIN_CROP_SIZE) for s in scales])


def crop_and_resize(
    images: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    size: int | tuple[int, int],
    *,
    fill: float | Sequence[float] | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Cut boxes out of images and resize each to `size`, in one batched `roi_align`.

    images: [3, H, W] or [B, 3, H, W] float; boxes: [N, 4] xyxy px (for one image) or a list
    of B such tensors; returns [sum N, 3, size, size] in the images' dtype.
    Area outside the image is `fill` (a scalar or one value per channel, in the images' units).
    Downscaling averages ceil(box / size) samples per output pixel (antialiased); upscaling
    is bilinear.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"images must be [3, H, W] or [B, 3, H, W], got {tuple(images.shape)}")
    if isinstance(boxes, torch.Tensor):
        if images.shape[0] != 1:
            raise ValueError("with a batch of images, pass one [N, 4] box tensor per image (a list)")
        boxes = [boxes]
    if len(boxes) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(boxes)} box tensors")
    boxes = [_check_boxes(b).to(images.device, images.dtype) for b in boxes]
    out_size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    total = sum(int(b.shape[0]) for b in boxes)
    if total == 0:
        return images.new_zeros((0, images.shape[1], *out_size))
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(-1)
    if fill_t.numel() not in (1, images.shape[1]):
        raise ValueError(f"fill must be a scalar or {images.shape[1]} values")
    fill_t = fill_t.view(1, -1, 1, 1)
    shifted = images - fill_t if bool((fill_t != 0).any()) else images
    # roi_align reads zeros beyond the border: shift so that zero is the fill colour.
    crops = roi_align(shifted, boxes, output_size=out_size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True)
    return crops + fill_t if shifted is not images else crops
