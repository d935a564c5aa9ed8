"""Joint transforms: flip, large-scale jitter, eval resize; boxes/masks/distill boxes together."""

from __future__ import annotations

import pytest
import torch

from vild.data.transforms import (
    EvalTransform,
    LargeScaleJitter,
    RandomHorizontalFlip,
    TrainTransform,
    boxes_to_original,
    filter_instances,
    hflip,
    resize_crop_pad,
)


def make_sample(h: int = 48, w: int = 64):
    """Image with three rectangular objects whose boxes are exactly their masks' extents, plus
    distillation boxes with distinguishable embeddings (row i is one-hot-ish on dim i)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, h, w, generator=g)
    rects = [(4, 6, 20, 30), (30, 10, 60, 20), (50, 30, 62, 46)]  # x1, y1, x2, y2 (exclusive)
    masks = torch.zeros(len(rects), h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        masks[i, y1:y2, x1:x2] = 1
    target = {
        "boxes": torch.tensor(rects, dtype=torch.float32),
        "labels": torch.tensor([3, 1, 2]),
        "masks": masks,
        "image_id": 7,
        "orig_size": (h, w),
        "distill_boxes": torch.tensor([[0.0, 0.0, 10.0, 8.0], [20.0, 20.0, 63.0, 47.0],
                                       [55.0, 2.0, 64.0, 12.0], [1.0, 30.0, 30.0, 46.0]]),
        "distill_embeddings": torch.nn.functional.normalize(torch.eye(4, 8) + 0.01, dim=-1),
        "distill_weights": torch.tensor([0.5, 1.0, 2.0, 4.0]),
    }
    return image, target


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def clone_pair(image, target):
    return image.clone(), {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in target.items()}


def assert_same_pair(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        if isinstance(a[1][k], torch.Tensor):
            assert torch.equal(a[1][k], b[1][k]), k
        else:
            assert a[1][k] == b[1][k], k


def test_hflip_moves_boxes_masks_and_distill_boxes():
    image, target = make_sample()
    before = clone_pair(image, target)
    fimage, ft = hflip(image, target)
    assert_same_pair((image, target), before)  # inputs untouched
    w = image.shape[-1]
    assert torch.equal(fimage, image.flip(-1))
    for i in range(3):
        torch.testing.assert_close(ft["boxes"][i], mask_box(ft["masks"][i]))
    assert ft["distill_boxes"][0].tolist() == [w - 10.0, 0.0, w - 0.0, 8.0]
    assert torch.equal(ft["distill_embeddings"], target["distill_embeddings"])
    assert ft["labels"].tolist() == [3, 1, 2]
    assert_same_pair(hflip(fimage, ft), (image, target))

    always = RandomHorizontalFlip(1.0)
    never = RandomHorizontalFlip(0.0)
    assert torch.equal(always(image, target)[0], fimage)
    assert torch.equal(never(image, target)[0], image)


@pytest.mark.parametrize("seed", range(12))
def test_large_scale_jitter_keeps_everything_consistent(seed):
    image, target = make_sample()
    before = clone_pair(image, target)
    out_size = 40
    t = TrainTransform(out_size, scale_range=(0.3, 2.0), hflip_prob=0.5)
    g = torch.Generator().manual_seed(seed)
    img, tt = t(image, target, generator=g)
    assert_same_pair((image, target), before)
    assert img.shape == (3, out_size, out_size)
    n = tt["boxes"].shape[0]
    assert tt["labels"].shape == (n,) and tt["masks"].shape == (n, out_size, out_size)
    vh, vw = tt["valid_size"]
    b = tt["boxes"]
    assert bool((b[:, 0] >= 0).all() and (b[:, 1] >= 0).all())
    assert bool((b[:, 2] <= vw).all() and (b[:, 3] <= vh).all())
    assert bool(((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all())
    for i in range(n):
        assert tt["masks"][i].any()
        # a box stays glued to its own mask (nearest resize: within a pixel or so)
        tol = 1.0
        assert torch.allclose(b[i], mask_box(tt["masks"][i]), atol=tol), (b[i], mask_box(tt["masks"][i]))
    # labels still identify the right objects: the original label order is preserved
    orig_labels = target["labels"].tolist()
    kept = tt["labels"].tolist()
    assert kept == [lab for lab in orig_labels if lab in kept]
    db = tt["distill_boxes"]
    assert db.shape[0] == tt["distill_embeddings"].shape[0]
    assert bool((db[:, 2] <= vw).all() and (db[:, 3] <= vh).all() and (db >= 0).all())
    assert bool(((db[:, 2] - db[:, 0]) >= 1).all() and ((db[:, 3] - db[:, 1]) >= 1).all())
    # each kept embedding is one of the originals, in order
    idx = [int(torch.argmax(e[:4])) for e in tt["distill_embeddings"]]
    assert idx == sorted(idx)
    assert tt["distill_weights"].tolist() == [[0.5, 1.0, 2.0, 4.0][i] for i in idx]  # weights stay with their boxes
    # the padding is padding
    if vh < out_size:
        assert float(img[:, vh:].abs().sum()) == 0.0


def test_jitter_is_deterministic_given_a_generator():
    image, target = make_sample()
    t = TrainTransform(32, scale_range=(0.5, 1.5))
    a = t(image, target, generator=torch.Generator().manual_seed(3))
    b = t(image, target, generator=torch.Generator().manual_seed(3))
    assert_same_pair(a, b)
    seeded = TrainTransform(32, generator=torch.Generator().manual_seed(3))
    c = seeded(image, target)
    assert_same_pair(a, c)
    torch.manual_seed(5)
    d = t(image, target)
    torch.manual_seed(5)
    e = t(image, target)
    assert_same_pair(d, e)


def test_degenerate_instances_are_dropped_with_masks_and_embeddings():
    image, target = make_sample()
    # crop the right part only: object 0 (x < 20) disappears, object 1 is clipped
    img, t = resize_crop_pad(image, target, resized_size=(48, 64), crop_offset=(0, 24),
                             output_size=(48, 48))
    assert img.shape == (3, 48, 48)
    t = filter_instances(t)
    assert t["labels"].tolist() == [1, 2]
    assert t["masks"].shape == (2, 48, 48)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([6.0, 10.0, 36.0, 20.0]))
    for i in range(2):
        torch.testing.assert_close(t["boxes"][i], mask_box(t["masks"][i]))
    # distill box 0 (x < 10) and 3 (x < 30 -> 6 px wide, kept) ; 0 dropped with its embedding
    assert t["distill_boxes"].shape[0] == 3
    assert torch.equal(t["distill_embeddings"], target["distill_embeddings"][1:])
    assert t["distill_boxes"][2].tolist() == [0.0, 30.0, 6.0, 46.0]

    # an empty visible mask drops the instance even if its box is not degenerate
    t2 = dict(target)
    t2["masks"] = target["masks"].clone()
    t2["masks"][1] = 0
    f = filter_instances(t2)
    assert f["labels"].tolist() == [3, 2] and f["masks"].shape[0] == 2


def test_jitter_can_drop_everything():
    image, target = make_sample()
    jit = LargeScaleJitter(16, scale_range=(0.01, 0.01))  # everything shrinks below 1 px
    img, t = jit(image, target, generator=torch.Generator().manual_seed(0))
    assert img.shape == (3, 16, 16)
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 16, 16)
    assert t["distill_boxes"].shape == (0, 4) and t["distill_embeddings"].shape == (0, 8)


def test_eval_transform_records_scale_and_maps_back():
    image, target = make_sample(h=48, w=64)
    before = clone_pair(image, target)
    img, t = EvalTransform(100)(image, target)
    assert_same_pair((image, target), before)
    assert img.shape == (3, 75, 100)
    assert t["scale"] == (75 / 48, 100 / 64)
    assert t["labels"].tolist() == [3, 1, 2]  # nothing filtered
    torch.testing.assert_close(boxes_to_original(t["boxes"], t), target["boxes"])
    for i in range(3):
        torch.testing.assert_close(t["boxes"][i], mask_box(t["masks"][i]), atol=1.0, rtol=0)
    # deterministic
    assert_same_pair(EvalTransform(100)(image, target), (img, t))
    # no resize needed: output equals input but is a copy
    same, _ = EvalTransform(64)(image, target)
    assert torch.equal(same, image) and same.data_ptr() != image.data_ptr()


def test_boxes_to_original_after_jitter():
    image, target = make_sample()
    jit = LargeScaleJitter(40, scale_range=(1.2, 1.8))
    for seed in range(5):
        _, t = jit(image, target, generator=torch.Generator().manual_seed(seed))
        back = boxes_to_original(t["boxes"], t)
        # fully visible objects map back exactly
        for i, lab in enumerate(t["labels"].tolist()):
            j = target["labels"].tolist().index(lab)
            orig = target["boxes"][j]
            ob = back[i]
            assert bool((ob[:2] >= orig[:2] - 1e-3).all() and (ob[2:] <= orig[2:] + 1e-3).all())


def test_without_masks_or_distill_keys():
    image, target = make_sample()
    slim = {k: v for k, v in target.items() if k in ("boxes", "labels", "image_id")}
    img, t = TrainTransform(24)(image, slim, generator=torch.Generator().manual_seed(1))
    assert set(t) >= {"boxes", "labels", "image_id"} and "masks" not in t
    assert t["boxes"].shape[0] == t["labels"].shape[0]
