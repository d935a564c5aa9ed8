import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vild.io import config_from_dict, config_to_dict
from vild.model import Detections, DetectorOutput, ViLDConfig, build_detector

from .conftest import make_batch, tiny_config

MODES = ["text", "image", "vild", "ensemble"]


@pytest.mark.parametrize("mode", MODES)
def test_train_losses_finite_and_named(mode, text_embeddings):
    model = build_detector(tiny_config(mode=mode)).train()
    images, targets = make_batch()
    out = model(images, text_embeddings[:2], targets)
    assert isinstance(out, DetectorOutput) and out.detections == []
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_box_reg", "loss_mask"}
    if mode != "image":
        expected.add("loss_classifier")
    if mode != "text":
        expected.add("loss_distill")
    assert set(out.losses) == expected
    assert all(torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()


@pytest.mark.parametrize("mode", MODES)
def test_eval_outputs_typed_per_image(mode, text_embeddings):
    model = build_detector(tiny_config(mode=mode)).eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]
    with torch.no_grad():
        out = model(images, text_embeddings, base_mask=torch.tensor([True, True, False]))
    assert out.losses == {}
    assert len(out.detections) == 2
    for det, img in zip(out.detections, images):
        assert isinstance(det, Detections)
        h, w = img.shape[-2:]
        assert det.image_size == (h, w)
        n = len(det)
        assert n <= 20
        assert det.boxes.shape == (n, 4) and det.scores.shape == (n,) and det.labels.shape == (n,)
        assert det.masks.shape == (n, h, w)
        assert det.embeddings.shape == (n, 16)
        assert (det.image_embeddings is not None) == (mode == "ensemble")
        if n:
            assert det.labels.max() < 3 and det.scores.min() >= 0 and det.scores.max() <= 1
            assert (det.boxes[:, 0] >= 0).all() and (det.boxes[:, 2] <= w).all()
            assert (det.boxes[:, 3] <= h).all()
            assert torch.allclose(det.embeddings.norm(dim=1), torch.ones(n), atol=1e-4)
            assert (det.scores[:-1] >= det.scores[1:]).all()


def test_eval_with_targets_gives_losses_and_detections(text_embeddings):
    torch.manual_seed(0)
    model = build_detector(tiny_config()).eval()
    images, targets = make_batch()
    with torch.no_grad():
        out = model(images, text_embeddings, targets)
        plain = model(images, text_embeddings)
    assert set(out.losses) == {
        "loss_objectness", "loss_rpn_box_reg", "loss_box_reg", "loss_mask", "loss_classifier", "loss_distill"
    }
    assert all(torch.isfinite(v) and v >= 0 for v in out.losses.values())
    # a validation pass returns the very detections a plain inference pass gives
    assert len(out.detections) == 2
    for got, want in zip(out.detections, plain.detections):
        assert len(want) > 0
        assert torch.equal(got.labels, want.labels)
        assert torch.allclose(got.boxes, want.boxes) and torch.allclose(got.scores, want.scores)


