"""The ViLD detector: Mask R-CNN whose classifier is a matrix of text embeddings given at call time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from vild.model.backbone import build_backbone
from vild.model.config import ViLDConfig
from vild.model.outputs import DetectorOutput, Detections
from vild.model.postprocess import finish_detections, mask_limit, select_detections_batch, with_limits
from vild.model.predict import precision_context
from vild.model.roi_heads import ViLDRoIHeads
from vild.model.tower_regions import TowerRegionFeatures, build_tower


@dataclass(frozen=True)
class Regions:
    """One image's scored-later regions, in the coordinates of the resized input tensor.

    boxes [P, 4] refined by the (class-agnostic) box regressor; objectness [P] from the RPN;
    embeddings [P, D] of the text head; image_embeddings [P, D] of the ensemble's image head.
    """

    boxes: torch.Tensor
    objectness: torch.Tensor
    embeddings: torch.Tensor
    image_embeddings: torch.Tensor | None

    def select(self, keep: torch.Tensor) -> "Regions":
        ie = self.image_embeddings[keep] if self.image_embeddings is not None else None
        return Regions(self.boxes[keep], self.objectness[keep], self.embeddings[keep], ie)


@dataclass
class RegionBatch:
    """Backbone features and per-image regions of a batch, kept to finish detection later."""

    features: dict[str, torch.Tensor]
    sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    regions: list[Regions]

    def boxes_in_original(self, index: int, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Boxes of image `index` (default: its regions' boxes) in original image pixels."""
        boxes = self.regions[index].boxes if boxes is None else boxes
        return resize_boxes(boxes, list(self.sizes[index]), list(self.original_sizes[index]))


