"""Post-processing branches: the batched one (accelerators) and the per-image one (CPU) give the
same detections; both pastes agree with torchvision's `paste_masks_in_image`. The batched
branch runs here on CPU tensors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from vild.model import ViLDConfig
from vild.model.postprocess import finish_detections, paste_masks, select_detections_batch


def _image(g, num_regions, num_classes, size=200.0):
    xy = torch.rand(num_regions, 2, generator=g) * size * 0.8
    boxes = torch.cat([xy, xy + 4 + torch.rand(num_regions, 2, generator=g) * size * 0.3], dim=1)
    # a few regions with two labels' worth of mass, and many near-duplicates of a box
    boxes[num_regions // 2:] = boxes[: num_regions - num_regions // 2] + torch.rand(
        num_regions - num_regions // 2, 4, generator=g)
    probs = torch.softmax(torch.randn(num_regions, num_classes, generator=g) * 3, dim=1)
    return boxes, probs


@pytest.mark.parametrize("num_classes", [1, 7, 300, 5000])
def test_batched_and_per_image_selection_agree(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    images = [_image(g, n, num_classes) for n in (150, 0, 40, 300)]
    cfg = ViLDConfig(detections_per_image=100, pre_nms_topk=2000, score_thresh=0.001)
    boxes, probs = [i[0] for i in images], [i[1] for i in images]
    per_image = select_detections_batch(boxes, probs, cfg, batched=False)
    batched = select_detections_batch(boxes, probs, cfg, batched=True)
    assert len(per_image) == len(batched) == 4
    assert sum(len(p[0]) for p in per_image) > 50
    for (b1, s1, l1, r1), (b2, s2, l2, r2) in zip(per_image, batched):
        assert torch.equal(l1, l2) and torch.equal(r1, r2)
        assert torch.equal(s1, s2) and torch.equal(b1, b2)
        assert bool((s1[:-1] >= s1[1:]).all())  # best first
        # class-aware NMS: no two kept boxes of one label overlap beyond the threshold
        from torchvision.ops import box_iou

        iou = box_iou(b1, b1)
        same = (l1[:, None] == l1[None, :]) & ~torch.eye(len(l1), dtype=torch.bool)
        assert float(iou[same].max()) <= cfg.nms_thresh if same.any() else True


def test_selection_respects_limits_and_empty_inputs():
    g = torch.Generator().manual_seed(1)
    boxes, probs = _image(g, 80, 20)
    for batched in (False, True):
        cfg = ViLDConfig(detections_per_image=5, pre_nms_topk=50, score_thresh=0.0)
        (b, s, lab, r), = select_detections_batch([boxes], [probs], cfg, batched=batched)
        assert len(b) == 5 and torch.equal(b, boxes[r]) and torch.equal(s, probs[r, lab])
        high = ViLDConfig(score_thresh=1.0)
        assert len(select_detections_batch([boxes], [probs], high, batched=batched)[0][0]) == 0
        none = ViLDConfig(detections_per_image=0)
        assert len(select_detections_batch([boxes], [probs], none, batched=batched)[0][0]) == 0


def _blob_masks(g, n, m=28):
    """Smooth mask probabilities: a soft ellipse with a random centre and radii per mask."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, m), torch.linspace(0, 1, m), indexing="ij")
    c = 0.3 + 0.4 * torch.rand(n, 2, generator=g)
    r = 0.2 + 0.25 * torch.rand(n, 2, generator=g)
    d = ((ys[None] - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2 + \
        ((xs[None] - c[:, 1, None, None]) / r[:, 1, None, None]) ** 2
    return torch.sigmoid(8 * (1 - d))


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    return (a & b).sum(1) / (a | b).sum(1).clamp_min(1)


def test_paste_branches_match_torchvision():
    g = torch.Generator().manual_seed(0)
    h, w, n = 180, 240, 40
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 60.0, h - 60.0])
    boxes = torch.cat([xy, xy + 25 + torch.rand(n, 2, generator=g) * 120], dim=1)
    boxes[0] = torch.tensor([-10.0, -8.0, 60.0, 50.0])  # partly outside the image
    boxes[1] = torch.tensor([200.0, 150.0, 290.0, 230.0])
    masks = _blob_masks(g, n)
    reference = paste_masks_in_image(masks[:, None], boxes, (h, w))[:, 0]
    per_box = paste_masks(masks, boxes, (h, w), batched=False)
    batched = paste_masks(masks, boxes, (h, w), batched=True)
    chunked = paste_masks(masks, boxes, (h, w), batched=True, chunk_bytes=h * w * 12 * 7)
    assert per_box.shape == batched.shape == (n, h, w)
    assert torch.allclose(per_box, reference, atol=1e-5)  # torchvision's arithmetic, per window
    assert torch.allclose(batched, reference, atol=1e-4)  # the same geometry by grid_sample
    assert torch.equal(batched, chunked)
    ious = _iou(batched >= 0.5, reference >= 0.5)
    assert float(ious.min()) >= 0.99, ious
    assert paste_masks(masks[:0], boxes[:0], (h, w)).shape == (0, h, w)