def test_loss_decreases_on_a_tiny_batch(text_embeddings):
    torch.manual_seed(0)
    model = build_detector(tiny_config(mode="ensemble")).train()
    images, targets = make_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    history = []
    for _ in range(12):
        torch.manual_seed(1)  # same RoI sampling every step: the loss must fall on fixed data
        loss = sum(model(images, text_embeddings[:2], targets).losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the trainer does
        opt.step()
        history.append(loss.item())
    assert all(map(lambda x: x == x, history))
    assert min(history[-3:]) < 0.8 * history[0]


def test_empty_targets_and_no_distill_boxes(text_embeddings):
    model = build_detector(tiny_config(mode="vild")).train()
    empty = dict(
        boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
        masks=torch.zeros(0, 64, 64, dtype=torch.uint8),
    )
    out = model([torch.rand(3, 64, 64)], text_embeddings, [empty])
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert out.losses["loss_distill"].item() == 0.0
    assert out.losses["loss_mask"].item() == 0.0
    sum(out.losses.values()).backward()


def test_no_proposals_gives_empty_detections(text_embeddings):
    model = build_detector(tiny_config()).eval()
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.fill_(-1e4)  # every anchor scores 0 ...
        model.rpn.score_thresh = 0.5  # ... and is filtered out
        out = model([torch.rand(3, 64, 64)], text_embeddings)
    det = out.detections[0]
    assert len(det) == 0 and det.masks.shape == (0, 64, 64)
    assert out.proposals[0].shape == (0, 4)


def test_vocabulary_of_one(text_embeddings):
    torch.manual_seed(0)
    model = build_detector(tiny_config(mode="ensemble")).eval()
    with torch.no_grad():
        det = model([torch.rand(3, 64, 64)], text_embeddings[:1]).detections[0]
    assert len(det) > 0  # one class still detects; an empty result would prove nothing
    assert (det.labels == 0).all() and det.scores.max() <= 1


def test_vocabulary_changes_without_rebuild(text_embeddings):
    torch.manual_seed(0)
    model = build_detector(tiny_config(mode="text")).eval()
    img = [torch.rand(3, 64, 64)]
    perm = torch.tensor([2, 0, 1])  # row i of the new vocabulary is old row perm[i]
    with torch.no_grad():
        a = model(img, text_embeddings).detections[0]
        b = model(img, text_embeddings[perm]).detections[0]
        c = model(img, F.normalize(torch.randn(7, 16), dim=-1)).detections[0]
    assert len(a) > 0
    # the same classes in another order: the same detections, labels renamed accordingly
    assert torch.allclose(a.scores, b.scores, atol=1e-6) and torch.allclose(a.boxes, b.boxes, atol=1e-4)
    assert torch.equal(perm[b.labels], a.labels)
    # a different vocabulary scores differently
    assert len(c) > 0 and c.labels.max() < 7
    assert len(c) != len(a) or not torch.allclose(c.boxes, a.boxes)


def test_bad_text_embeddings_rejected():
    model = build_detector(tiny_config()).eval()
    with pytest.raises(ValueError, match="text_embeddings"):
        model([torch.rand(3, 64, 64)], torch.randn(3, 5))
    with pytest.raises(ValueError, match="empty"):
        model([torch.rand(3, 64, 64)], torch.randn(0, 16))


def test_training_without_targets_rejected(text_embeddings):
    model = build_detector(tiny_config()).train()
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 64, 64)], text_embeddings)


def test_targets_not_mutated(text_embeddings):
    model = build_detector(tiny_config()).train()
    images, targets = make_batch()
    before = [dict((k, v.clone()) for k, v in t.items()) for t in targets]
    model(images, text_embeddings[:2], targets)
    for t, b in zip(targets, before):
        assert set(t) == set(b) and all(torch.equal(t[k], b[k]) for k in t)


def test_propose_returns_scores_in_original_pixels():
    model = build_detector(tiny_config()).train()
    (boxes, scores), = model.propose([torch.rand(3, 32, 48)])  # upscaled to 64 inside
    assert model.training  # mode restored
    assert boxes.shape[0] == scores.shape[0] <= 50
    assert (boxes[:, 2] <= 48 + 1e-3).all() and (boxes[:, 3] <= 32 + 1e-3).all()


def test_config_json_round_trip_and_validation():
    cfg = tiny_config(mode="ensemble", distill_loss="l2")
    again = config_from_dict(ViLDConfig, config_to_dict(cfg))
    assert again == cfg
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, mode="nope")


@pytest.mark.parametrize("mode", ["image", "ensemble"])
def test_distill_weights_scale_each_proposals_term(mode, text_embeddings):
    """`distill_weights` (rarity weighting) reach the loss: weights of 2 double it, and zero on
    one image's proposals gives the other image's terms alone (halved by the count of all)."""
    model = build_detector(tiny_config(mode=mode)).eval()  # eval BN: the same features each call
    images, targets = make_batch()
    model.roi_heads.train()

    def distill(weights_of):
        ts = [dict(t, distill_weights=w) if w is not None else t for t, w in zip(targets, weights_of)]
        image_list, resized = model.transform(images, ts)
        return model.roi_heads._distill_loss(model.backbone(image_list.tensors), image_list.image_sizes,
                                             resized, like=torch.zeros(1))

    plain = distill([None, None])
    assert distill([torch.ones(3), torch.ones(3)]).item() == pytest.approx(plain.item(), rel=1e-6)
    assert distill([2 * torch.ones(3), 2 * torch.ones(3)]).item() == pytest.approx(2 * plain.item(), rel=1e-6)
    first_only = distill([torch.ones(3), torch.zeros(3)]).item()
    second_only = distill([torch.zeros(3), None]).item()
    assert first_only + second_only == pytest.approx(plain.item(), rel=1e-5)
    assert 0 < first_only < plain.item()


