"""The detector whose distillation head reads a frozen teacher tower (image_head_input="tower")."""

import dataclasses

import pytest
import torch

from tests.model.conftest import make_batch, tiny_config
from vild.model import build_detector
from vild.model.methods import method_probabilities

TOWER = dict(image_head_input="tower", tower_model="vild_shapeworld_cnn", tower_image_size=32,
             tower_factors=(1.0, 2.0), tower_fc_dims=(24,), tower_mean=(0.5, 0.5, 0.5),
             tower_std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def tower_model():
    torch.manual_seed(0)
    return build_detector(tiny_config(mode="ensemble", **TOWER)).eval()


@pytest.mark.parametrize("overrides, message", [
    (dict(mode="text"), "needs mode 'image', 'vild' or 'ensemble'"),
    (dict(mode="ensemble", tower_model=""), "needs tower_model"),
    (dict(mode="ensemble", tower_reads="crops"), "tower_reads"),
    (dict(mode="ensemble", tower_factors=()), "tower_factors"),
    (dict(mode="ensemble", tower_model="open_clip"), "tower_vision_cfg"),
    (dict(mode="ensemble", tower_vision_cfg="{}"), "tower_vision_cfg"),
    (dict(mode="ensemble", image_head_output="median"), "image_head_output"),
    (dict(mode="vild", image_head_output="mean"), "modes image and ensemble"),
])
def test_config_refuses_what_a_tower_head_cannot_be(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{**TOWER, **overrides})


def test_unknown_tower_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot build the tower 'no_such_tower'"):
        build_detector(tiny_config(mode="ensemble", **{**TOWER, "tower_model": "no_such_tower"}))


def test_regions_carry_the_tower_heads_embeddings_of_the_refined_boxes(tower_model):
    """Detection reads the tower at each region's refined box, through the head, and the
    ensemble scores those embeddings; with tower_reads="proposals" it reads the proposals."""
    images, _ = make_batch(2)
    batch = tower_model.regions(images)
    for i, r in enumerate(batch.regions):
        assert r.image_embeddings.shape == r.embeddings.shape
        alone = tower_model.tower_region_features([images[i]], [batch.boxes_in_original(i)])
        want = tower_model.roi_heads.tower_embeddings(alone)
        torch.testing.assert_close(r.image_embeddings, want, rtol=1e-4, atol=1e-5)
    proposals_model = build_detector(dataclasses.replace(tower_model.config, tower_reads="proposals")).eval()
    proposals_model.load_state_dict(tower_model.state_dict())
    assert not torch.allclose(proposals_model.regions(images).regions[0].image_embeddings,
                              batch.regions[0].image_embeddings)


def test_vild_image_and_ensemble_score_with_the_tower_head(tower_model, text_embeddings):
    images, _ = make_batch(1)
    r = tower_model.regions(images).regions[0]
    cfg = tower_model.config
    args = (cfg, tower_model.roi_heads.background, r.embeddings, r.image_embeddings, None, text_embeddings)
    p_image = method_probabilities("vild-image", *args, None)
    torch.testing.assert_close(p_image, torch.softmax(cfg.image_temperature * r.image_embeddings @ text_embeddings.T, -1))
    out = tower_model(images, text_embeddings)
    assert len(out.detections) == 1 and out.detections[0].image_embeddings is not None


def test_a_mean_tower_head_scores_its_unnormalised_embedding(tower_model, text_embeddings):
    """image_head_output "mean": the regions carry the head's projection as it is (not unit
    length) and ViLD-image's softmax takes it unnormalised; the unit head's is its direction."""
    mean_model = build_detector(dataclasses.replace(tower_model.config, image_head_output="mean")).eval()
    mean_model.load_state_dict(tower_model.state_dict())
    images, _ = make_batch(1)
    raw = mean_model.regions(images).regions[0].image_embeddings
    unit = tower_model.regions(images).regions[0].image_embeddings
    assert not torch.allclose(raw.norm(dim=1), torch.ones(len(raw)), atol=1e-3)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), unit, rtol=1e-4, atol=1e-5)
    cfg = mean_model.config
    p_image = method_probabilities("vild-image", cfg, mean_model.roi_heads.background, None, raw, None,
                                   text_embeddings, None)
    torch.testing.assert_close(p_image, torch.softmax(cfg.image_temperature * raw @ text_embeddings.T, -1))


def test_training_loss_moves_the_tower_head_and_never_the_tower(text_embeddings):
    torch.manual_seed(0)
    model = build_detector(tiny_config(mode="ensemble", **TOWER)).train()
    tower_before = {k: v.clone() for k, v in model.tower.state_dict().items()}
    images, targets = make_batch(2)
    losses = model(images, text_embeddings, targets).losses
    assert {"loss_distill", "loss_classifier"} <= set(losses)
    losses["loss_distill"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.roi_heads.image_head.parameters())
    assert all(p.grad is None for p in model.tower.parameters())
    assert all(p.grad is None for p in model.roi_heads.text_head.parameters())
    for k, v in model.tower.state_dict().items():  # frozen BatchNorm statistics too
        torch.testing.assert_close(v, tower_before[k])


def test_vilds_one_head_on_the_tower_gives_the_regions_embeddings(tower_model, text_embeddings):
    """Mode "vild" with the tower: the tower head's embeddings of the refined boxes are the
    regions' own, scored as ViLD scores (with the background); the RoI head only refines boxes.
    Its text loss trains on a region store (vild distill-tower), so the training loop refuses."""
    model = build_detector(dataclasses.replace(tower_model.config, mode="vild")).eval()
    model.load_state_dict(tower_model.state_dict())
    images, targets = make_batch(1)
    batch = model.regions(images)
    r = batch.regions[0]
    assert r.image_embeddings is None
    want = model.roi_heads.tower_embeddings(model.tower_region_features(images, [batch.boxes_in_original(0)]))
    torch.testing.assert_close(r.embeddings, want, rtol=1e-4, atol=1e-5)
    ensemble_regions = tower_model.regions(images).regions[0]
    torch.testing.assert_close(r.boxes, ensemble_regions.boxes)  # the same RoI head refines the boxes
    torch.testing.assert_close(r.embeddings, ensemble_regions.image_embeddings, rtol=1e-4, atol=1e-5)
    p = method_probabilities("vild", model.config, model.roi_heads.background, r.embeddings, None, None,
                             text_embeddings, None)
    logits = model.config.temperature * r.embeddings @ torch.cat(
        [torch.nn.functional.normalize(model.roi_heads.background, dim=0)[None], text_embeddings]).T
    torch.testing.assert_close(p, torch.softmax(logits, -1)[:, 1:])
    with pytest.raises(ValueError, match="vild distill-tower --mode vild"):
        model.train()(images, text_embeddings, targets)


def test_tower_weights_are_part_of_the_model_state(tower_model):
    keys = tower_model.state_dict().keys()
    assert any(k.startswith("tower.trunk.") for k in keys)
    assert any(k.startswith("roi_heads.image_head.body.") for k in keys)


def test_export_refuses_a_tower_model(tower_model):
    from vild.model.graph import DetectionGraph

    with pytest.raises(ValueError, match="cannot be exported"):
        DetectionGraph(tower_model)
