"""The detector's configuration: a small frozen dataclass saved as JSON beside the weights."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("text", "image", "vild", "ensemble")
BACKBONES = ("tiny", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
NORMS = ("bn", "frozen_bn", "gn")


@dataclass(frozen=True)
class ViLDConfig:
    """Everything that shapes the detector's weights and its post-processing.

    mode: "text" (ViLD-text: cross-entropy only), "image" (ViLD-image: distillation only),
    "vild" (one head, both losses), "ensemble" (a second head takes the distillation loss).
    """

    mode: str = "vild"
    embed_dim: int = 512  # the teacher's embedding size
    # backbone + FPN
    backbone: str = "resnet50"
    backbone_weights: str | None = None  # a torchvision weights name, e.g. "IMAGENET1K_V1"
    tiny_widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    norm: str = "bn"
    trainable_layers: int = 5
    fpn_channels: int = 256
    # input
    min_size: int = 1024
    max_size: int = 1024
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # RPN
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    # box head: region embedding = conv/fc head -> linear to embed_dim -> L2 normalise
    head_conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    head_fc_dims: tuple[int, ...] = (1024,)
    head_norm: str | None = "gn"  # per-RoI normalisation; BatchNorm would mix RoIs
    roi_output_size: int = 7
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_fg_iou_thresh: float = 0.5
    roi_bg_iou_thresh: float = 0.5
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    # classification against text embeddings
    temperature: float = 100.0
    # ViLD-image scores: the teacher's logit scale (`vild train` sets it from the teacher; 100 is
    # CLIP's). The head imitates the teacher's image embeddings, so the teacher's calibration fits.
    image_temperature: float = 100.0
    # distillation
    distill_weight: float = 0.5
    distill_loss: str = "l1"
    # ensemble (geometric mean weights); lambda applies to ViLD-text on base categories
    ensemble_lambda: float = 2.0 / 3.0
    # masks (class-agnostic)
    with_masks: bool = True
    mask_output_size: int = 14
    mask_head_dims: tuple[int, ...] = (256, 256, 256, 256)
    # post-processing
    score_thresh: float = 0.0
    nms_thresh: float = 0.5
    detections_per_image: int = 300
    pre_nms_topk: int = 20000  # candidates (box, class) kept before per-class NMS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.distill_loss not in ("l1", "l2"):
            raise ValueError(f"distill_loss must be 'l1' or 'l2', got {self.distill_loss!r}")
        if not 0.0 <= self.ensemble_lambda <= 1.0:
            raise ValueError("ensemble_lambda must be in [0, 1]")
        if self.embed_dim <= 0:
            raise ValueError("embed_dim must be positive")

    @property
    def uses_text_loss(self) -> bool:
        return self.mode in ("text", "vild", "ensemble")

    @property
    def uses_distillation(self) -> bool:
        return self.mode in ("image", "vild", "ensemble")