def test_finish_crops_padding_and_hands_back():
    masks = _blob_masks(torch.Generator().manual_seed(2), 3, m=14)
    boxes = torch.tensor([[2.0, 1.0, 30.0, 12.0], [10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 8.0, 6.0]])
    emb = torch.randn(3, 8)
    # the network saw a 64 x 64 input of a 32 x 16 image padded to 32 x 32
    det = finish_detections(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([2, 0, 1]), masks, emb, None,
                            input_size=(64, 64), padded_size=(32, 32), image_size=(32, 16),
                            class_names=["a", "b", "c"], output_device="cpu")
    assert det.image_size == (32, 16) and det.masks.shape == (3, 32, 16)
    assert bool((det.boxes[:, 2] <= 16).all()) and det.boxes[0].tolist() == pytest.approx([1.0, 0.5, 15.0, 6.0])
    assert det.label_names == ["c", "a", "b"] and det.image_embeddings is None
    # a box wholly inside the padding is dropped
    off = finish_detections(torch.tensor([[40.0, 2.0, 60.0, 10.0]]), torch.tensor([0.5]), torch.tensor([0]),
                            None, torch.randn(1, 8), None, input_size=(64, 64), padded_size=(32, 32),
                            image_size=(32, 16))
    assert len(off) == 0


@pytest.mark.parametrize("batched", [False, True])
def test_finish_keeps_the_best_detections_whose_masks_fit(batched, caplog):
    """max_mask_bytes (issue 13's bound, kept in the one finish): fewer detections, the best
    ones, a warning, and pasted masks within the bound, in both pasting branches."""
    g = torch.Generator().manual_seed(3)
    h, w, n = 90, 120, 12
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 40.0, h - 40.0])
    boxes = torch.cat([xy, xy + 20 + torch.rand(n, 2, generator=g) * 20], dim=1)
    masks, emb = _blob_masks(g, n), torch.randn(n, 8, generator=g)
    scores, labels = torch.linspace(0.9, 0.1, n), torch.arange(n) % 3
    args = dict(input_size=(h, w), padded_size=(h, w), image_size=(h, w), batched=batched)
    full = finish_detections(boxes, scores, labels, masks, emb, None, **args)
    with caplog.at_level("WARNING"):
        capped = finish_detections(boxes, scores, labels, masks, emb, None, max_mask_bytes=5 * h * w * 4 + 7,
                                   **args)
    assert "lowered from 12 to 5" in caplog.text
    assert len(capped) == 5 and capped.masks.numel() * 4 <= 5 * h * w * 4
    assert torch.equal(capped.boxes, full.boxes[:5]) and torch.equal(capped.scores, full.scores[:5])
    assert torch.equal(capped.masks, full.masks[:5]) and torch.equal(capped.embeddings, full.embeddings[:5])
    # a bound that fits every mask changes nothing and says nothing
    caplog.clear()
    same = finish_detections(boxes, scores, labels, masks, emb, None, max_mask_bytes=n * h * w * 4, **args)
    assert torch.equal(same.masks, full.masks) and "lowered" not in caplog.text


def test_both_branches_give_the_same_detections_end_to_end():
    """The bundled model on its example images, one batch, the batched (accelerator) branch
    forced on CPU tensors against the per-image one: same boxes, labels and scores; masks
    IoU >= 0.99 (they differ only by grid_sample vs interpolate rounding)."""
    from pathlib import Path

    import vild
    from vild.data.images import load_image
    from vild.model.predict import predict
    from vild.training.checkpoint import load_model, load_vocabulary

    torch.set_num_threads(1)
    assets = Path(vild.__file__).parent / "assets"
    folder = assets / "models" / "shapeworld-vild-ensemble"
    model = load_model(folder)
    vocab, text = load_vocabulary(folder)
    base = torch.tensor(vocab["base"])
    images = [load_image(p) for p in sorted((assets / "examples").glob("*.png"))]
    per_image = predict(model, images, text, base_mask=base, batched=False)
    batched = predict(model, images, text, base_mask=base, batched=True)
    assert sum(len(d) for d in per_image) > 100
    for a, b in zip(per_image, batched):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.boxes, b.boxes)
        keep = (a.masks >= 0.5).flatten(1).any(1)  # masks with pixels in both
        assert float(_iou(a.masks[keep] >= 0.5, b.masks[keep] >= 0.5).min()) >= 0.99
