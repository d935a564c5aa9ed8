"""Detection datasets in LVIS v1 / COCO json format: images folder + annotation json.

One item is `(image, target)`:
    image   FloatTensor [3, H, W], RGB in 0..1
    target  dict with
        boxes     FloatTensor [N, 4], xyxy in pixels
        labels    LongTensor [N], index into `dataset.category_ids` (0..C-1)
        masks     ByteTensor [N, H, W] (0/1), only when `with_masks=True`
        image_id  int
        orig_size (H, W) of the image as stored on disk
      and, with a region store (ViLD-image distillation targets),
        distill_boxes       FloatTensor [P, 4], xyxy in pixels (P = 0 if the store lacks the image)
        distill_embeddings  FloatTensor [P, D], L2-normalised teacher embeddings
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from vild.data.images import load_image
from vild.errors import VildError
from vild.io import load_json

__all__ = [
    "DetectionDataset",
    "collate",
    "load_image",
    "load_annotation_file",
    "decode_segmentation",
]

Target = dict[str, Any]


# images: decoded by `vild.data.images.load_image`, the decoder `vild detect` and `vild serve`
# use too (alpha on white, 16-bit / 65535).


# ----------------------------------------------------------------------------- masks


def decode_segmentation(segmentation: Any, height: int, width: int,
                        bbox_xyxy: Sequence[float] | None = None) -> np.ndarray:
    """COCO segmentation (polygons, compressed or uncompressed RLE) -> uint8 array [H, W].

    A missing or unusable segmentation falls back to the filled box when `bbox_xyxy` is given.
    """
    from pycocotools import mask as mask_utils

    rle = None
    if isinstance(segmentation, list):
        polys = [
            [float(v) for v in p] for p in segmentation
            if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0
        ]
        if polys:
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        counts = segmentation["counts"]
        size = [int(v) for v in segmentation.get("size", (height, width))]
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_utils.frPyObjects({"counts": counts, "size": size}, size[0], size[1])
        else:
            if isinstance(counts, str):
                counts = counts.encode("ascii")
            rle = {"counts": counts, "size": size}
        if tuple(size) != (height, width):
            raise VildError(f"RLE size {size} does not match image size {(height, width)}")
    if rle is not None:
        with warnings.catch_warnings():  # pycocotools + numpy 2: a harmless copy= deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    if bbox_xyxy is not None:
        x1, y1, x2, y2 = bbox_xyxy
        mask[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = 1
    return mask


# ----------------------------------------------------------------------------- annotations


def load_annotation_file(annotation_file: str | os.PathLike | dict) -> dict:
    """LVIS/COCO json path (or an already-loaded dict) -> dict with images/annotations/categories."""
    data = annotation_file if isinstance(annotation_file, dict) else load_json(annotation_file)
    if not isinstance(data, dict) or "images" not in data:
        raise VildError(f"{annotation_file}: not an LVIS/COCO annotation file (no 'images')")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    return data


def _image_relpaths(info: dict) -> list[str]:
    """Candidate paths of an image relative to the images folder.

    COCO has `file_name`; LVIS v1 only has `coco_url` (".../train2017/000000391895.jpg"),
    whose images live in `<root>/train2017/` or `<root>/val2017/` (or directly in the folder).
    """
    if info.get("file_name"):
        return [str(info["file_name"])]
    url = info.get("coco_url") or info.get("url")
    if url:
        parts = str(url).rstrip("/").split("/")
        out = []
        if len(parts) >= 2:
            out.append(f"{parts[-2]}/{parts[-1]}")
        out.append(parts[-1])
        return out
    raise VildError(f"image {info.get('id')} has neither file_name nor coco_url")


class DetectionDataset(torch.utils.data.Dataset):
    """LVIS v1 / COCO json + images folder -> `(image, target)` items (see module docstring).

    `category_ids` fixes the label order (label = index in it); annotations of other categories
    are dropped, so training on base categories works from the all-annotations file too.
    `None` = every category of the json, sorted by id. Crowd annotations and boxes narrower or
    shorter than 1 px are skipped. Images without annotations are kept (empty targets).

    `region_store`: a `vild.regions.RegionStore` or its folder; adds `distill_boxes` and
    `distill_embeddings`. Images missing from the store get P = 0 unless `strict_regions`.
    `region_weights`: {image id: [P] per-proposal loss weights} (`vild.regions.rarity`); adds
    `distill_weights`.
    `skip_labelled_parts` (low, high): distilled proposals whose best IoU with a labelled box
    lies in [low, high) are left out, parts and loose boxes of labelled objects that the
    classification loss calls background (docs/distillation.md section 27); None keeps all.
    `transform(image, target) -> (image, target)` is applied last.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        annotation_file: str | os.PathLike | dict,
        *,
        category_ids: Sequence[int] | None = None,
        region_store: Any = None,
        region_weights: dict[int, torch.Tensor] | None = None,
        transform: Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]] | None = None,
        with_masks: bool = True,
        strict_regions: bool = False,
        skip_labelled_parts: tuple[float, float] | None = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = None if isinstance(annotation_file, dict) else Path(annotation_file)
        data = load_annotation_file(annotation_file)
        self.transform = transform
        self.with_masks = bool(with_masks)
        self.strict_regions = bool(strict_regions)
        if skip_labelled_parts is not None and not 0 <= skip_labelled_parts[0] < skip_labelled_parts[1] <= 1:
            raise VildError(f"skip_labelled_parts is an IoU range 0 <= low < high <= 1, got {skip_labelled_parts}")
        self.skip_labelled_parts = skip_labelled_parts

        cats_by_id = {int(c["id"]): c for c in data["categories"]}
        if category_ids is None:
            ids = sorted(cats_by_id)
        else:
            ids = [int(c) for c in category_ids]
            if len(set(ids)) != len(ids):
                raise VildError("category_ids contains duplicates")
            unknown = [c for c in ids if c not in cats_by_id]
            if unknown and cats_by_id:
                raise VildError(
                    f"category ids not in {self.annotation_file or 'the annotations'}: "
                    f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
                )
        self.category_ids: list[int] = ids
        self.categories: list[dict] = [cats_by_id.get(c, {"id": c, "name": str(c)}) for c in ids]
        self.category_id_to_label: dict[int, int] = {c: i for i, c in enumerate(ids)}

        self.images: list[dict] = list(data["images"])
        self.image_ids: list[int] = [int(im["id"]) for im in self.images]
        if len(set(self.image_ids)) != len(self.image_ids):
            raise VildError("duplicate image ids in the annotation file")
        self._index_of = {iid: i for i, iid in enumerate(self.image_ids)}
        per_image: list[list[dict]] = [[] for _ in self.images]
        for ann in data["annotations"]:
            idx = self._index_of.get(int(ann["image_id"]))
            if idx is None or int(ann.get("iscrowd", 0)):
                continue
            label = self.category_id_to_label.get(int(ann["category_id"]))
            if label is None:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w < 1.0 or h < 1.0:
                continue
            per_image[idx].append(ann)
        self._annotations = per_image

        self.region_store = None
        if region_store is not None:
            if isinstance(region_store, (str, os.PathLike)):
                from vild.regions.store import RegionStore

                region_store = RegionStore(region_store)
            self.region_store = region_store
        self.region_weights = region_weights

    # -- metadata -------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def category_names(self) -> list[str]:
        return [str(c.get("name", c["id"])) for c in self.categories]

    def __len__(self) -> int:
        return len(self.images)

    def index_of(self, image_id: int) -> int:
        """Image id -> dataset index."""
        try:
            return self._index_of[int(image_id)]
        except KeyError:
            raise VildError(f"image id {image_id} is not in the dataset") from None

    def annotations(self, index: int) -> list[dict]:
        """The kept (non-crowd, non-degenerate, selected-category) raw annotations of one image."""
        return list(self._annotations[index])

    def image_category_ids(self) -> list[set[int]]:
        """Per image (dataset order): the set of kept category ids; input to repeat factors."""
        return [{int(a["category_id"]) for a in anns} for anns in self._annotations]

    def image_path(self, index: int) -> Path:
        """Path of the image file (the first candidate that exists, else the first candidate)."""
        rels = _image_relpaths(self.images[index])
        for rel in rels:
            p = self.images_dir / rel
            if p.is_file():
                return p
        return self.images_dir / rels[0]

    def load_image(self, index: int) -> torch.Tensor:
        """The raw image of item `index`: FloatTensor [3, H, W] in 0..1, no transform."""
        return load_image(self.image_path(index))

    # -- items ----------------------------------------------------------------------------

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        info = self.images[index]
        path = self.image_path(index)
        image = load_image(path)
        h, w = int(image.shape[1]), int(image.shape[2])
        jh, jw = info.get("height"), info.get("width")
        if jh is not None and jw is not None and (int(jh), int(jw)) != (h, w):
            raise VildError(
                f"{path}: image is {w}x{h} (after EXIF orientation) but the annotations say "
                f"{int(jw)}x{int(jh)}"
            )
        target = self._build_target(index, h, w)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def _build_target(self, index: int, h: int, w: int) -> Target:
        anns = self._annotations[index]
        boxes = torch.zeros((len(anns), 4), dtype=torch.float32)
        labels = torch.zeros((len(anns),), dtype=torch.int64)
        for i, ann in enumerate(anns):
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            boxes[i] = torch.tensor([x, y, x + bw, y + bh])
            labels[i] = self.category_id_to_label[int(ann["category_id"])]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        # Boxes that stick out of the image are clipped; what is left must still be >= 1 px.
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1 - 1e-3) & ((boxes[:, 3] - boxes[:, 1]) >= 1 - 1e-3)
        target: Target = {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "image_id": int(self.image_ids[index]),
            "orig_size": (h, w),
        }
        if self.with_masks:
            kept = [a for a, k in zip(anns, keep.tolist()) if k]
            kept_boxes = target["boxes"].tolist()
            if kept:
                masks = np.stack([
                    decode_segmentation(a.get("segmentation"), h, w, box)
                    for a, box in zip(kept, kept_boxes)
                ])
                target["masks"] = torch.from_numpy(masks)
            else:
                target["masks"] = torch.zeros((0, h, w), dtype=torch.uint8)
        if self.region_store is not None:
            target.update(self._distill_targets(index, target["boxes"]))
        return target

    def _distill_targets(self, index: int, labelled_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        image_id = int(self.image_ids[index])
        entry = self.region_store.get(image_id)
        if entry is None:
            if self.strict_regions:
                raise VildError(f"image {image_id} is not in the region store")
            dim = int(getattr(self.region_store, "embed_dim", 0) or 0)
            return {
                "distill_boxes": torch.zeros((0, 4), dtype=torch.float32),
                "distill_embeddings": torch.zeros((0, dim), dtype=torch.float32),
            }
        boxes, _scores, embeddings = entry
        out = {
            "distill_boxes": boxes.to(torch.float32),
            "distill_embeddings": embeddings.to(torch.float32),
        }
        if self.region_weights is not None:
            weights = self.region_weights.get(image_id)
            out["distill_weights"] = torch.ones(len(boxes)) if weights is None else weights.to(torch.float32)
        if self.skip_labelled_parts is not None:
            keep = ~labelled_parts(out["distill_boxes"], labelled_boxes, self.skip_labelled_parts)
            out = {key: value[keep] for key, value in out.items()}
        return out


def labelled_parts(boxes: torch.Tensor, labelled_boxes: torch.Tensor, iou_range: tuple[float, float]) -> torch.Tensor:
    """[P] bool: the boxes [P, 4] whose best IoU with a labelled box [N, 4] (xyxy, one frame)
    lies in [low, high) of `iou_range`, parts and loose boxes of labelled objects
    (`DetectionDataset(skip_labelled_parts=...)`); none where nothing is labelled."""
    if len(labelled_boxes) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    low, high = iou_range
    best = box_iou(boxes.float(), labelled_boxes.float()).max(dim=1).values
    return (best >= low) & (best < high)


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """List of `(image, target)` -> `(list of images, list of targets)` (no padding here)."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets
