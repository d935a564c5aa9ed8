import pytest
import torch
import torch.nn.functional as F

from vild.model import ViLDConfig


def tiny_config(**overrides) -> ViLDConfig:
    base = dict(
        mode="vild", embed_dim=16, backbone="tiny", tiny_widths=(8, 16, 16, 32), fpn_channels=32,
        min_size=64, max_size=64, anchor_sizes=(8, 16, 32, 48, 64), head_conv_dims=(),
        head_fc_dims=(32,), roi_batch_size_per_image=32, mask_head_dims=(16,),
        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, detections_per_image=20,
    )
    base.update(overrides)
    return ViLDConfig(**base)


def make_batch(num_images: int = 2, size: int = 64, embed_dim: int = 16):
    images, targets = [], []
    for i in range(num_images):
        img = torch.rand(3, size, size) * 0.2
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, 8:30, 10:28] = 1
        masks[1, 36:60, 34:58] = 1
        img[:, 8:30, 10:28] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
        img[:, 36:60, 34:58] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]
        targets.append(
            dict(
                boxes=torch.tensor([[10.0, 8, 28, 30], [34, 36, 58, 60]]),
                labels=torch.tensor([0, 1]),
                masks=masks,
                distill_boxes=torch.tensor([[8.0, 6, 30, 32], [0, 0, 64, 64], [30, 30, 60, 62]]),
                distill_embeddings=F.normalize(torch.randn(3, embed_dim), dim=-1),
            )
        )
        images.append(img)
    return images, targets


@pytest.fixture
def text_embeddings():
    return F.normalize(torch.randn(3, 16), dim=-1)
