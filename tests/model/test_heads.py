import pytest
import torch
import torch.nn.functional as F

from vild.model.heads import ensemble_probabilities, image_probabilities, text_logits
from vild.model.losses import distillation_loss, relational_distillation_loss


def test_ensemble_matches_hand_computation():
    p_text = torch.tensor([[0.6, 0.1, 0.2]])
    p_img = torch.tensor([[0.3, 0.5, 0.2]])
    base = torch.tensor([True, False, True])
    got = ensemble_probabilities(p_text, p_img, base, 2 / 3)
    want = torch.tensor([[
        0.6 ** (2 / 3) * 0.3 ** (1 / 3),
        0.1 ** (1 / 3) * 0.5 ** (2 / 3),
        0.2 ** (2 / 3) * 0.2 ** (1 / 3),
    ]])
    assert torch.allclose(got, want, atol=1e-6)


def test_text_logits_background_first_and_scaled():
    region = F.normalize(torch.randn(4, 8), dim=-1)
    text = F.normalize(torch.randn(3, 8), dim=-1)
    bg = torch.randn(8) * 5
    logits = text_logits(region, text, bg, 50.0)
    assert logits.shape == (4, 4)
    assert torch.allclose(logits[:, 0], 50.0 * region @ F.normalize(bg, dim=0), atol=1e-5)
    assert torch.allclose(logits[:, 1:], 50.0 * region @ text.T, atol=1e-5)


def test_image_probabilities_sum_to_one_without_background():
    p = image_probabilities(F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(2, 8), dim=-1), 10.0)
    assert p.shape == (5, 2) and torch.allclose(p.sum(1), torch.ones(5))


def test_distillation_loss_l1_sum_over_dims_mean_over_regions():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert distillation_loss(a, b, "l1").item() == 1.0  # (2 + 0) / 2
    assert distillation_loss(a, b, "l2").item() == 1.0
    assert distillation_loss(a[:0], b[:0]).item() == 0.0
    # per-region weights scale each region's term; the sum is still divided by the count
    assert distillation_loss(a, b, "l1", torch.ones(2)).item() == 1.0
    assert distillation_loss(a, b, "l1", torch.tensor([0.5, 7.0])).item() == 0.5  # (0.5 * 2 + 7 * 0) / 2


def test_relational_loss_is_the_kl_between_how_teacher_and_region_rank_the_batch():
    teacher = torch.eye(3)  # three regions whose teacher embeddings are orthogonal
    assert relational_distillation_loss(teacher, teacher, 5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert relational_distillation_loss(teacher[:0], teacher[:0], 5.0).item() == 0.0
    # region 0 sits on region 1's teacher embedding; the others are right
    student = teacher[[1, 1, 2]]
    p = torch.softmax(5.0 * torch.tensor([1.0, 0.0, 0.0]), 0)
    q = torch.softmax(5.0 * torch.tensor([0.0, 1.0, 0.0]), 0)
    expected = float((p * (p.log() - q.log())).sum()) / 3
    assert relational_distillation_loss(student, teacher, 5.0).item() == pytest.approx(expected, rel=1e-5)


def test_relational_loss_tells_apart_errors_that_l1_weighs_alike():
    """Two errors of one L1 size: towards another region's teacher embedding, or away from all."""
    teacher = torch.eye(4)[:3]
    towards = teacher.clone()
    towards[0] = F.normalize(torch.tensor([0.5, 0.5, 0.0, 0.0]), dim=0)
    away = teacher.clone()
    away[0] = F.normalize(torch.tensor([0.5, 0.0, 0.0, 0.5]), dim=0)
    assert distillation_loss(towards, teacher).item() == pytest.approx(distillation_loss(away, teacher).item())
    assert relational_distillation_loss(towards, teacher, 10.0) > 2 * relational_distillation_loss(away, teacher, 10.0)


def test_select_detections_matches_torchvision_batched_nms():
    """The large-vocabulary selection keeps exactly what score filter + batched_nms keeps."""
    from torchvision.ops import batched_nms

    from vild.model import ViLDConfig
    from vild.model.postprocess import select_detections

    g = torch.Generator().manual_seed(0)
    # (600, 5): many candidates in few classes -> the per-class loop; the others -> one offset NMS
    for num_regions, num_classes in ((60, 3), (60, 50), (60, 400), (600, 5)):
        xy = torch.rand(num_regions, 2, generator=g) * 80
        boxes = torch.cat([xy, xy + 5 + torch.rand(num_regions, 2, generator=g) * 30], dim=1)
        probs = torch.softmax(torch.randn(num_regions, num_classes, generator=g) * 3, dim=1)
        cfg = ViLDConfig(detections_per_image=100, pre_nms_topk=3000)
        got_boxes, got_scores, got_labels, got_region = select_detections(boxes, probs, cfg)
        scores = probs.reshape(-1)
        keep = torch.where(scores > cfg.score_thresh)[0]
        region, labels = keep // num_classes, keep % num_classes
        ref = batched_nms(boxes[region], scores[keep], labels, cfg.nms_thresh)[: cfg.detections_per_image]
        assert torch.equal(got_scores, scores[keep][ref])
        assert torch.equal(got_labels, labels[ref]) and torch.equal(got_region, region[ref])
        assert torch.equal(got_boxes, boxes[region[ref]])
