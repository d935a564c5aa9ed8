"""Second stage: RoI sampling, region embeddings, open-vocabulary scoring, class-agnostic masks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, box_iou, clip_boxes_to_image

from vild.model.config import ViLDConfig
from vild.model.heads import RegionEmbeddingHead, TowerEmbeddingHead, text_logits
from vild.model.losses import box_regression_loss, classification_loss, distillation_loss

FEATURE_MAPS = ["0", "1", "2", "3"]


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ViLDRoIHeads(nn.Module):
    """tower_dim: the width of the tower's region features when the distillation head reads
    the teacher's tower (config.image_head_input == "tower"), given by the detector."""

    def __init__(self, config: ViLDConfig, in_channels: int, *, tower_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.box_roi_pool = MultiScaleRoIAlign(FEATURE_MAPS, config.roi_output_size, sampling_ratio=2)
        head_kwargs = dict(
            in_channels=in_channels,
            roi_size=config.roi_output_size,
            conv_dims=config.head_conv_dims,
            fc_dims=config.head_fc_dims,
            embed_dim=config.embed_dim,
            norm=config.head_norm,
        )
        unit_image_head = config.image_head_output == "unit"
        # ViLD-image's RoI head takes the distillation loss alone, so it follows image_head_output.
        distills_alone = config.mode == "image" and config.image_head_input == "roi"
        self.text_head = RegionEmbeddingHead(**head_kwargs, normalize=unit_image_head or not distills_alone)
        # ViLD-ensemble: a separate head takes the distillation loss alone; a tower-fed one
        # reads the teacher's tower instead of the RoI features (in modes image and ensemble).
        self.image_head: nn.Module | None = None
        if config.image_head_input == "tower":
            if tower_dim is None:
                raise ValueError("a tower-fed distillation head needs the tower's feature width")
            self.image_head = TowerEmbeddingHead(in_dim=tower_dim, fc_dims=config.tower_fc_dims,
                                                 embed_dim=config.embed_dim, normalize=unit_image_head)
        elif config.mode == "ensemble":
            self.image_head = RegionEmbeddingHead(**head_kwargs, normalize=unit_image_head)
        self.box_regressor = nn.Linear(self.text_head.feature_dim, 4)
        nn.init.normal_(self.box_regressor.weight, std=0.001)
        nn.init.zeros_(self.box_regressor.bias)
        self.background = nn.Parameter(torch.randn(config.embed_dim) * 0.01)

        self.box_coder = det_utils.BoxCoder(config.box_coder_weights)
        self.matcher = det_utils.Matcher(
            config.roi_fg_iou_thresh, config.roi_bg_iou_thresh, allow_low_quality_matches=False
        )
        self.sampler = det_utils.BalancedPositiveNegativeSampler(
            config.roi_batch_size_per_image, config.roi_positive_fraction
        )
        if config.with_masks:
            self.mask_roi_pool = MultiScaleRoIAlign(FEATURE_MAPS, config.mask_output_size, sampling_ratio=2)
            norm = _group_norm if config.head_norm == "gn" else None
            self.mask_head = MaskRCNNHeads(in_channels, list(config.mask_head_dims), 1, norm_layer=norm)
            dim = config.mask_head_dims[-1]
            self.mask_predictor = MaskRCNNPredictor(dim, dim, 1)  # one class-agnostic mask

    # ---------------------------------------------------------------- training
    def sample_rois(self, proposals: list[torch.Tensor], targets: list[dict]):
        """Append ground truth to proposals, match at IoU 0.5, sample 25% foreground.

        -> (rois, matched_idxs, labels (0 = background, k + 1 = category k), regression_targets)
        """
        rois, matched, labels, reg_targets = [], [], [], []
        for props, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(props.dtype)
            props = torch.cat([props, gt_boxes])
            if gt_boxes.numel() == 0:
                idx = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                lab = torch.zeros_like(idx)
                gt_boxes = props.new_zeros(1, 4)
            else:
                match = self.matcher(box_iou(gt_boxes, props))
                idx = match.clamp(min=0)
                lab = target["labels"][idx].to(torch.int64) + 1
                lab[match == self.matcher.BELOW_LOW_THRESHOLD] = 0
                lab[match == self.matcher.BETWEEN_THRESHOLDS] = -1
            rois.append(props), matched.append(idx), labels.append(lab)
            reg_targets.append(gt_boxes[idx])
        pos, neg = self.sampler(labels)
        out = ([], [], [], [])
        for i, (p, n) in enumerate(zip(pos, neg)):
            keep = torch.where(p | n)[0]
            out[0].append(rois[i][keep])
            out[1].append(matched[i][keep])
            out[2].append(labels[i][keep])
            out[3].append(self.box_coder.encode_single(reg_targets[i][keep], rois[i][keep]))
        return out

    def losses(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict],
        text_embeddings: torch.Tensor | None,
        tower_distill: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """tower_distill: the tower's features of every image's distill_boxes, in order
        (a tower-fed distillation head only)."""
        cfg = self.config
        if cfg.tower_scores_text:
            raise ValueError("ViLD's one head on the teacher's tower trains on a region store with "
                             "vild distill-tower --mode vild, not in the detector's training loop")
        rois, matched, labels, reg_targets = self.sample_rois(proposals, targets)
        box_features = self.box_roi_pool(features, rois, image_sizes)
        head_features, embeddings = self.text_head(box_features)
        all_labels = torch.cat(labels)
        losses = {
            "loss_box_reg": box_regression_loss(
                self.box_regressor(head_features), torch.cat(reg_targets), all_labels
            )
        }
        if cfg.uses_text_loss:
            if text_embeddings is None:
                raise ValueError(f"mode {cfg.mode!r} needs text embeddings of the base categories")
            logits = text_logits(embeddings, text_embeddings, self.background, cfg.temperature)
            losses["loss_classifier"] = classification_loss(logits, all_labels)
        if cfg.uses_distillation:
            losses["loss_distill"] = cfg.distill_weight * self._distill_loss(
                features, image_sizes, targets, like=embeddings, tower_distill=tower_distill
            )
        if cfg.with_masks:
            losses["loss_mask"] = self._mask_loss(features, image_sizes, targets, rois, matched, labels)
        return losses

    def _distill_loss(self, features, image_sizes, targets, like: torch.Tensor,
                      tower_distill: torch.Tensor | None = None) -> torch.Tensor:
        boxes = [t.get("distill_boxes", like.new_zeros(0, 4)).to(like.dtype) for t in targets]
        if sum(b.shape[0] for b in boxes) == 0:
            return like.sum() * 0.0
        teacher = torch.cat([t["distill_embeddings"] for t in targets if "distill_embeddings" in t])
        weights = None
        if any("distill_weights" in t for t in targets):
            weights = torch.cat([t.get("distill_weights", b.new_ones(b.shape[0])) for t, b in zip(targets, boxes)])
        if self.config.image_head_input == "tower":
            if tower_distill is None:
                raise ValueError("a tower-fed distillation head needs the tower's features of the distill boxes")
            _, student = self.image_head(tower_distill)
        else:
            head = self.image_head if self.image_head is not None else self.text_head
            _, student = head(self.box_roi_pool(features, boxes, image_sizes))
        return distillation_loss(student, teacher, self.config.distill_loss, weights)

    def _mask_loss(self, features, image_sizes, targets, rois, matched, labels) -> torch.Tensor:
        positive = [lab > 0 for lab in labels]
        pos_rois = [r[p] for r, p in zip(rois, positive)]
        if sum(r.shape[0] for r in pos_rois) == 0:
            return sum(p.sum() for p in self.mask_predictor.parameters()) * 0.0
        if any("masks" not in t for t in targets):
            raise ValueError("with_masks=True needs 'masks' in every target")
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, pos_rois, image_sizes)))
        gt_masks = [t["masks"] for t in targets]
        agnostic = [torch.zeros(t["boxes"].shape[0], dtype=torch.int64, device=t["boxes"].device) for t in targets]
        pos_matched = [m[p] for m, p in zip(matched, positive)]
        return maskrcnn_loss(logits, pos_rois, gt_masks, agnostic, pos_matched)

    # --------------------------------------------------------------- inference
    def region_outputs(self, features, proposals, image_sizes):
        """Per image: refined boxes [P, 4], text-head embeddings [P, D], image-head ones or None
        (also None for a tower-fed head: the detector reads the tower, `tower_embeddings`)."""
        counts = [p.shape[0] for p in proposals]
        box_features = self.box_roi_pool(features, proposals, image_sizes)
        head_features, embeddings = self.text_head(box_features)
        deltas = self.box_regressor(head_features).float()  # bf16 boxes would be 4 px coarse at 1024
        boxes = self.box_coder.decode(deltas, proposals).reshape(-1, 4)
        image_embeddings = None
        if self.image_head is not None and self.config.image_head_input == "roi":
            image_embeddings = self.image_head(box_features)[1]
        outputs = []
        for i, (b, e) in enumerate(zip(boxes.split(counts), embeddings.split(counts))):
            ie = image_embeddings.split(counts)[i] if image_embeddings is not None else None
            outputs.append((clip_boxes_to_image(b, image_sizes[i]), e, ie))
        return outputs

    def tower_embeddings(self, tower_features: torch.Tensor) -> torch.Tensor:
        """The tower-fed head's embeddings [N, D] of tower features [N, F] (the distillation
        head's; in mode "vild" the one head's, which also scores against the text)."""
        return self.image_head(tower_features)[1]

    def class_probabilities(
        self,
        embeddings: torch.Tensor,
        image_embeddings: torch.Tensor | None,
        text_embeddings: torch.Tensor,
        base_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """[P, D] region embeddings -> [P, C] probabilities by this config's own method
        (`vild.model.methods`, where every method is defined)."""
        from vild.model.methods import method_probabilities, native_method

        return method_probabilities(native_method(self.config.mode), self.config, self.background,
                                    embeddings, image_embeddings, None, text_embeddings, base_mask)

    def predict_masks(self, features, boxes: list[torch.Tensor], image_sizes) -> list[torch.Tensor]:
        """Class-agnostic mask probabilities [K, 1, M, M] for each image's boxes."""
        counts = [b.shape[0] for b in boxes]
        if sum(counts) == 0:
            m = self.config.mask_output_size
            return [b.new_zeros(0, 1, m, m) for b in boxes]
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_sizes)))
        return list(logits.float().sigmoid().split(counts))
