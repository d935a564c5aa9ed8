"""DetectionDataset: items, label mapping, masks, empty images, image loading errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from vild.data.detection import DetectionDataset, collate, decode_segmentation, load_image
from vild.errors import VildError


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def make_dataset(root, *, with_file_names: bool = True):
    """Three images: 1 (RGB 40x60, two objects + a crowd + a degenerate box), 2 (grayscale,
    no annotations), 5 (RGBA, one object). Categories listed out of id order."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(images_dir / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(images_dir / "b.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").save(images_dir / "c.png")

    m1 = np.zeros((40, 60), np.uint8)
    m1[5:15, 10:30] = 1  # category 1, compressed RLE
    poly = [40.0, 20.0, 55.0, 20.0, 55.0, 35.0, 40.0, 35.0]  # category 2, square polygon
    m3 = np.zeros((20, 30), np.uint8)
    m3[2:12, 3:9] = 1  # category 3 in image 5
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": _bbox(m1), "segmentation": _rle(m1),
         "area": float(m1.sum()), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40.0, 20.0, 15.0, 15.0],
         "segmentation": [poly], "area": 225.0, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0],
         "segmentation": _rle(m1), "area": 100.0, "iscrowd": 1},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [3.0, 3.0, 0.5, 10.0],
         "segmentation": [[3, 3, 3.5, 3, 3.5, 13]], "area": 2.0, "iscrowd": 0},
        {"id": 5, "image_id": 5, "category_id": 3, "bbox": _bbox(m3), "segmentation": _rle(m3),
         "area": float(m3.sum()), "iscrowd": 0},
    ]
    images = [
        {"id": 1, "file_name": "a.png", "height": 40, "width": 60},
        {"id": 2, "file_name": "b.png", "height": 30, "width": 30},
        {"id": 5, "file_name": "c.png", "height": 20, "width": 30},
    ]
    if not with_file_names:
        for im in images:
            name = im.pop("file_name")
            im["coco_url"] = f"http://images.cocodataset.org/train2017/{name}"
    cats = [
        {"id": 3, "name": "gamma", "synonyms": ["gamma"], "frequency": "r"},
        {"id": 1, "name": "alpha", "synonyms": ["alpha"], "frequency": "f"},
        {"id": 2, "name": "beta", "synonyms": ["beta"], "frequency": "c"},
    ]
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return images_dir, ann_file, {"m1": m1, "m3": m3}


def test_items_shapes_labels_and_masks(tmp_path):
    images_dir, ann_file, masks = make_dataset(tmp_path)
    ds = DetectionDataset(images_dir, ann_file)
    assert len(ds) == 3 and ds.image_ids == [1, 2, 5]
    assert ds.category_ids == [1, 2, 3] and ds.category_names == ["alpha", "beta", "gamma"]
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 40, 60)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["image_id"] == 1 and target["orig_size"] == (40, 60)
    # crowd and the 0.5 px wide box are skipped
    assert target["labels"].tolist() == [0, 1]
    assert target["labels"].dtype == torch.int64
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0], [40.0, 20.0, 55.0, 35.0]]))
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, 40, 60)
    assert torch.equal(target["masks"][0], torch.from_numpy(masks["m1"]))
    poly_mask = target["masks"][1]
    assert poly_mask[25, 45] == 1 and poly_mask[5, 5] == 0
    ys, xs = torch.nonzero(poly_mask, as_tuple=True)
    assert 39 <= int(xs.min()) <= 41 and 53 <= int(xs.max()) <= 55

    # RGBA image: composited on white, as `vild detect` and `vild serve` decode it
    image5, target5 = ds[2]
    rgba = np.asarray(Image.open(images_dir / "c.png"), dtype=np.float32) / 255
    on_white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    torch.testing.assert_close(image5, torch.from_numpy(on_white).permute(2, 0, 1), atol=1 / 255, rtol=0)
    assert torch.equal(target5["masks"][0], torch.from_numpy(masks["m3"]))
    assert target5["labels"].tolist() == [2]


