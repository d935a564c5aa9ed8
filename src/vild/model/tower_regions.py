"""Region features read from a frozen image tower's own feature map (the teacher's, typically).

Why: on ShapeWorld-OV a head distilled on the detector's base-trained RoI features names about
half the novel objects the teacher names, while the same head distilled on the teacher tower's
map names nearly all of them (docs/distillation.md section 17). The tower was trained on
crops of one size, so each box is read from the map of the image upsampled by the factor that
brings the box nearest that size (as FPN assigns boxes to levels), and, like the teacher's
region crops, from its 1x and 1.5x boxes.

The detector holds one when its config says image_head_input="tower" (`build_tower`); its
distillation head is trained by `vild.training.tower_head` (`vild distill-tower`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from vild.model.tower_maps import OPEN_CLIP_TOWER, build_open_clip_map
from vild.teacher.crops import region_boxes

DEFAULT_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def build_tower(config) -> "TowerRegionFeatures":
    """The region reader of a `ViLDConfig` with image_head_input="tower": its timm tower
    (`tower_model`, num_classes=0) or open_clip tower (`tower_vision_cfg`), random weights: the
    model folder or the teacher fills them."""
    if config.tower_model == OPEN_CLIP_TOWER:
        trunk = build_open_clip_map(config.tower_vision_cfg)
    else:
        import timm

        from vild.teacher.cnn import register_timm

        register_timm()  # the ShapeWorld teacher's tower is a timm model of ours
        try:
            trunk = timm.create_model(config.tower_model, pretrained=False, num_classes=0)
        except RuntimeError as e:  # timm: "Unknown model"
            raise ValueError(f"cannot build the tower {config.tower_model!r}: {e}") from None
    return TowerRegionFeatures(trunk, crop_size=config.tower_image_size, mean=config.tower_mean,
                               std=config.tower_std, factors=config.tower_factors,
                               box_scales=config.tower_box_scales, grid=config.tower_grid)


def nearest_scale(sizes: torch.Tensor, factors: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Index into `factors` per box: the upsampling that brings its longest side (px, [N])
    nearest `crop_size` in log scale. Sizes below 1 px count as 1 px."""
    ratio = factors.to(sizes.dtype)[None] * sizes.clamp(min=1)[:, None] / crop_size
    return torch.log(ratio).abs().argmin(1)


class TowerRegionFeatures(nn.Module):
    """Images + boxes -> [N, len(box_scales) * C * grid * grid] features from a frozen tower.

    trunk: a module with `forward_features(x) -> [B, C, h, w]` (timm's protocol; the
    teacher's `model.visual.trunk`), trained on `crop_size` px inputs normalised with
    `mean`/`std`. Its weights stay frozen and its normalisation layers in eval mode.
    """

    def __init__(self, trunk: nn.Module, *, crop_size: int, mean: Sequence[float], std: Sequence[float],
                 factors: Sequence[float] = DEFAULT_FACTORS, box_scales: Sequence[float] = (1.0, 1.5),
                 grid: int = 2) -> None:
        super().__init__()
        if not hasattr(trunk, "forward_features"):
            raise TypeError("the tower must have forward_features (timm's model protocol)")
        if int(grid) <= 0:
            raise ValueError(f"grid must be at least 1, got {grid}")
        if not factors or min(factors) <= 0:
            raise ValueError(f"upsampling factors must be positive, got {tuple(factors)}")
        self.trunk = trunk.eval().requires_grad_(False)
        self.crop_size = int(crop_size)
        self.box_scales = tuple(float(s) for s in box_scales)
        self.grid = int(grid)
        self.register_buffer("factors", torch.tensor([float(f) for f in factors]), persistent=False)
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            probe = self.trunk.forward_features(torch.zeros(1, 3, self.crop_size, self.crop_size))
        if probe.ndim != 4:
            raise TypeError(f"the tower's forward_features must give a [B, C, h, w] map, got "
                            f"{probe.ndim} dims (wrap token towers: vild.model.tower_maps)")
        self.channels, self.map_size = int(probe.shape[1]), int(probe.shape[-1])
        self.stride = self.crop_size / self.map_size

    @property
    def out_dim(self) -> int:
        return len(self.box_scales) * self.channels * self.grid * self.grid

    def train(self, mode: bool = True) -> "TowerRegionFeatures":
        super().train(mode)
        self.trunk.eval()  # frozen: its BatchNorm statistics are the tower's own
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """images [B, 3, H, W] in 0..1; boxes: B tensors [N_i, 4] xyxy px of those images.
        Returns [sum N_i, out_dim], rows in the order of the boxes."""
        if images.ndim != 4 or images.shape[0] != len(boxes):
            raise ValueError(f"need [B, 3, H, W] images and B box tensors, got {tuple(images.shape)} "
                             f"and {len(boxes)}")
        x = (images.float() - self.mean) / self.std
        all_boxes = torch.cat([b.to(x.device, torch.float32).reshape(-1, 4) for b in boxes])
        owner = torch.cat([torch.full((len(b),), i, device=x.device) for i, b in enumerate(boxes)])
        out = x.new_zeros(len(all_boxes), self.out_dim)
        if not len(all_boxes):
            return out
        sizes = (all_boxes[:, 2:] - all_boxes[:, :2]).amax(1)
        level = nearest_scale(sizes, self.factors, self.crop_size)
        for j in level.unique().tolist():
            rows = torch.where(level == j)[0]
            factor = float(self.factors[j])
            scaled = x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="bilinear",
                                                         align_corners=False)
            fmap = self.trunk.forward_features(scaled)
            crop_boxes = region_boxes(all_boxes[rows], self.box_scales)  # [K, n, 4], on the images' device
            k, n = crop_boxes.shape[:2]
            index = owner[rows].to(x.dtype).repeat(k)[:, None]
            pooled = roi_align(fmap, torch.cat([index, crop_boxes.reshape(-1, 4)], 1),
                               output_size=self.map_size, spatial_scale=factor / self.stride,
                               sampling_ratio=2, aligned=True)
            if self.grid != self.map_size:
                pooled = F.adaptive_avg_pool2d(pooled, self.grid)
            out[rows] = pooled.view(k, n, -1).transpose(0, 1).reshape(n, -1)
        return out
