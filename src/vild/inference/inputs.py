"""What `Detector` takes and keeps: encoded vocabularies, cached image regions, and the checks
that turn a user's images, vocabulary and post-processing settings into them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vild.errors import VildError


@dataclass(frozen=True)
class Vocabulary:
    """An encoded vocabulary: display names, text embeddings [C, D] (on the model's device),
    base flags [C] (categories labelled in the model's training) and optional category ids."""

    names: tuple[str, ...]
    embeddings: torch.Tensor
    base: torch.Tensor
    category_ids: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True, eq=False)
class ImageRegions:
    """One image's regions, kept so that new text can be scored against them with a matrix
    product (`Detector.query`), without running the network again.

    boxes [P, 4] xyxy pixels of the original image; objectness [P]; embeddings [P, D] (text
    head); image_embeddings [P, D] (ViLD-ensemble's distillation head) or None;
    crop_embeddings [P, D] (the teacher's crops, CLIP methods) or None; masks [P, M, M]
    class-agnostic mask probabilities inside each box, or None. input_boxes / input_size /
    padded_size: the same boxes in the network's resized input, for post-processing that is
    exactly `detect`'s; clip_scale: the teacher's logit scale (CLIP methods).
    """

    boxes: torch.Tensor
    objectness: torch.Tensor
    embeddings: torch.Tensor
    image_embeddings: torch.Tensor | None
    crop_embeddings: torch.Tensor | None
    masks: torch.Tensor | None
    image_size: tuple[int, int]
    input_boxes: torch.Tensor
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    method: str
    model_id: int = 0
    clip_scale: float = 100.0

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def class_names(vocab: Vocabulary, attrs: Vocabulary | None) -> tuple[str, ...]:
    """Label names: the vocabulary's, or "attribute name" for every (name, attribute) pair."""
    if attrs is None:
        return tuple(vocab.names)
    return tuple(f"{a} {v}" for v in vocab.names for a in attrs.names)


def check_post(threshold, max_detections) -> None:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise VildError(f"threshold must be a number in 0..1, got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:
        raise VildError(f"threshold must be in 0..1, got {threshold!r}")
    if not isinstance(max_detections, int) or isinstance(max_detections, bool) or max_detections < 0:
        raise VildError(f"max_detections must be an integer >= 0, got {max_detections!r}")


def as_image_list(images) -> list:
    """One image or a collection of images -> a list of single images."""
    import numpy as np

    if isinstance(images, (list, tuple)):
        if not images:
            raise VildError("no images given")
        return list(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]


def is_collection(x) -> bool:
    if isinstance(x, (str, bytes, bytearray, dict, torch.Tensor)):
        return False
    try:
        iter(x)
    except TypeError:
        return False
    return True


def vocabulary_from_string(text: str):
    from vild.inference.vocabularies import resolve_vocabulary
    from vild.text.vocab import parse_vocab_string

    if "," in text:
        return parse_vocab_string(text), None
    named = resolve_vocabulary(text)
    return named.entries, named.category_ids