def test_category_subset_and_order(tmp_path):
    images_dir, ann_file, _ = make_dataset(tmp_path)
    ds = DetectionDataset(images_dir, ann_file, category_ids=[2])
    _, t = ds[0]
    assert t["labels"].tolist() == [0] and t["boxes"].shape == (1, 4) and t["masks"].shape[0] == 1
    _, t5 = ds[2]
    assert t5["labels"].numel() == 0 and t5["masks"].shape == (0, 20, 30)

    ds = DetectionDataset(images_dir, ann_file, category_ids=[3, 1])
    assert ds.num_classes == 2 and ds.category_names == ["gamma", "alpha"]
    assert ds[0][1]["labels"].tolist() == [1]
    assert ds[2][1]["labels"].tolist() == [0]
    assert ds.image_category_ids() == [{1}, set(), {3}]

    with pytest.raises(VildError, match="99"):
        DetectionDataset(images_dir, ann_file, category_ids=[1, 99])


def test_empty_image_and_no_masks(tmp_path):
    images_dir, ann_file, _ = make_dataset(tmp_path)
    ds = DetectionDataset(images_dir, ann_file)
    image, t = ds[1]
    assert image.shape == (3, 30, 30)  # grayscale -> 3 channels
    assert torch.equal(image[0], image[1])
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert t["masks"].shape == (0, 30, 30)
    ds = DetectionDataset(images_dir, ann_file, with_masks=False)
    assert "masks" not in ds[0][1]


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    images_dir, ann_file, _ = make_dataset(tmp_path)
    ds = DetectionDataset(images_dir, ann_file)
    (images_dir / "b.png").unlink()
    with pytest.raises(VildError, match="b.png"):
        ds[1]
    (images_dir / "c.png").write_bytes(b"this is not a png")
    with pytest.raises(VildError, match="c.png"):
        ds[2]
    with pytest.raises(VildError, match="nope.json"):
        DetectionDataset(images_dir, tmp_path / "nope.json")


def test_size_mismatch_is_an_error(tmp_path):
    images_dir, ann_file, _ = make_dataset(tmp_path)
    Image.new("RGB", (10, 10)).save(images_dir / "b.png")
    with pytest.raises(VildError, match="b.png"):
        DetectionDataset(images_dir, ann_file)[1]


def test_lvis_coco_url_paths(tmp_path):
    images_dir, ann_file, _ = make_dataset(tmp_path, with_file_names=False)
    ds = DetectionDataset(images_dir, ann_file)  # files directly in the folder
    assert ds[0][0].shape == (3, 40, 60)
    (images_dir / "train2017").mkdir()
    (images_dir / "a.png").rename(images_dir / "train2017" / "a.png")
    assert ds.image_path(0) == images_dir / "train2017" / "a.png"
    assert ds[0][0].shape == (3, 40, 60)


def test_image_modes(tmp_path):
    a16 = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.shape == (3, 12, 16)
    torch.testing.assert_close(img[0], torch.from_numpy(a16.astype(np.float32) / 65535))

    # EXIF orientation 6 (rotate 90 degrees clockwise): a 20x10 (WxH) file shows as 10x20
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape == (3, 20, 10)

    Image.new("P", (5, 4)).save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (3, 4, 5)


def test_decode_segmentation_formats():
    m = np.zeros((8, 9), np.uint8)
    m[1:4, 2:7] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    assert np.array_equal(decode_segmentation(rle, 8, 9), m)  # bytes counts
    assert np.array_equal(decode_segmentation(_rle(m), 8, 9), m)  # str counts
    # uncompressed RLE (column-major run lengths)
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    assert np.array_equal(decode_segmentation({"counts": counts, "size": [8, 9]}, 8, 9), m)
    # no usable segmentation: filled box
    assert decode_segmentation([], 8, 9, [2, 1, 7, 4]).sum() == 15


class _FakeStore:
    embed_dim = 4

    def get(self, image_id):
        if image_id != 1:
            return None
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 25.0]])
        emb = torch.nn.functional.normalize(torch.ones(2, 4), dim=-1)
        return boxes, torch.tensor([0.9, 0.5]), emb


