"""open_clip towers (CLIP ResNets and ViTs) read as feature maps for the tower-fed head."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vild.model.tower_maps import (
    OpenClipResNetMap, OpenClipViTMap, build_open_clip_map, open_clip_map, open_clip_tower_spec)
from vild.model.tower_regions import TowerRegionFeatures

RESNET_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8}}
VIT_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16}}


def _visual(cfg: dict, quick_gelu: bool = False) -> nn.Module:
    from open_clip.model import _build_vision_tower

    torch.manual_seed(0)
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=quick_gelu).eval()


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def test_resnet_map_is_what_the_attention_pool_reads():
    visual = _visual(RESNET_CFG)
    wrapped = open_clip_map(visual)
    assert isinstance(wrapped, OpenClipResNetMap)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = wrapped.forward_features(x)
        assert fmap.shape == (2, 8 * 32, 2, 2)  # width x 32 channels at stride 32
        _close(visual.attnpool(fmap), visual(x))


def test_vit_map_is_the_towers_own_patch_tokens_at_its_size():
    visual = _visual(VIT_CFG)
    wrapped = open_clip_map(visual)
    assert isinstance(wrapped, OpenClipViTMap)
    visual.output_tokens = True
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = wrapped.forward_features(x)
        _, tokens = visual(x)
    assert fmap.shape == (2, 32, 4, 4)
    _close(fmap.flatten(2).transpose(1, 2), tokens)


def test_vit_map_reads_larger_images_with_a_resized_positional_embedding():
    visual = _visual(VIT_CFG)
    wrapped = open_clip_map(visual)
    cls_pos, patches = wrapped.positional_embedding((4, 4))
    _close(patches, visual.positional_embedding[1:])  # the trained grid: unchanged
    _, patches = wrapped.positional_embedding((8, 8))
    assert patches.shape == (64, 32)
    # bicubic upsampling keeps the grid's mean and range roughly; a wrong reshape would not
    grid = visual.positional_embedding[1:].reshape(4, 4, 32)
    corners = patches.reshape(8, 8, 32)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.cosine_similarity(corners, grid[[0, 0, -1, -1], [0, -1, 0, -1]], dim=-1).min() > 0.8
    with torch.no_grad():
        fmap = wrapped.forward_features(torch.randn(1, 3, 64, 48))
    assert fmap.shape == (1, 32, 8, 6) and torch.isfinite(fmap).all()


@pytest.mark.parametrize("cfg", [RESNET_CFG, VIT_CFG], ids=["resnet", "vit"])
def test_a_tower_rebuilt_from_its_spec_gives_the_same_map(cfg):
    visual = _visual(cfg)
    spec = open_clip_tower_spec(cfg, visual)
    assert json.loads(spec)["quick_gelu"] is False
    rebuilt = build_open_clip_map(spec)
    rebuilt.load_state_dict(open_clip_map(visual).state_dict())
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        _close(rebuilt.eval().forward_features(x), open_clip_map(visual).forward_features(x))
    reader = TowerRegionFeatures(rebuilt, crop_size=size, mean=(0, 0, 0), std=(1, 1, 1), factors=(1.0, 2.0))
    boxes = [torch.tensor([[0.0, 0, 30, 30], [4, 4, 60, 50]])]
    assert reader(torch.rand(1, 3, 64, 64), boxes).shape == (2, reader.out_dim)


def test_quick_gelu_is_kept_in_the_spec():
    visual = _visual(VIT_CFG, quick_gelu=True)
    assert json.loads(open_clip_tower_spec(VIT_CFG, visual))["quick_gelu"] is True


def test_unreadable_towers_are_refused():
    with pytest.raises(ValueError, match="no feature map"):
        open_clip_map(nn.Linear(3, 3))
    cfg = {"embed_dim": 16, "vision_cfg": {**VIT_CFG["vision_cfg"], "attentional_pool": True,
                                           "attn_pooler_queries": 4, "attn_pooler_heads": 2}}
    with pytest.raises(ValueError, match="attention pooler"):
        open_clip_map(_visual(cfg))
    with pytest.raises(ValueError, match="cannot build the open_clip tower"):
        build_open_clip_map("{not json")
