"""Typed outputs of the detector: one `Detections` per image, the same type in every mode."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


FIELDS = ("boxes", "scores", "labels", "masks", "embeddings", "image_embeddings")


@dataclass(frozen=True)
class Detections:
    """Detections of one image.

    boxes:      [N, 4] float, xyxy in pixels of the original image
    scores:     [N] float in 0..1
    labels:     [N] int64, index into the vocabulary the detector was called with (0..C-1)
    masks:      [N, H, W] float mask probabilities at image resolution, or None
    embeddings: [N, D] region embeddings (text head; ViLD-image's distillation head), or None
    image_embeddings: [N, D] embeddings of the distillation head (ViLD-ensemble), or None
                (both unit length except a distillation head's with image_head_output "mean")
    image_size: (H, W) of the original image
    class_names: label index -> name (e.g. "red star" with attributes), or None

    Conversions at the edges (`vild.model.convert`): `to_dict()`, `to_coco_results()`,
    `to_supervision()`, `to_hf()`.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    image_size: tuple[int, int]
    masks: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    image_embeddings: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must be [N, 4], got {tuple(self.boxes.shape)}")
        for name in ("scores", "labels", "masks", "embeddings", "image_embeddings"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} rows for {n} boxes")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    @property
    def label_names(self) -> list[str] | None:
        """The name of each detection's label (needs `class_names`), else None."""
        if self.class_names is None:
            return None
        return [self.class_names[int(i)] for i in self.labels.tolist()]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str) -> "Detections":
        moved = {
            name: getattr(self, name).to(device)
            for name in FIELDS
            if getattr(self, name) is not None
        }
        return replace(self, **moved)

    def select(self, keep: torch.Tensor) -> "Detections":
        """Rows selected by a bool mask or index tensor."""
        picked = {
            name: getattr(self, name)[keep]
            for name in FIELDS
            if getattr(self, name) is not None
        }
        return replace(self, **picked)

    @staticmethod
    def empty(image_size: tuple[int, int], *, with_masks: bool = False,
              class_names: tuple[str, ...] | None = None) -> "Detections":
        h, w = image_size
        return Detections(
            boxes=torch.zeros(0, 4),
            scores=torch.zeros(0),
            labels=torch.zeros(0, dtype=torch.int64),
            image_size=(int(h), int(w)),
            masks=torch.zeros(0, h, w) if with_masks else None,
            class_names=class_names,
        )

    # ------------------------------------------------------------ conversions (at the edges)
    def to_dict(self, *, mask_threshold: float = 0.5) -> dict:
        """Plain JSON-able dict: boxes (xyxy px), scores, labels, label_names, class_names,
        image_size, masks as COCO compressed RLE (or None). See `vild.model.convert`."""
        from vild.model.convert import detections_to_dict

        return detections_to_dict(self, mask_threshold=mask_threshold)

    def to_coco_results(self, image_id: int, category_ids=None, *, mask_threshold: float = 0.5) -> list[dict]:
        """COCO results (one dict per detection); `category_ids[label]` is the category id of
        label `label` (default label + 1)."""
        from vild.model.convert import detections_to_coco

        return detections_to_coco(self, image_id, category_ids, mask_threshold=mask_threshold)

    def to_supervision(self, *, mask_threshold: float = 0.5):
        """A `supervision.Detections` (needs the optional extra: pip install 'vild[supervision]')."""
        from vild.model.convert import detections_to_supervision

        return detections_to_supervision(self, mask_threshold=mask_threshold)

    def to_hf(self, *, threshold: float | None = None, top_k: int | None = None) -> list[dict]:
        """The transformers zero-shot-object-detection pipeline's output: a list sorted by score
        of ``{"score": float, "label": str, "box": {"xmin", "ymin", "xmax", "ymax"} (int)}``;
        needs `class_names`."""
        from vild.model.convert import detections_to_hf

        return detections_to_hf(self, threshold=threshold, top_k=top_k)


@dataclass(frozen=True)
class DetectorOutput:
    """What `ViLDDetector.forward` returns, in train and eval mode alike.

    detections: one `Detections` per image (empty list when only losses were asked for)
    losses:     name -> scalar tensor, present whenever targets were given
    proposals:  one [P, 4] xyxy tensor of RPN proposals per image (pixels of the input image)
    proposal_scores: one [P] tensor of RPN objectness (0..1) per image
    """

    detections: list[Detections] = field(default_factory=list)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    proposals: list[torch.Tensor] = field(default_factory=list)
    proposal_scores: list[torch.Tensor] = field(default_factory=list)