def test_region_store_targets_and_collate(tmp_path):
    images_dir, ann_file, _ = make_dataset(tmp_path)
    ds = DetectionDataset(images_dir, ann_file, region_store=_FakeStore())
    _, t = ds[0]
    assert t["distill_boxes"].shape == (2, 4) and t["distill_embeddings"].shape == (2, 4)
    assert t["distill_embeddings"].dtype == torch.float32
    _, t = ds[1]
    assert t["distill_boxes"].shape == (0, 4) and t["distill_embeddings"].shape == (0, 4)
    strict = DetectionDataset(images_dir, ann_file, region_store=_FakeStore(), strict_regions=True)
    with pytest.raises(VildError, match="region store"):
        strict[1]

    weighted = DetectionDataset(images_dir, ann_file, region_store=_FakeStore(),
                                region_weights={1: torch.tensor([0.25, 4.0], dtype=torch.float64)})
    assert weighted[0][1]["distill_weights"].tolist() == [0.25, 4.0]
    assert weighted[0][1]["distill_weights"].dtype == torch.float32
    assert weighted[1][1]["distill_boxes"].shape == (0, 4) and "distill_weights" not in weighted[1][1]

    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)
    images, targets = next(iter(loader))
    assert [tuple(i.shape) for i in images] == [(3, 40, 60), (3, 30, 30), (3, 20, 30)]
    assert [t["image_id"] for t in targets] == [1, 2, 5]


class _PartsStore(_FakeStore):
    """Image 1's proposals against its labelled boxes [10, 5, 30, 15] and [40, 20, 55, 35]:
    IoU 0 (background), 0.25 (a loose box), 1 and 0.9 (the object itself)."""

    def get(self, image_id):
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 25.0],
                              [10.0, 5.0, 30.0, 15.0], [10.0, 5.0, 28.0, 15.0]])
        emb = torch.nn.functional.normalize(torch.arange(16.0).reshape(4, 4) + 1, dim=-1)
        return boxes, torch.tensor([0.9, 0.8, 0.7, 0.6]), emb


def test_skip_labelled_parts_drops_proposals_in_the_iou_range(tmp_path):
    images_dir, ann_file, _ = make_dataset(tmp_path)
    weights = {1: torch.tensor([1.0, 2.0, 3.0, 4.0])}
    every = DetectionDataset(images_dir, ann_file, region_store=_PartsStore(), region_weights=weights)
    _, t_all = every[0]
    ds = DetectionDataset(images_dir, ann_file, region_store=_PartsStore(), region_weights=weights,
                          skip_labelled_parts=(0.1, 0.5))
    _, t = ds[0]
    kept = [0, 2, 3]  # the loose box (IoU 0.25) goes; background and the object stay
    assert torch.equal(t["distill_boxes"], t_all["distill_boxes"][kept])
    assert torch.equal(t["distill_embeddings"], t_all["distill_embeddings"][kept])
    assert t["distill_weights"].tolist() == [1.0, 3.0, 4.0]
    # a range reaching IoU 0 drops the background proposal too; one above 0.25 keeps all
    assert len(DetectionDataset(images_dir, ann_file, region_store=_PartsStore(),
                                skip_labelled_parts=(0.0, 0.5))[0][1]["distill_boxes"]) == 2
    assert len(DetectionDataset(images_dir, ann_file, region_store=_PartsStore(),
                                skip_labelled_parts=(0.3, 0.5))[0][1]["distill_boxes"]) == 4
    # an image without labelled boxes keeps every proposal
    _, t_empty = ds[1]
    assert len(t_empty["distill_boxes"]) == 4
    with pytest.raises(VildError, match="IoU range"):
        DetectionDataset(images_dir, ann_file, region_store=_PartsStore(), skip_labelled_parts=(0.5, 0.5))


def test_transform_is_applied(tmp_path):
    images_dir, ann_file, _ = make_dataset(tmp_path)

    def half(image, target):
        return image[:, ::2, ::2], {**target, "halved": True}

    ds = DetectionDataset(images_dir, ann_file, transform=half)
    image, t = ds[0]
    assert image.shape == (3, 20, 30) and t["halved"]
