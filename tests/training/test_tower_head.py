"""`vild distill-tower`: a distillation head on the teacher's own tower, trained on a region store."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.training._tiny import tiny_training
from vild.cli import main
from vild.errors import VildError
from vild.model.heads import TowerEmbeddingHead
from vild.training.checkpoint import load_model
from vild.training.tower_head import (
    TowerFeatures, TowerHeadConfig, proposal_labels, train_tower_head, tower_detector)
from vild.training.vocabulary import world_paths


@pytest.fixture(scope="module")
def text_model(tiny_world, tmp_path_factory):
    from vild.training.loop import train_detector

    model_cfg, train_cfg, data, text = tiny_training(tiny_world, steps=2)
    out = tmp_path_factory.mktemp("text") / "text"
    return train_detector(dataclasses.replace(model_cfg, mode="text"), train_cfg, data, text, out, progress=False)


def _store(world, text_model, teacher_dir, out):
    from vild.data.detection import DetectionDataset
    from vild.regions.embed import embed_regions
    from vild.teacher import Teacher

    paths = world_paths(world)
    embed_regions(DetectionDataset(paths["train_images"], paths["train_base"], with_masks=False),
                  load_model(text_model).propose, Teacher.load(str(teacher_dir)), out,
                  num_proposals=6, progress=False)
    return out


@pytest.fixture(scope="module")
def store(tiny_world, text_model, cnn_teacher_dir, tmp_path_factory):
    return _store(tiny_world, text_model, cnn_teacher_dir, tmp_path_factory.mktemp("store") / "regions")


def test_distill_tower_cli_writes_a_model_that_detects_with_the_teachers_tower(
        tiny_world, text_model, cnn_teacher_dir, store, tmp_path):
    from vild.teacher import Teacher

    out = tmp_path / "tower"
    argv = ["distill-tower", "--model", str(text_model), "--teacher", str(cnn_teacher_dir), "--world",
            str(tiny_world), "--region-store", str(store), "--steps", "60", "--factors", "1", "2",
            "--threads", "1", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    model = load_model(out)
    cfg = model.config
    assert (cfg.mode, cfg.image_head_input, cfg.tower_model, cfg.tower_factors, cfg.tower_grid) == (
        "ensemble", "tower", "vild_shapeworld_cnn", (1.0, 2.0), 4)
    teacher = Teacher.load(str(cnn_teacher_dir))
    assert cfg.image_temperature == pytest.approx(teacher.logit_scale)
    for k, v in teacher.model.visual.trunk.state_dict().items():  # the teacher's own tower
        torch.testing.assert_close(model.tower.trunk.state_dict()[k], v)
    base = load_model(text_model)
    for k, v in base.state_dict().items():  # the detector is the trained one
        torch.testing.assert_close(model.state_dict()[k], v)
    record = json.loads((out / "tower_head.json").read_text())
    assert record["images"] == 6 and record["proposals"] == 36
    assert record["log"][-1]["loss_distill"] < record["log"][0]["loss_distill"]
    image = torch.rand(3, 128, 128)
    detections = model([image], F.normalize(torch.randn(4, 16), dim=-1)).detections[0]
    assert detections.image_embeddings is not None
    assert main(argv) == 1  # a finished folder is never overwritten


def test_distill_tower_cli_trains_an_unnormalised_head(tiny_world, text_model, cnn_teacher_dir, store, tmp_path,
                                                      capsys):
    out = tmp_path / "tower-mean"
    argv = ["distill-tower", "--model", str(text_model), "--teacher", str(cnn_teacher_dir), "--world",
            str(tiny_world), "--region-store", str(store), "--mode", "image", "--output", "mean", "--loss", "l2",
            "--steps", "30", "--factors", "1", "--threads", "1", "--device", "cpu", "--no-progress",
            "--out", str(out)]
    assert main(argv[:argv.index("image")] + ["vild"] + argv[argv.index("image") + 1:]) == 1
    assert "modes image and ensemble" in capsys.readouterr().err
    assert main(argv) == 0
    model = load_model(out)
    assert (model.config.mode, model.config.image_head_output, model.config.distill_loss) == ("image", "mean", "l2")
    assert {k: json.loads((out / "tower_head.json").read_text())["recipe"][k] for k in ("output", "loss")} == {
        "output": "mean", "loss": "l2"}
    detections = model([torch.rand(3, 128, 128)], F.normalize(torch.randn(4, 16), dim=-1)).detections[0]
    assert len(detections.scores) > 0
    assert not torch.allclose(detections.image_embeddings.norm(dim=1), torch.ones(len(detections.scores)), atol=1e-3)


@pytest.fixture(scope="module")
def labelled_store(tiny_world, text_model, cnn_teacher_dir, tmp_path_factory):
    """A store whose proposals include each image's labelled boxes, shifted by a pixel (a
    2-step detector's own proposals rarely overlap them)."""
    from vild.data.detection import DetectionDataset
    from vild.regions.embed import embed_regions
    from vild.teacher import Teacher

    paths = world_paths(tiny_world)
    dataset = DetectionDataset(paths["train_images"], paths["train_base"], with_masks=False)
    boxes = iter([dataset[i][1]["boxes"] for i in range(len(dataset))])  # embed_regions goes in order
    proposer = load_model(text_model).propose

    def with_labelled_boxes(images):
        out = []
        for b, s in proposer(images):
            gt = next(boxes) + 1.0
            out.append((torch.cat([gt, b]), torch.cat([s.new_ones(len(gt)) * 2, s])))
        return out

    out = tmp_path_factory.mktemp("store") / "labelled"
    embed_regions(dataset, with_labelled_boxes, Teacher.load(str(cnn_teacher_dir)), out, num_proposals=12,
                  progress=False)
    return out


