import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vild.errors import VildError
from vild.training.checkpoint import load_model, load_vocabulary
from vild.training.config import TrainConfig, learning_rate
from vild.training.loop import StepBatches, TrainData, train_detector
from vild.training.presets import at_teacher_scale, parse_overrides, preset, row_recipe
from vild.training.vocabulary import dataset_vocabulary, world_paths


def test_learning_rate_warmup_and_decay():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, warmup_factor=0.1, decay_at=(0.5, 0.9))
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 5) == pytest.approx(0.55)
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 50) == pytest.approx(0.1)
    assert learning_rate(cfg, 95) == pytest.approx(0.01)


class _FakeDataset:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_step_batches_deterministic_and_cover_epochs():
    cfg = TrainConfig(batch_size=4, seed=3)
    a, b = StepBatches(_FakeDataset(10), cfg), StepBatches(_FakeDataset(10), cfg)
    first_epoch = a.indices(0) + a.indices(1) + a.indices(2)[:2]
    assert sorted(first_epoch) == list(range(10))  # one epoch = a permutation
    assert [b.indices(s) for s in (5, 0, 2)] == [a.indices(s) for s in (5, 0, 2)]


def _setup(world, mode="text"):
    paths = world_paths(world)
    vocab = dataset_vocabulary(paths["train_base"])
    base_ids = tuple(c for c, b in zip(vocab["category_ids"], vocab["base"]) if b)
    model_cfg, train_cfg = preset(
        "shapeworld-quick", model=dict(mode=mode, embed_dim=16),
        train=dict(steps=4, batch_size=2, checkpoint_every=2, warmup_steps=2),
    )
    text = F.normalize(torch.randn(len(vocab["names"]), 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    base_rows = [vocab["category_ids"].index(c) for c in base_ids]
    data = TrainData(str(paths["train_images"]), str(paths["train_base"]), base_ids)
    return model_cfg, train_cfg, data, text, base_rows, vocab


def test_train_writes_loadable_model(tiny_world, tmp_path):
    model_cfg, train_cfg, data, text, rows, vocab = _setup(tiny_world)
    out = train_detector(model_cfg, train_cfg, data, text[rows], tmp_path / "m", vocabulary=vocab,
                         all_text_embeddings=text, progress=False)
    model = load_model(out)
    assert model.config == model_cfg and not model.training
    saved_vocab, saved_text = load_vocabulary(out)
    assert saved_vocab["names"] == vocab["names"] and torch.equal(saved_text, text)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    with pytest.raises(VildError, match="already holds"):
        train_detector(model_cfg, train_cfg, data, text[rows], out, progress=False)


def test_resume_after_kill_matches_uninterrupted_run(tiny_world, tmp_path):
    model_cfg, train_cfg, data, text, rows, _ = _setup(tiny_world)
    full = train_detector(model_cfg, train_cfg, data, text[rows], tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train_detector(model_cfg, train_cfg, data, text[rows], part, progress=False, stop_after=3)
    assert not (part / "model.safetensors").exists()
    train_detector(model_cfg, train_cfg, data, text[rows], part, progress=False, resume=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_distilling_mode_requires_region_store(tiny_world, tmp_path):
    model_cfg, train_cfg, data, text, rows, _ = _setup(tiny_world, mode="vild")
    with pytest.raises(VildError, match="region store"):
        train_detector(model_cfg, train_cfg, data, text[rows], tmp_path / "m", progress=False)


def test_wrong_text_shape_rejected(tiny_world, tmp_path):
    model_cfg, train_cfg, data, text, rows, _ = _setup(tiny_world)
    with pytest.raises(VildError, match="do not fit"):
        train_detector(model_cfg, train_cfg, data, text, tmp_path / "m", progress=False)


def test_init_from_and_freeze(tiny_world, tmp_path):
    model_cfg, train_cfg, data, text, rows, _ = _setup(tiny_world)
    first = train_detector(model_cfg, train_cfg, data, text[rows], tmp_path / "a", progress=False)
    cfg2 = TrainConfig(**{**train_cfg.__dict__, "init_from": str(first), "freeze": ("backbone",)})
    second = train_detector(model_cfg, cfg2, data, text[rows], tmp_path / "b", progress=False)
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert torch.equal(a["backbone.body.conv1.weight"], b["backbone.body.conv1.weight"])
    assert torch.equal(a["backbone.body.bn1.running_mean"], b["backbone.body.bn1.running_mean"])
    assert not torch.equal(a["roi_heads.background"], b["roi_heads.background"])


def test_overrides_are_typed_and_checked():
    model, train = parse_overrides(["temperature=30", "steps=7", "freeze=backbone,rpn", "init_from=none"])
    assert model == {"temperature": 30.0}
    assert train == {"steps": 7, "freeze": ("backbone", "rpn"), "init_from": None}
    with pytest.raises(VildError, match="unknown setting"):
        parse_overrides(["nope=1"])
    with pytest.raises(VildError, match="unknown preset"):
        preset("nope")


def test_heads_that_imitate_the_teacher_take_its_temperature_unless_given():
    """The distillation head always, ViLD's one head too, with its distillation weight scaled by
    the same factor as its temperature; ViLD-text and the ensemble's text head keep the
    preset's; a setting given by the user wins."""
    assert at_teacher_scale({}, 20.5, "vild", "shapeworld") == {
        "image_temperature": 20.5, "temperature": 20.5, "distill_weight": pytest.approx(0.5 * 20.5 / 50)}
    for mode in ("text", "ensemble", "image"):
        assert at_teacher_scale({}, 20.5, mode, "shapeworld") == {"image_temperature": 20.5}
    given = {"temperature": 50.0, "image_temperature": 30.0, "mode": "vild"}
    assert at_teacher_scale(given, 20.5, "vild", "shapeworld") == given
    weight_given = at_teacher_scale({"distill_weight": 2.0}, 20.5, "vild", "shapeworld")
    assert weight_given["distill_weight"] == 2.0 and weight_given["temperature"] == 20.5
    # CLIP on the LVIS preset: the paper's temperature and weight stay as they are
    assert at_teacher_scale({}, 100.0, "vild", "lvis-r50")["distill_weight"] == pytest.approx(0.5)
    model, _ = preset("shapeworld", model=at_teacher_scale({"mode": "vild"}, 20.5, "vild", "shapeworld"))
    assert model.temperature == model.image_temperature == 20.5
    assert model.distill_weight == pytest.approx(0.205)


def test_the_ensembles_roi_distillation_head_is_unnormalised_with_the_l2_loss_unless_given():
    """Mode ensemble only, on the RoI features: the L2 weight gives the L1 term's gradient at a
    residual of length 1 (0.5 x sqrt(256) / 2 = 4); anything the user sets about the head
    keeps the dataclass defaults for the rest, and other modes are as `at_teacher_scale` has them."""
    recipe = row_recipe({}, 20.5, 256, "ensemble", "shapeworld")
    assert recipe == {"image_temperature": 20.5, "image_head_output": "mean", "distill_loss": "l2",
                      "distill_weight": pytest.approx(4.0)}
    model, _ = preset("shapeworld", model=dict(recipe, mode="ensemble", embed_dim=256))
    assert (model.image_head_output, model.distill_loss) == ("mean", "l2")
    # the LVIS R152 preset's weight 1.0 at CLIP's 512 dimensions
    assert row_recipe({}, 100.0, 512, "ensemble", "lvis-r152")["distill_weight"] == pytest.approx(512 ** 0.5 / 2)
    for given in ({"image_head_output": "unit"}, {"distill_loss": "l1"}, {"distill_weight": 2.0}):
        assert row_recipe(given, 20.5, 256, "ensemble", "shapeworld") == {**given, "image_temperature": 20.5}
    tower = {"image_head_input": "tower", "tower_model": "resnet18"}
    assert "image_head_output" not in row_recipe(tower, 20.5, 256, "ensemble", "shapeworld")
    for mode in ("text", "image", "vild"):
        assert row_recipe({}, 20.5, 256, mode, "shapeworld") == at_teacher_scale({}, 20.5, mode, "shapeworld")


def test_rarity_weighted_distillation_trains_and_changes_the_weights(tiny_world, tmp_path):
    """`distill_rarity` computes weights for every stored proposal and they reach training: the
    run differs from the uniform one, which equals a run without the setting."""
    from tests.regions.test_region_store import DIM, FakeProposer, FakeTeacher
    from vild.data.detection import DetectionDataset
    from vild.regions import embed_regions
    from vild.training.loop import distill_weights

    model_cfg, train_cfg, data, _, rows, vocab = _setup(tiny_world, mode="image")
    model_cfg = dataclasses.replace(model_cfg, embed_dim=DIM)
    text = F.normalize(torch.randn(len(vocab["names"]), DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    images = DetectionDataset(data.images_dir, data.annotations, with_masks=False)
    items = [(images.image_ids[i], images[i][0]) for i in range(len(images))]
    store = embed_regions(items, FakeProposer(), FakeTeacher(), tmp_path / "store", num_proposals=8, progress=False)
    data = dataclasses.replace(data, region_store=str(tmp_path / "store"))

    weights = distill_weights(str(tmp_path / "store"), dataclasses.replace(train_cfg, distill_rarity=1.0))
    assert set(weights) == set(store.image_ids)
    assert all(len(weights[i]) == len(store.get(i)[0]) for i in weights)
    assert torch.cat(list(weights.values())).std() > 0
    assert distill_weights(str(tmp_path / "store"), train_cfg) is None  # 0: the paper's uniform loss

    def train(name, **changes):
        out = train_detector(model_cfg, dataclasses.replace(train_cfg, **changes), data, text[rows],
                             tmp_path / name, vocabulary=vocab, all_text_embeddings=text, progress=False)
        return load_model(out).roi_heads.text_head.projection.weight

    uniform, explicit, rare = train("uniform"), train("explicit", distill_rarity=0.0), train("rare", distill_rarity=1.0)
    assert torch.equal(uniform, explicit) and not torch.equal(uniform, rare)
    # leaving out the labelled objects' parts and loose boxes reaches training too
    assert not torch.equal(uniform, train("skip", distill_skip_part_iou=0.1))


def test_skipped_parts_range_and_its_checks():
    from vild.errors import VildError
    from vild.model.config import ViLDConfig
    from vild.training.config import TrainConfig
    from vild.training.distill_selection import skipped_parts

    assert skipped_parts(TrainConfig(), ViLDConfig()) is None
    assert skipped_parts(TrainConfig(distill_skip_part_iou=0.1), ViLDConfig()) == (0.1, 0.5)
    assert skipped_parts(TrainConfig(distill_skip_part_iou=0.1), ViLDConfig(roi_fg_iou_thresh=0.6)) == (0.1, 0.6)
    with pytest.raises(VildError, match="below roi_fg_iou_thresh"):
        skipped_parts(TrainConfig(distill_skip_part_iou=0.5), ViLDConfig())
    with pytest.raises(ValueError, match="IoU in"):
        TrainConfig(distill_skip_part_iou=1.0)
