"""Images in, for `embed_regions`: a dataset or (image_id, image | path) items read by index.

Split from `vild.regions.embed` so the DataLoader source can be read (and tested) on its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from vild.errors import VildError


class _ImageSource(torch.utils.data.Dataset):
    """Index -> (index, raw image [3, H, W] in 0..1), from a dataset or (image_id, image) items."""

    def __init__(self, dataset_or_items: Any) -> None:
        if hasattr(dataset_or_items, "image_ids") and hasattr(dataset_or_items, "load_image"):
            self.dataset = dataset_or_items
            self.items = None
            self.image_ids = [int(i) for i in dataset_or_items.image_ids]
        else:
            items = dataset_or_items
            if not isinstance(items, Sequence):
                items = list(items)
            for item in items[:1]:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise TypeError(
                        "embed_regions needs a DetectionDataset (image_ids + load_image) or a "
                        "sequence of (image_id, image tensor [3,H,W] | path) pairs"
                    )
            self.dataset = None
            self.items = items
            self.image_ids = [int(item[0]) for item in items]
        if len(set(self.image_ids)) != len(self.image_ids):
            raise VildError("duplicate image ids in the images to embed")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        if self.dataset is not None:
            image = self.dataset.load_image(index)
        else:
            image = self.items[index][1]
            if isinstance(image, (str, os.PathLike)):
                from vild.data.images import load_image

                image = load_image(image)
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise VildError(f"image {self.image_ids[index]}: expected a tensor [3, H, W]")
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        return index, image.float()


def _collate_list(batch: list) -> list:
    return batch