def test_distill_tower_mode_vild_trains_vilds_one_head_on_the_tower(
        tiny_world, text_model, cnn_teacher_dir, labelled_store, store, tmp_path, capsys):
    from vild.teacher import Teacher

    out = tmp_path / "tower-vild"
    argv = ["distill-tower", "--model", str(text_model), "--teacher", str(cnn_teacher_dir), "--world",
            str(tiny_world), "--region-store", str(store), "--mode", "vild", "--steps", "40", "--factors", "1",
            "--threads", "1", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(argv) == 1  # none of the 2-step detector's proposals overlaps a labelled box
    assert "no stored proposal overlaps a labelled box" in capsys.readouterr().err
    argv[argv.index(str(store))] = str(labelled_store)
    assert main(argv) == 0
    model, base = load_model(out), load_model(text_model)
    scale = float(Teacher.load(str(cnn_teacher_dir)).logit_scale)
    assert (model.config.mode, model.config.image_head_input) == ("vild", "tower")
    assert model.config.temperature == pytest.approx(scale)
    assert model.config.distill_weight == pytest.approx(base.config.distill_weight * scale / base.config.temperature)
    assert not torch.allclose(model.roi_heads.background, base.roi_heads.background)  # trained with the head
    record = json.loads((out / "tower_head.json").read_text())
    assert 0 < record["labelled_proposals"] < record["proposals"]
    assert {"loss_distill", "loss_classifier"} <= set(record["log"][-1])
    assert record["log"][-1]["loss_classifier"] < record["log"][0]["loss_classifier"]
    detections = model([torch.rand(3, 128, 128)], F.normalize(torch.randn(4, 16), dim=-1)).detections[0]
    assert detections.image_embeddings is None and len(detections.scores) > 0


def test_rarity_weights_follow_the_cached_rows():
    """Each cached row takes its own proposal's weight, computed on the whole store."""
    from vild.regions.rarity import rarity_weights

    torch.manual_seed(0)
    dense = F.normalize(torch.ones(4, 8) + 0.01 * torch.randn(4, 8), dim=-1)  # one frequent look
    embeddings = {5: dense, 3: F.normalize(torch.randn(2, 8), dim=-1), 9: F.normalize(torch.randn(3, 8), dim=-1)}
    store = SimpleNamespace(image_ids=[3, 5, 9], get=lambda i: (None, None, embeddings[i]))
    cache = TowerFeatures(torch.zeros(9, 4), torch.zeros(9, 8), torch.tensor([4, 2, 3]),
                          torch.zeros(9, dtype=torch.int64), (5, 3, 9))
    assert cache.rarity_weights(store, 0.0) is None
    weights = cache.rarity_weights(store, 1.0)
    by_image = rarity_weights(store, power=1.0)
    torch.testing.assert_close(weights, torch.cat([by_image[5], by_image[3], by_image[9]]))
    assert weights[:4].max() < weights[4:].min()  # the frequent look counts less


def test_tower_head_fits_the_teacher_embeddings():
    """The head trained by the library's loop fits targets that are a function of the features."""
    torch.manual_seed(0)
    feats = torch.randn(400, 32)
    targets = F.normalize(torch.tanh(feats @ torch.randn(32, 16)), dim=-1)
    head = TowerEmbeddingHead(in_dim=32, fc_dims=(64,), embed_dim=16)
    model = SimpleNamespace(roi_heads=SimpleNamespace(image_head=head),
                            config=SimpleNamespace(distill_weight=0.5, distill_loss="l1", tower_scores_text=False))
    with torch.no_grad():
        before = float((head(feats)[1] * targets).sum(1).mean())
    cache = TowerFeatures(feats.half(), targets, torch.full((40,), 10), torch.zeros(400, dtype=torch.int64))
    log = train_tower_head(model, cache, TowerHeadConfig(steps=300, lr=3e-3, warmup_steps=10), progress=False)
    with torch.no_grad():
        after = float((head(feats)[1] * targets).sum(1).mean())
    assert before < 0.3 and after > 0.9, (before, after)
    assert log[-1]["loss_distill"] < log[0]["loss_distill"]
    assert "loss_classifier" not in log[-1]
    # per-row weights scale each row's term (all twos: the first step's loss doubles)
    first = []
    for weights in (None, torch.full((400,), 2.0)):
        torch.manual_seed(1)
        model.roi_heads.image_head = TowerEmbeddingHead(in_dim=32, fc_dims=(64,), embed_dim=16)
        first.append(train_tower_head(model, cache, TowerHeadConfig(steps=1), weights=weights,
                                      progress=False)[0]["loss_distill"])
    assert first[1] == pytest.approx(2 * first[0], rel=1e-3)


def test_the_relational_term_trains_beside_the_l1_term():
    torch.manual_seed(0)
    feats = torch.randn(400, 32)
    targets = F.normalize(torch.tanh(feats @ torch.randn(32, 16)), dim=-1)
    cache = TowerFeatures(feats.half(), targets, torch.full((40,), 10), torch.zeros(400, dtype=torch.int64))
    config = SimpleNamespace(distill_weight=0.5, distill_loss="l1", tower_scores_text=False, image_temperature=20.0)
    logs = []
    for relational in (0.0, 1.0):
        torch.manual_seed(1)
        head = TowerEmbeddingHead(in_dim=32, fc_dims=(64,), embed_dim=16)
        model = SimpleNamespace(roi_heads=SimpleNamespace(image_head=head), config=config)
        logs.append(train_tower_head(model, cache, TowerHeadConfig(steps=200, lr=3e-3, warmup_steps=10,
                                                                    relational=relational), progress=False))
    assert "loss_relational" not in logs[0][0]
    assert logs[1][-1]["loss_relational"] < logs[1][0]["loss_relational"] / 2
    # the L1 term is the same function of the same first weights
    assert logs[1][0]["loss_distill"] == pytest.approx(logs[0][0]["loss_distill"], rel=1e-5)


def test_the_mean_head_is_shorter_and_flatter_where_the_features_are_ambiguous():
    """output "mean" + L2: where one feature vector comes with two different teacher embeddings
    the head estimates their mean, shorter than a unit vector, so its ViLD-image softmax is
    flatter there than where the features fix the embedding; the unit head is as confident
    on both."""
    from vild.model.heads import image_probabilities

    torch.manual_seed(0)
    text = F.normalize(torch.randn(6, 16), dim=-1)
    clear, ambiguous = torch.randn(32), torch.randn(32)
    feats = torch.stack([clear] * 200 + [ambiguous] * 200) + 0.01 * torch.randn(400, 32)
    targets = torch.cat([text[0].expand(200, 16), text[torch.tensor([1, 2] * 100)]])
    cache = TowerFeatures(feats.half(), targets, torch.full((40,), 10), torch.zeros(400, dtype=torch.int64))
    heads = {}
    for output, loss in (("mean", "l2"), ("unit", "l1")):
        torch.manual_seed(1)
        head = TowerEmbeddingHead(in_dim=32, fc_dims=(64,), embed_dim=16, normalize=output == "unit")
        model = SimpleNamespace(roi_heads=SimpleNamespace(image_head=head),
                                config=SimpleNamespace(distill_weight=0.5, distill_loss=loss, tower_scores_text=False))
        train_tower_head(model, cache, TowerHeadConfig(steps=300, lr=3e-3, warmup_steps=10, output=output,
                                                       loss=loss), progress=False)
        with torch.no_grad():
            heads[output] = head(torch.stack([clear, ambiguous]))[1]
    mean = heads["mean"]
    assert float(mean[0].norm()) == pytest.approx(1.0, abs=0.1)
    torch.testing.assert_close(mean[1], (text[1] + text[2]) / 2, atol=0.1, rtol=0)
    assert float(mean[1].norm()) < 0.9 * float(mean[0].norm())
    torch.testing.assert_close(heads["unit"].norm(dim=1), torch.ones(2))
    peak = {k: image_probabilities(v, text, 20.0).max(1).values for k, v in heads.items()}
    assert float(peak["mean"][1]) < float(peak["mean"][0]) - 0.2


def test_vilds_one_tower_head_learns_the_labels_and_the_background():
    """Mode "vild": the text loss trains the head and the background towards the labels
    (0 = background) while the distillation loss still pulls towards the teacher."""
    torch.manual_seed(0)
    feats = torch.randn(400, 32)
    text = F.normalize(torch.randn(3, 16), dim=-1)
    labels = (feats[:, :4].argmax(1)).clamp(max=3)  # 0 = background, 1..3 = the categories
    targets = F.normalize(torch.cat([F.normalize(torch.randn(1, 16), dim=-1), text])[labels]
                          + 0.1 * torch.randn(400, 16), dim=-1)
    head = TowerEmbeddingHead(in_dim=32, fc_dims=(64,), embed_dim=16)
    background = torch.nn.Parameter(torch.randn(16) * 0.01)
    model = SimpleNamespace(roi_heads=SimpleNamespace(image_head=head, background=background),
                            config=SimpleNamespace(distill_weight=0.2, distill_loss="l1", tower_scores_text=True,
                                                   temperature=20.0))
    cache = TowerFeatures(feats.half(), targets, torch.full((40,), 10), labels)
    start = background.detach().clone()
    log = train_tower_head(model, cache, TowerHeadConfig(mode="vild", steps=300, lr=3e-3, warmup_steps=10),
                           text_embeddings=text, progress=False)
    with torch.no_grad():
        from vild.model.heads import text_logits

        predicted = text_logits(head(feats)[1], text, background, 20.0).argmax(1)
    assert float((predicted == labels).float().mean()) > 0.9
    assert not torch.allclose(background.detach(), start)
    assert log[-1]["loss_classifier"] < log[0]["loss_classifier"]
    assert log[-1]["loss_distill"] < log[0]["loss_distill"]
    with pytest.raises(VildError, match="text embeddings"):
        train_tower_head(model, cache, TowerHeadConfig(mode="vild", steps=1), text_embeddings=text[:2],
                         progress=False)


def test_proposal_labels_follow_the_best_overlapping_box():
    proposals = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 6], [20, 20, 30, 30], [50, 50, 60, 60.]])
    boxes = torch.tensor([[0, 0, 10, 10], [21, 21, 30, 30.]])
    labels = torch.tensor([4, 1])
    assert proposal_labels(proposals, boxes, labels, 0.5).tolist() == [5, 5, 2, 0]
    assert proposal_labels(proposals, boxes[:0], labels[:0], 0.5).tolist() == [0, 0, 0, 0]
    assert proposal_labels(proposals, boxes, labels, 0.7).tolist() == [5, 0, 2, 0]


