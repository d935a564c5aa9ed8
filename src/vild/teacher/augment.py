"""The teacher's image augmentation: crops jittered like detector proposals.

Random box jitter (scale, aspect, shift; boxes may reach past the image, padded with the mean
colour exactly like `Teacher.encode_regions`), horizontal flips and light brightness/contrast
changes. Hue and saturation change only through `hue_change`, and only for images whose
caption names no colour: colour words are part of the captions.
"""

from __future__ import annotations

import math

import torch

from vild.teacher.config import TeacherTrainConfig
from vild.teacher.crops import crop_and_resize


def augment(images: torch.Tensor, config: TeacherTrainConfig, generator: torch.Generator,
            *, mean: torch.Tensor, std: torch.Tensor, out_size: int,
            hue_mask: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> normalised float [B, 3, out, out] with random proposal-like jitter.

    Brightness / contrast act on all channels alike (hue and saturation kept); the crop box
    is a jittered square-ish box around the image, cut with the teacher's own crop op.
    """
    b, _, h, w = images.shape
    x = images.float().div_(255.0)
    g = generator
    if hue_mask is not None and bool(hue_mask.any()):
        x = hue_change(x, hue_mask, g)
    if config.aug_contrast > 0 or config.aug_brightness > 0:
        c = 1.0 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * config.aug_contrast
        br = 1.0 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * config.aug_brightness
        m = x.mean(dim=(1, 2, 3), keepdim=True)  # one grey level per image: hue is kept
        x = (((x - m) * c + m) * br).clamp_(0.0, 1.0)
    x = (x - mean) / std
    lo, hi = config.aug_scale
    side = torch.exp(torch.empty(b).uniform_(math.log(lo), math.log(hi), generator=g))
    aspect = torch.exp(torch.empty(b).uniform_(-config.aug_aspect, config.aug_aspect, generator=g))
    bw = side * torch.sqrt(aspect) * w
    bh = side / torch.sqrt(aspect) * h
    cx = w / 2 + torch.empty(b).uniform_(-config.aug_shift, config.aug_shift, generator=g) * w
    cy = h / 2 + torch.empty(b).uniform_(-config.aug_shift, config.aug_shift, generator=g) * h
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
    crops = crop_and_resize(x, list(boxes.unsqueeze(1)), out_size)  # pads with 0 = mean colour
    if config.aug_flip > 0:
        flip = torch.rand(b, generator=g) < config.aug_flip
        crops = torch.where(flip.view(b, 1, 1, 1), crops.flip(-1), crops)
    return crops


def hue_change(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For images where mask: a random non-identity channel permutation, or grey (1 in 6)."""
    perms = torch.tensor([[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    b = x.shape[0]
    choice = torch.randint(0, 6, (b,), generator=generator)
    idx = perms[choice.clamp(max=4)]  # [B, 3]
    permuted = torch.gather(x, 1, idx.view(b, 3, 1, 1).expand_as(x))
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    changed = torch.where((choice == 5).view(b, 1, 1, 1), grey, permuted)
    return torch.where(mask.view(b, 1, 1, 1), changed, x)
