"""Feature maps from open_clip image towers that are not timm models: CLIP's ResNets
(`ModifiedResNet`: RN50, RN101, ...) and ViTs, so a tower-fed head works with a real CLIP.

`TowerRegionFeatures` reads boxes from any module whose `forward_features(x)` gives a
[B, C, h, w] map (timm's protocol). The ShapeWorld teacher's tower is a timm CNN and has one;
open_clip's own towers do not, so these wrappers give them one:
- ResNet: the map before the attention pool (stride 32), as F-VLM and RegionCLIP read it.
- ViT: the patch tokens after the last block and `ln_post`, reshaped to the patch grid (as
  MaskCLIP reads them). The positional embedding is resized (bicubic) to the grid of the
  image it reads, which is how a ViT reads the upsampled images the tower reader feeds it.

A detector folder rebuilds its tower from `ViLDConfig.tower_vision_cfg` (JSON text of
open_clip's `embed_dim`, `vision_cfg` and `quick_gelu`, `open_clip_tower_spec`) with random
weights; the folder's safetensors fill them.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from vild.model.config import OPEN_CLIP_TOWER  # noqa: F401  (the tower_model of the towers built here)


class OpenClipResNetMap(nn.Module):
    """open_clip `ModifiedResNet` -> its stride-32 map before the attention pool."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))


class OpenClipViTMap(nn.Module):
    """open_clip `VisionTransformer` -> its patch tokens as a [B, width, h, w] map, at any
    input size (the positional embedding is resized to the input's patch grid)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError("open_clip ViTs with an attention pooler (CoCa-style) have no patch-token map")
        self.visual = visual

    def positional_embedding(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(class token's [C], patches' [h * w, C]) positional embeddings for a patch grid."""
        pos = self.visual.positional_embedding
        trained = tuple(self.visual.grid_size)
        patches = pos[1:]
        if grid != trained:
            square = patches.reshape(1, trained[0], trained[1], -1).permute(0, 3, 1, 2)
            patches = F.interpolate(square.float(), size=grid, mode="bicubic", align_corners=False)
            patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
        return pos[0], patches

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(x)  # [B, C, h, w]
        b, c, h, w = x.shape
        cls_pos, patch_pos = self.positional_embedding((h, w))
        tokens = x.flatten(2).transpose(1, 2) + patch_pos.to(x.dtype)
        cls = (v.class_embedding + cls_pos).to(x.dtype).expand(b, 1, c)
        tokens = v.ln_post(v.transformer(v.ln_pre(torch.cat([cls, tokens], 1))))
        return tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w)


def open_clip_map(visual: nn.Module) -> nn.Module:
    """The map wrapper of an open_clip image tower; ValueError for kinds it cannot read."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, ModifiedResNet):
        return OpenClipResNetMap(visual)
    if isinstance(visual, VisionTransformer):
        return OpenClipViTMap(visual)
    raise ValueError(f"open_clip image tower {type(visual).__name__} has no feature map this reader knows "
                     "(supported: timm towers with forward_features, CLIP ResNets, ViTs)")


def open_clip_tower_spec(model_cfg: dict, visual: nn.Module) -> str:
    """JSON text that rebuilds `visual` (`build_open_clip_map`): its open_clip embed_dim and
    vision_cfg, and whether it uses QuickGELU (OpenAI's weights do; their configs do not say)."""
    from open_clip.transformer import QuickGELU

    quick_gelu = bool(model_cfg.get("quick_gelu")) or any(isinstance(m, QuickGELU) for m in visual.modules())
    return json.dumps({"embed_dim": int(model_cfg["embed_dim"]), "vision_cfg": model_cfg["vision_cfg"],
                       "quick_gelu": quick_gelu}, sort_keys=True)


def build_open_clip_map(spec: str) -> nn.Module:
    """A randomly initialised open_clip tower from `open_clip_tower_spec` text, wrapped."""
    from open_clip.model import _build_vision_tower

    try:
        cfg = json.loads(spec)
        visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg["quick_gelu"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot build the open_clip tower from tower_vision_cfg ({e})") from None
    return open_clip_map(visual)
