"""ResNet-FPN backbones (P2-P6) from torchvision, plus a narrow ResNet for CPU-sized runs."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.ops import misc as misc_nn_ops

from vild.errors import WeightsUnavailableError
from vild.model.config import ViLDConfig


def norm_layer_for(norm: str):
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return misc_nn_ops.FrozenBatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, 8)
    raise ValueError(f"unknown norm {norm!r}")


class TinyResNet(nn.Module):
    """A ResNet-18-shaped trunk with configurable stage widths (one BasicBlock per stage).

    Exposes conv1/bn1/layer1..layer4 like torchvision's ResNet so the FPN extractor applies.
    """

    def __init__(self, widths: tuple[int, int, int, int], norm_layer) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = widths[0]
        for index, width in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            downsample = None
            if stride != 1 or in_ch != width:
                downsample = nn.Sequential(
                    resnet.conv1x1(in_ch, width, stride), norm_layer(width)
                )
            block = resnet.BasicBlock(in_ch, width, stride, downsample, norm_layer=norm_layer)
            setattr(self, f"layer{index}", nn.Sequential(block))
            in_ch = width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # only used through IntermediateLayerGetter
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_backbone(config: ViLDConfig) -> BackboneWithFPN:
    """Config -> ResNet-FPN returning feature maps '0'..'3' (P2-P5) and 'pool' (P6)."""
    norm_layer = norm_layer_for(config.norm)
    if config.backbone == "tiny":
        trunk = TinyResNet(config.tiny_widths, norm_layer)
        in_channels = list(config.tiny_widths)
        return BackboneWithFPN(
            trunk,
            return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
            in_channels_list=in_channels,
            out_channels=config.fpn_channels,
        )
    weights = None
    if config.backbone_weights:
        try:
            weights = resnet.__dict__[f"ResNet{config.backbone[6:]}_Weights"][config.backbone_weights]
        except KeyError:
            raise WeightsUnavailableError(
                f"unknown torchvision weights {config.backbone_weights!r} for {config.backbone}"
            ) from None
    try:
        trunk = resnet.__dict__[config.backbone](weights=weights, norm_layer=norm_layer)
    except Exception as e:  # download failures surface as URLError/OSError/RuntimeError
        raise WeightsUnavailableError(
            f"could not fetch torchvision weights {config.backbone}:{config.backbone_weights} "
            f"({type(e).__name__}: {e}); train from scratch with backbone_weights=None "
            "or place the file in torch hub's cache"
        ) from None
    fpn = _resnet_fpn_extractor(trunk, config.trainable_layers)
    if config.fpn_channels != 256:
        raise ValueError("torchvision's ResNet-FPN extractor has 256 FPN channels")
    return fpn