def test_a_config_saved_with_tower_head_output_loads_as_image_head_output():
    saved = config_to_dict(tiny_config(mode="image"))
    saved.pop("image_head_output")
    saved["tower_head_output"] = "mean"
    assert config_from_dict(ViLDConfig, saved).image_head_output == "mean"


@pytest.mark.parametrize("mode", ["text", "vild"])
def test_a_mean_image_head_is_refused_where_no_head_distills_alone(mode):
    with pytest.raises(ValueError, match="modes image and ensemble"):
        tiny_config(mode=mode, image_head_output="mean")


@pytest.mark.parametrize("mode", ["image", "ensemble"])
def test_a_mean_roi_head_gives_and_scores_its_unnormalised_embedding(mode, text_embeddings):
    """image_head_output "mean" on the RoI features: the head that takes the distillation loss
    alone (ViLD-image's one head, the ensemble's second) returns its projection as it is, whose
    direction is the unit head's with the same weights; the ensemble's text head stays unit."""
    torch.manual_seed(0)
    unit = build_detector(tiny_config(mode=mode)).eval()
    mean = build_detector(tiny_config(mode=mode, image_head_output="mean")).eval()
    mean.load_state_dict(unit.state_dict())
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        r_unit, r_mean = unit.regions(images).regions[0], mean.regions(images).regions[0]
    field = "embeddings" if mode == "image" else "image_embeddings"
    raw, direction = getattr(r_mean, field), getattr(r_unit, field)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(len(raw)), atol=1e-3)
    torch.testing.assert_close(F.normalize(raw, dim=-1), direction, rtol=1e-4, atol=1e-5)
    if mode == "ensemble":
        torch.testing.assert_close(r_mean.embeddings.norm(dim=1), torch.ones(len(raw)), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        out = mean(images, text_embeddings)
    assert len(out.detections) == 1


def test_a_mean_roi_head_trains_with_the_l2_loss_towards_the_teacher_embedding(text_embeddings):
    """The distillation loss reaches the unnormalised head: a head whose projection is the
    constant b (|b| = 0.5) gives weight x mean |b - t|^2 over the teacher embeddings t, where a
    unit head would have scored b / |b|."""
    model = build_detector(tiny_config(mode="image", image_head_output="mean", distill_loss="l2",
                                       distill_weight=2.0)).eval()
    dim = text_embeddings.shape[1]
    b = 0.5 * F.normalize(torch.randn(dim), dim=0)
    torch.nn.init.zeros_(model.roi_heads.text_head.projection.weight)
    with torch.no_grad():
        model.roi_heads.text_head.projection.bias.copy_(b)
    images, targets = make_batch(1)
    teacher = F.normalize(torch.randn(3, dim), dim=-1)
    targets[0]["distill_boxes"] = torch.tensor([[2.0, 2.0, 30.0, 30.0], [10.0, 4.0, 40.0, 50.0], [0.0, 0.0, 60.0, 60.0]])
    targets[0]["distill_embeddings"] = teacher
    model.roi_heads.train()
    loss = model(images, text_embeddings[:2], targets).losses["loss_distill"]
    expected = 2.0 * (b - teacher).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.roi_heads.text_head.projection.bias.grad.abs().sum() > 0


def test_an_unnormalised_roi_head_starts_at_the_origin():
    """A mean RoI head's projection starts at zero (the default init collapsed it under SGD,
    docs/distillation.md section 24), while its body and a unit head keep their random init."""
    mean = build_detector(tiny_config(mode="ensemble", image_head_output="mean")).roi_heads
    assert mean.image_head.projection.weight.abs().sum() == 0 and mean.image_head.projection.bias.abs().sum() == 0
    assert all(p.abs().sum() > 0 for name, p in mean.image_head.body.named_parameters() if name.endswith("weight"))
    assert mean.text_head.projection.weight.abs().sum() > 0