def test_a_vit_teacher_gives_a_tower_model_that_saves_loads_and_detects(
        tiny_world, text_model, tiny_teacher_dir, tmp_path):
    """A real CLIP's tower is an open_clip ViT or ResNet, not a timm model: it is read through
    `vild.model.tower_maps`, and the model folder rebuilds it from its config."""
    from vild.teacher import Teacher

    store = _store(tiny_world, text_model, tiny_teacher_dir, tmp_path / "regions")
    out = tmp_path / "tower"
    assert main(["distill-tower", "--model", str(text_model), "--teacher", str(tiny_teacher_dir), "--world",
                 str(tiny_world), "--region-store", str(store), "--steps", "20", "--factors", "1", "2",
                 "--grid", "2", "--threads", "1", "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    model = load_model(out)
    assert (model.config.tower_model, model.config.tower_grid) == ("open_clip", 2)
    assert json.loads(model.config.tower_vision_cfg)["vision_cfg"]["patch_size"] == 8
    teacher = Teacher.load(str(tiny_teacher_dir))
    for k, v in teacher.model.visual.state_dict().items():  # the teacher's own tower
        torch.testing.assert_close(model.tower.trunk.visual.state_dict()[k], v)
    detections = model([torch.rand(3, 128, 128)], F.normalize(torch.randn(4, 16), dim=-1)).detections[0]
    assert detections.image_embeddings is not None and torch.isfinite(detections.image_embeddings).all()


def test_a_teacher_without_a_readable_tower_is_refused(text_model, tiny_teacher_dir):
    from vild.teacher import Teacher

    teacher = Teacher.load(str(tiny_teacher_dir))
    teacher.model.visual = torch.nn.Linear(3, 16)  # no timm trunk, not a CLIP ResNet or ViT
    with pytest.raises(VildError, match="no feature map"):
        tower_detector(load_model(text_model), teacher, TowerHeadConfig())


def test_train_refuses_a_tower_config_without_a_trained_start(tiny_world, tmp_path):
    from vild.training.loop import train_detector

    model_cfg, train_cfg, data, text = tiny_training(tiny_world, steps=2)
    model_cfg = dataclasses.replace(model_cfg, mode="ensemble", image_head_input="tower",
                                    tower_model="vild_shapeworld_cnn", tower_image_size=32)
    with pytest.raises(VildError, match="vild distill-tower"):
        train_detector(model_cfg, train_cfg, dataclasses.replace(data, region_store="x"), text, tmp_path / "m",
                       progress=False)


def test_train_refuses_vilds_one_head_on_the_tower(tiny_world, tmp_path):
    from vild.training.loop import train_detector

    model_cfg, train_cfg, data, text = tiny_training(tiny_world, steps=2)
    model_cfg = dataclasses.replace(model_cfg, mode="vild", image_head_input="tower",
                                    tower_model="vild_shapeworld_cnn", tower_image_size=32)
    train_cfg = dataclasses.replace(train_cfg, init_from="some/model")
    with pytest.raises(VildError, match="distill-tower --mode vild"):
        train_detector(model_cfg, train_cfg, dataclasses.replace(data, region_store="x"), text, tmp_path / "m",
                       progress=False)


@pytest.mark.parametrize("kwargs, message", [(dict(mode="text"), "mode"), (dict(steps=0), "positive"),
                                                      (dict(rarity=-1.0), "rarity"),
                                                      (dict(relational=-0.5), "relational"),
                                                      (dict(output="median"), "output"),
                                                      (dict(loss="huber"), "loss"),
                                                      (dict(mode="vild", output="mean"), "modes image and ensemble")])
def test_recipe_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TowerHeadConfig(**kwargs)
