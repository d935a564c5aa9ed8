"""Region embedding heads and the text-embedding classifier (pure functions over embeddings)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead


class RegionEmbeddingHead(nn.Module):
    """RoI features [N, C, S, S] -> (features [N, F], embeddings [N, D]): L2-normalised unless
    `normalize` is False (then the projection itself: `ViLDConfig.image_head_output` "mean")."""

    def __init__(
        self,
        *,
        in_channels: int,
        roi_size: int,
        conv_dims: tuple[int, ...],
        fc_dims: tuple[int, ...],
        embed_dim: int,
        norm: str | None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        norm_layer = partial(nn.GroupNorm, 32) if norm == "gn" else None
        self.body = FastRCNNConvFCHead(
            (in_channels, roi_size, roi_size), list(conv_dims), list(fc_dims), norm_layer=norm_layer
        )
        self.projection = nn.Linear(fc_dims[-1], embed_dim)
        if not normalize:
            # At the default init an unnormalised projection starts far from every unit teacher
            # embedding (length about 8 on ShapeWorld), and under the detector's SGD its first
            # steps killed every ReLU of the body: the head collapsed to one constant embedding
            # (docs/distillation.md section 24). From the origin it grows towards the teacher's.
            nn.init.zeros_(self.projection.weight)
            nn.init.zeros_(self.projection.bias)

    @property
    def feature_dim(self) -> int:
        return self.projection.in_features

    def forward(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(roi_features)
        embeddings = self.projection(features)
        return features, F.normalize(embeddings, dim=-1) if self.normalize else embeddings


class TowerEmbeddingHead(nn.Module):
    """Tower region features [N, F] (`vild.model.tower_regions`) -> (features [N, H],
    embeddings [N, D]): FC + ReLU layers, then a projection, L2-normalised unless `normalize`
    is False (then the projection itself: `ViLDConfig.image_head_output` "mean")."""

    def __init__(self, *, in_dim: int, fc_dims: tuple[int, ...], embed_dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        layers, width = [], in_dim
        for out in fc_dims:
            layers += [nn.Linear(width, out), nn.ReLU(inplace=True)]
            width = out
        self.body = nn.Sequential(*layers)
        self.projection = nn.Linear(width, embed_dim)

    def forward(self, tower_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(tower_features.flatten(1))
        embeddings = self.projection(features)
        return features, F.normalize(embeddings, dim=-1) if self.normalize else embeddings


def text_logits(
    region_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    background: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Cosine logits against [background, categories].

    region_embeddings [N, D] and text_embeddings [C, D] L2-normalised; background [D] (any norm)
    -> [N, 1 + C], column 0 the background.
    """
    classifier = torch.cat([F.normalize(background, dim=-1)[None], text_embeddings], dim=0)
    return temperature * region_embeddings @ classifier.T


def image_probabilities(
    region_embeddings: torch.Tensor, text_embeddings: torch.Tensor, temperature: float
) -> torch.Tensor:
    """ViLD-image scores: softmax over the categories alone (no background). [N, D] x [C, D] -> [N, C]."""
    return torch.softmax(temperature * region_embeddings @ text_embeddings.T, dim=-1)


def ensemble_probabilities(
    p_text: torch.Tensor, p_image: torch.Tensor, base_mask: torch.Tensor, lam: float
) -> torch.Tensor:
    """ViLD-ensemble: geometric weighting of the two heads' probabilities, [N, C] each.

    base categories: p_text^lam * p_image^(1-lam); novel: p_text^(1-lam) * p_image^lam.
    `base_mask` [C] bool marks the categories seen in detection training.
    """
    weight_text = torch.where(base_mask, lam, 1.0 - lam).to(p_text.dtype)
    return p_text.clamp_min(0).pow(weight_text) * p_image.clamp_min(0).pow(1.0 - weight_text)