class ViLDDetector(nn.Module):
    """images (list of [3, H, W] floats in 0..1) -> `DetectorOutput`.

    `text_embeddings` [C, D] (L2-normalised rows) is the classifier: any vocabulary, any call.
    Training targets per image: `boxes` [N, 4] xyxy px, `labels` [N] (index into the text
    embeddings), `masks` [N, H, W] uint8, and for distillation `distill_boxes` [P, 4] xyxy px
    with `distill_embeddings` [P, D] (teacher embeddings of those proposals).
    With config.image_head_input == "tower" the detector also holds `tower`, a frozen copy of
    the teacher's image tower, and its distillation head reads the tower's region features.
    """

    def __init__(self, config: ViLDConfig) -> None:
        super().__init__()
        self.config = config
        self.transform = _Transform(
            config.min_size, config.max_size, list(config.image_mean), list(config.image_std)
        )
        self.backbone = build_backbone(config)
        anchors = AnchorGenerator(
            tuple((s,) for s in config.anchor_sizes),
            (tuple(config.anchor_ratios),) * len(config.anchor_sizes),
        )
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(self.backbone.out_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=config.rpn_batch_size_per_image,
            positive_fraction=0.5,
            pre_nms_top_n=dict(training=config.rpn_pre_nms_top_n_train, testing=config.rpn_pre_nms_top_n_test),
            post_nms_top_n=dict(training=config.rpn_post_nms_top_n_train, testing=config.rpn_post_nms_top_n_test),
            nms_thresh=config.rpn_nms_thresh,
        )
        self.tower: TowerRegionFeatures | None = build_tower(config) if config.image_head_input == "tower" else None
        self.roi_heads = ViLDRoIHeads(config, self.backbone.out_channels,
                                      tower_dim=self.tower.out_dim if self.tower is not None else None)

    # ------------------------------------------------------------------ stages
    def _preprocess(self, images, targets):
        if not images:
            raise ValueError("images must be a non-empty list of [3, H, W] tensors")
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"each image must be [3, H, W], got {tuple(img.shape)}")
        original_sizes = [tuple(int(s) for s in img.shape[-2:]) for img in images]
        if targets is not None:
            targets = [dict(t) for t in targets]  # never mutate the caller's dicts
        image_list, transformed = self.transform(images, targets)
        if transformed is not None:
            for t, orig, new in zip(transformed, original_sizes, image_list.image_sizes):
                if "distill_boxes" in t:
                    t["distill_boxes"] = resize_boxes(t["distill_boxes"], list(orig), list(new))
        return image_list, transformed, original_sizes

    def _propose(self, image_list, features, targets):
        """torchvision's RPN forward, returning objectness scores too, losses whenever targets exist."""
        rpn = self.rpn
        feats = list(features.values())
        objectness, deltas = rpn.head(feats)
        anchors = rpn.anchor_generator(image_list, feats)
        # anchors per level from shapes, not numel(): a traced graph (ONNX export) keeps shapes dynamic
        per_level = [s[0] * s[1] * s[2] for s in (o[0].shape for o in objectness)]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        objectness, deltas = objectness.float(), deltas.float()  # boxes stay fp32 under autocast
        decoded = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = rpn.filter_proposals(decoded, objectness, image_list.image_sizes, per_level)
        losses = {}
        if targets is not None:
            labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
            regression = rpn.box_coder.encode(matched, anchors)
            loss_obj, loss_reg = rpn.compute_loss(objectness, deltas, labels, regression)
            losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_reg}
        return boxes, scores, losses

    def _tower_features(self, image_list, boxes: list[torch.Tensor]) -> torch.Tensor | None:
        """The tower's features of each image's boxes (resized-input coordinates), or None
        without a tower. The tower reads the resized images, normalised its own way."""
        if self.tower is None:
            return None
        t = self.transform
        mean = torch.as_tensor(t.image_mean, dtype=image_list.tensors.dtype, device=image_list.tensors.device)
        std = torch.as_tensor(t.image_std, dtype=image_list.tensors.dtype, device=image_list.tensors.device)
        images = image_list.tensors * std[:, None, None] + mean[:, None, None]
        return self.tower(images, boxes)

    @torch.no_grad()
    def tower_region_features(self, images: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """The tower's features [sum N_i, F] of boxes [N_i, 4] (xyxy, original pixels) of
        each image, read as detection reads them (`vild.training.tower_head` caches these)."""
        if self.tower is None:
            raise ValueError("this detector has no tower (config.image_head_input is 'roi')")
        image_list, _, original_sizes = self._preprocess(images, None)
        boxes = [resize_boxes(b.to(image_list.tensors.device, torch.float32), list(o), list(s))
                 for b, o, s in zip(boxes, original_sizes, image_list.image_sizes)]
        return self._tower_features(image_list, boxes)

    def check_text_embeddings(self, text_embeddings):
        """[C, D] text embeddings checked against the model and moved to its device/dtype."""
        if text_embeddings is None:
            return None
        if text_embeddings.dim() != 2 or text_embeddings.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"text_embeddings must be [C, {self.config.embed_dim}], got {tuple(text_embeddings.shape)}"
            )
        if text_embeddings.shape[0] == 0:
            raise ValueError("text_embeddings is empty: give at least one category")
        return text_embeddings.to(self.roi_heads.background.device, self.roi_heads.background.dtype)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        images: list[torch.Tensor],
        text_embeddings: torch.Tensor | None = None,
        targets: list[dict] | None = None,
        *,
        base_mask: torch.Tensor | None = None,
    ) -> DetectorOutput:
        """Detections in eval mode; losses whenever targets are given (train or eval mode).

        base_mask [C] bool: categories seen in training, used by ViLD-ensemble's weighting.
        """
        if self.training and targets is None:
            raise ValueError("training mode needs targets")
        text_embeddings = self.check_text_embeddings(text_embeddings)
        image_list, targets_t, original_sizes = self._preprocess(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, proposal_scores, losses = self._propose(image_list, features, targets_t)
        sizes = image_list.image_sizes
        if targets_t is not None:
            tower_distill = None
            if self.tower is not None and self.config.uses_distillation:
                tower_distill = self._tower_features(
                    image_list, [t.get("distill_boxes", p.new_zeros(0, 4)) for t, p in zip(targets_t, proposals)])
            losses.update(self.roi_heads.losses(features, proposals, sizes, targets_t, text_embeddings,
                                                tower_distill))
        detections = []
        if not self.training:
            if text_embeddings is None:
                raise ValueError("detection needs text_embeddings [C, D] for the vocabulary")
            batch = self._region_batch(image_list, features, proposals, proposal_scores, original_sizes)
            probs = [
                self.roi_heads.class_probabilities(r.embeddings, r.image_embeddings, text_embeddings, base_mask)
                for r in batch.regions
            ]
            detections = self.detect_from_probabilities(batch, probs)
        proposals = [resize_boxes(p, list(s), list(o)) for p, s, o in zip(proposals, sizes, original_sizes)]
        return DetectorOutput(
            detections=detections, losses=losses, proposals=proposals, proposal_scores=proposal_scores
        )

    def _region_batch(self, image_list, features, proposals, proposal_scores, original_sizes) -> "RegionBatch":
        sizes = image_list.image_sizes
        outputs = self.roi_heads.region_outputs(features, proposals, sizes)
        if self.tower is not None:
            # the teacher embeds the refined boxes in CLIP on crops; the tower head reads them too
            read = [b for b, _, _ in outputs] if self.config.tower_reads == "refined" else proposals
            tower = self.roi_heads.tower_embeddings(self._tower_features(image_list, read))
            tower = tower.split([len(r) for r in read])
            if self.config.tower_scores_text:  # ViLD's one head: the tower's embeddings are the regions'
                outputs = [(b, t, None) for (b, _, _), t in zip(outputs, tower)]
            else:
                outputs = [(b, e, t) for (b, e, _), t in zip(outputs, tower)]
        regions = [
            Regions(boxes=b, objectness=o, embeddings=e, image_embeddings=ie)
            for (b, e, ie), o in zip(outputs, proposal_scores)
        ]
        return RegionBatch(features, list(sizes), list(original_sizes), regions)

    @torch.no_grad()
    def regions(self, images: list[torch.Tensor], *, precision: str = "fp32") -> "RegionBatch":
        """Every proposal's refined box and embeddings, before classification (eval mode).

        Scoring methods (`vild.model.methods`) classify these and `detect_from_probabilities`
        finishes; `vild.model.predict` is the path that strings them together.
        precision "bf16" runs the network under autocast (boxes stay fp32).
        """
        with precision_context(self.roi_heads.background.device, precision):
            image_list, _, original_sizes = self._preprocess(images, None)
            features = self.backbone(image_list.tensors)
            proposals, scores, _ = self._propose(image_list, features, None)
            return self._region_batch(image_list, features, proposals, scores, original_sizes)

    @torch.no_grad()
    def detect_from_probabilities(
        self,
        batch: "RegionBatch",
        probs: list[torch.Tensor],
        *,
        threshold: float | None = None,
        max_detections: int | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
        class_names=None,
        output_device: str | torch.device | None = None,
        precision: str = "fp32",
        batched: bool | None = None,
        max_mask_bytes: int | None = None,
    ) -> list[Detections]:
        """Each image's regions scored by `probs` [P, C] -> `Detections`: class-aware NMS
        (`vild.model.postprocess`, batched on accelerators), masks, the one finish.

        threshold / max_detections: default the config's; image_sizes: the images before
        thin-image padding (default: the sizes the network was given); output_device: where
        the detections go (None: the model's device); max_mask_bytes: each image keeps only
        its best detections whose pasted masks fit in this many bytes (a warning says so),
        decided before the mask head runs (None: no bound).
        """
        cfg = with_limits(self.config, threshold=threshold, max_detections=max_detections)
        picks, masks = self.select_and_mask(batch, probs, cfg, precision=precision, batched=batched,
                                            max_mask_bytes=max_mask_bytes)
        image_sizes = image_sizes or batch.original_sizes
        detections = []
        for i, ((boxes, scores, labels, index), m) in enumerate(zip(picks, masks)):
            r = batch.regions[i]
            detections.append(finish_detections(
                boxes, scores, labels, m, r.embeddings[index],
                r.image_embeddings[index] if r.image_embeddings is not None else None,
                input_size=batch.sizes[i], padded_size=batch.original_sizes[i],
                image_size=image_sizes[i], class_names=class_names, output_device=output_device,
                batched=batched, max_mask_bytes=max_mask_bytes,
            ))
        return detections

    @torch.no_grad()
    def select_and_mask(self, batch: "RegionBatch", probs: list[torch.Tensor], config: ViLDConfig, *,
                        precision: str = "fp32", batched: bool | None = None,
                        max_mask_bytes: int | None = None) -> tuple[list[tuple], list]:
        """Detection up to `finish_detections`: class-aware NMS over each image's regions
        scored by `probs` [P, C] (limits from `config`), then the mask head on what is kept.
        -> (per image (boxes [K, 4] in the resized input, scores [K], labels [K], region index
        [K]), per image mask probabilities [K, M, M] or None). Shared by
        `detect_from_probabilities` and the exported graph (`vild.model.graph`)."""
        # NMS in fp32/fp64 even inside a caller's autocast (which would cast its boxes down)
        with torch.autocast(self.roi_heads.background.device.type, enabled=False):
            picks = select_detections_batch([r.boxes.float() for r in batch.regions],
                                            [p.float() for p in probs], config, batched=batched)
        if self.config.with_masks and max_mask_bytes is not None:
            limits = [mask_limit(config.detections_per_image, size, max_mask_bytes) for size in batch.original_sizes]
            picks = [tuple(t[:k] for t in p) for p, k in zip(picks, limits)]
        masks = [None] * len(picks)
        if self.config.with_masks:
            with precision_context(self.roi_heads.background.device, precision):
                masks = [m[:, 0] for m in self.roi_heads.predict_masks(
                    batch.features, [p[0] for p in picks], batch.sizes)]
        return picks, masks

    @torch.no_grad()
    def propose(self, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """RPN proposals per image: (boxes [P, 4] xyxy in original pixels, objectness [P]).

        Always runs with test-time settings (eval mode), whatever mode the module is in.
        """
        was_training = self.training
        self.eval()
        try:
            image_list, _, original_sizes = self._preprocess(images, None)
            features = self.backbone(image_list.tensors)
            boxes, scores, _ = self._propose(image_list, features, None)
        finally:
            self.train(was_training)
        return [
            (resize_boxes(b, list(s), list(o)), sc)
            for b, sc, s, o in zip(boxes, scores, image_list.image_sizes, original_sizes)
        ]


def build_detector(config: ViLDConfig) -> ViLDDetector:
    return ViLDDetector(config)


class _Transform(GeneralizedRCNNTransform):
    """torchvision's transform, normalising after resizing instead of before: the same values
    (bilinear weights sum to 1, so resizing commutes with the per-channel affine map, up to
    float rounding), without two full-size float copies of an image that comes in at full
    size (a 16-megapixel image is 200 MB of floats; the network sees 1024 px at most)."""

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(f"images must be float tensors in 0..1, got {image.dtype}")
        return image  # normalised in resize(), once small

    def resize(self, image, target=None):
        image, target = super().resize(image, target)
        return super().normalize(image), target
