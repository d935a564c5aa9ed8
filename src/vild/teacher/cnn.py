"""A small BatchNorm CNN image tower for the ShapeWorld-OV teacher, registered with timm.

Why not open_clip's own towers: trained from scratch on 24k 64 px crops with 2 CPU cores,
its ViT and ModifiedResNet learn shape very slowly (their supervised probes reached under 40%
top-1 where this plain CNN passes 80%; numbers in docs/teacher.md). Registering the CNN as a
timm model keeps the teacher an ordinary open_clip model: the config names it through
`vision_cfg.timm_model_name`, so open_clip builds, saves and loads it (folders, hf-hub) like
any timm-towered CLIP, as long as `vild.teacher.arch.register()` ran first.
"""

from __future__ import annotations

import torch
from torch import nn

TIMM_NAME = "vild_shapeworld_cnn"


def _stage(cin: int, cout: int, blocks: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ShapeWorldCNN(nn.Module):
    """Stride-2 stem, then conv-BN-ReLU stages with max-pooling, global pooling, optional head.

    Follows timm's model protocol (num_features, reset_classifier, forward_features,
    forward_head, default_cfg) because open_clip's TimmModel adapter relies on it.
    """

    def __init__(self, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), num_classes: int = 0,
                 global_pool: str = "avg", in_chans: int = 3, **_ignored) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks)):
            stages.append(_stage(cin, w, int(b), pool=i < len(widths) - 1))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.default_cfg = {"pool_size": None, "num_classes": num_classes}
        self.pretrained_cfg = self.default_cfg
        self.global_pool = global_pool
        self.head = nn.Linear(cin, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", "max", ""):
                raise ValueError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        elif self.global_pool == "max":
            x = x.amax(dim=(2, 3))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def register_timm() -> None:
    """Make `timm.create_model("vild_shapeworld_cnn")` work (idempotent)."""
    import timm
    from timm.models import register_model

    if timm.is_model(TIMM_NAME):
        return

    def vild_shapeworld_cnn(pretrained: bool = False, **kwargs) -> ShapeWorldCNN:
        if pretrained:
            raise ValueError(f"{TIMM_NAME} has no pretrained weights (train it with `vild train-teacher`)")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return ShapeWorldCNN(**kwargs)

    vild_shapeworld_cnn.__module__ = __name__
    register_model(vild_shapeworld_cnn)
