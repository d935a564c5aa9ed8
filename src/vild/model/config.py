"""The detector's configuration: a small frozen dataclass saved as JSON beside the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

MODES = ("text", "image", "vild", "ensemble")
IMAGE_HEAD_INPUTS = ("roi", "tower")
IMAGE_HEAD_OUTPUTS = ("unit", "mean")
DISTILL_LOSSES = ("l1", "l2")
OPEN_CLIP_TOWER = "open_clip"  # tower_model of an open_clip tower (`vild.model.tower_maps`)
BACKBONES = ("tiny", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
NORMS = ("bn", "frozen_bn", "gn")


def check_image_head_output(output: str, mode: str, field: str) -> None:
    """The rule for a distillation head's output (`ViLDConfig.image_head_output`, the tower
    head recipe's `output`): "mean" only where a head takes the distillation loss alone."""
    if output not in IMAGE_HEAD_OUTPUTS:
        raise ValueError(f"{field} must be one of {IMAGE_HEAD_OUTPUTS}, got {output!r}")
    if output == "mean" and mode not in ("image", "ensemble"):
        raise ValueError(f"{field} 'mean' is for modes image and ensemble: ViLD's one head also takes "
                         "the text loss, whose logits would grow with an unnormalised embedding, and "
                         "mode text has no distillation head")


@dataclass(frozen=True)
class ViLDConfig:
    """Everything that shapes the detector's weights and its post-processing.

    mode: "text" (ViLD-text: cross-entropy only), "image" (ViLD-image: distillation only),
    "vild" (one head, both losses), "ensemble" (a second head takes the distillation loss).
    """

    # fields saved under an older name (`vild.io.config_from_dict` reads them under the new one)
    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"tower_head_output": "image_head_output"}

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
    # What the distillation head reads: "roi" (the detector's RoI features, the paper) or
    # "tower" (a frozen copy of the teacher's image tower, each box read from the image
    # upsampled to bring it nearest the tower's crop size: `vild.model.tower_regions`;
    # docs/distillation.md sections 17-19). In mode "vild" that head is ViLD's one head: it also
    # takes the text loss and its embeddings are the regions' own. The tower is the timm model
    # `tower_model` built with num_classes=0, or, with tower_model "open_clip", the open_clip
    # tower (a CLIP ResNet or ViT) that `tower_vision_cfg` describes (`vild.model.tower_maps`);
    # its weights are saved with the detector's.
    image_head_input: str = "roi"
    tower_model: str = ""
    tower_vision_cfg: str = ""  # JSON text; only for tower_model "open_clip"
    tower_image_size: int = 224  # the teacher's crop size
    tower_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    tower_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    tower_factors: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    tower_box_scales: tuple[float, ...] = (1.0, 1.5)
    tower_grid: int = 2
    tower_fc_dims: tuple[int, ...] = (1024,)
    tower_reads: str = "refined"  # which boxes the tower head reads at detection: "refined" or "proposals"
    # The embedding of the head that takes the distillation loss alone (ViLD-image's, the
    # ensemble's second head; RoI- or tower-fed): "unit" (L2-normalised, as the paper's heads)
    # or "mean" (left unnormalised: trained with the L2 loss it estimates the mean of the teacher
    # embeddings its features allow, shorter where they are ambiguous, so its ViLD-image softmax
    # is flatter there; docs/distillation.md sections 23-24). Saved as tower_head_output before.
    image_head_output: str = "unit"
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
        if self.distill_loss not in DISTILL_LOSSES:
            raise ValueError(f"distill_loss must be 'l1' or 'l2', got {self.distill_loss!r}")
        if not 0.0 <= self.ensemble_lambda <= 1.0:
            raise ValueError("ensemble_lambda must be in [0, 1]")
        if self.embed_dim <= 0:
            raise ValueError("embed_dim must be positive")
        check_image_head_output(self.image_head_output, self.mode, "image_head_output")
        if self.image_head_input not in IMAGE_HEAD_INPUTS:
            raise ValueError(f"image_head_input must be one of {IMAGE_HEAD_INPUTS}, got {self.image_head_input!r}")
        if self.image_head_input == "tower":
            if self.mode == "text":
                raise ValueError("a tower-fed head needs mode 'image', 'vild' or 'ensemble' (mode 'text' "
                                 "has no distillation head)")
            if not self.tower_model:
                raise ValueError("image_head_input 'tower' needs tower_model (the teacher tower's timm name, "
                                 "or 'open_clip' with tower_vision_cfg)")
            if (self.tower_model == OPEN_CLIP_TOWER) != bool(self.tower_vision_cfg):
                raise ValueError("tower_vision_cfg describes an open_clip tower: give it exactly when "
                                 "tower_model is 'open_clip'")
            if self.tower_reads not in ("refined", "proposals"):
                raise ValueError(f"tower_reads must be 'refined' or 'proposals', got {self.tower_reads!r}")
            if not self.tower_factors or min(self.tower_factors) <= 0 or self.tower_grid <= 0:
                raise ValueError("tower_factors must be positive and tower_grid at least 1")

    @property
    def uses_text_loss(self) -> bool:
        return self.mode in ("text", "vild", "ensemble")

    @property
    def uses_distillation(self) -> bool:
        return self.mode in ("image", "vild", "ensemble")

    @property
    def separate_image_head(self) -> bool:
        """The distillation loss has a head of its own (its embeddings are the regions'
        `image_embeddings`): ViLD-ensemble's second head, or ViLD-image's tower-fed head. (ViLD's
        one head on the tower gives the regions' `embeddings` themselves.)"""
        return self.mode == "ensemble" or (self.image_head_input == "tower" and self.mode == "image")

    @property
    def tower_scores_text(self) -> bool:
        """ViLD's one head reads the tower: the RoI head then only refines boxes."""
        return self.image_head_input == "tower" and self.mode == "vild"
