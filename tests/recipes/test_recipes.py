"""Each recipe's data path end to end on a tiny fake dataset in the real format: prepare ->
dataset -> two training steps -> the recipe's evaluation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.recipes.fake_data import make_coco, make_lvis
from vild.cli import main
from vild.data.detection import DetectionDataset
from vild.errors import VildError
from vild.io import config_to_dict, load_json
from vild.recipes import (
    RECIPES,
    coco_categories,
    evaluate_recipe,
    load_split,
    prepare_recipe,
    recipe_configs,
)
from vild.training.loop import TrainData, train_detector
from vild.training.presets import preset
from vild.training.vocabulary import dataset_vocabulary

DIM = 16


def test_coco_splits_are_the_published_ones():
    names = {c["id"]: c["name"] for c in coco_categories()}
    assert len(names) == 80
    s48, s65 = load_split("coco-ov-48-17"), load_split("coco-ov-65-15")
    for split, (nb, nn, nu) in ((s48, (48, 17, 15)), (s65, (65, 15, 0))):
        base, novel, unused = ({c["id"] for c in split[k]} for k in ("base", "novel", "unused"))
        assert (len(base), len(novel), len(unused)) == (nb, nn, nu)
        assert not (base & novel) and not (base & unused) and not (novel & unused)
        assert base | novel | unused == set(names)
        assert all(names[c["id"]] == c["name"] for k in ("base", "novel", "unused") for c in split[k])
    novel48 = {c["name"] for c in s48["novel"]}
    assert novel48 == {"airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
                       "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors"}
    unseen65 = {c["name"] for c in s65["novel"]}
    assert unseen65 == {"airplane", "train", "parking meter", "cat", "bear", "suitcase", "frisbee",
                        "snowboard", "fork", "sandwich", "hot dog", "toilet", "mouse", "toaster", "hair drier"}


def test_lvis_recipes_carry_the_official_configuration():
    for name, backbone, weight in (("lvis-r50", "resnet50", 0.5), ("lvis-r152", "resnet152", 1.0)):
        model, train = recipe_configs(name)
        assert (model.backbone, model.min_size, model.temperature, model.distill_weight) == (backbone, 1024, 100.0, weight)
        assert model.head_conv_dims == (256,) * 4 and model.head_fc_dims == (1024,)
        assert model.roi_batch_size_per_image == 512 and model.roi_positive_fraction == 0.25
        assert model.box_coder_weights == (10.0, 10.0, 5.0, 5.0) and model.detections_per_image == 300
        assert (train.steps, train.batch_size, train.lr, train.weight_decay) == (180_000, 256, 0.32, 4e-5)
        assert (train.warmup_steps, train.warmup_factor, train.decay_at) == (1000, 0.01, (0.9, 0.95))
        assert train.scale_range == (0.1, 2.0) and train.output_size == 1024 and train.sync_bn
        assert train.batch_size % train.micro_batch_size == 0


@pytest.fixture(scope="module")
def fake_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return root, *make_coco(root)


@pytest.fixture(scope="module")
def fake_lvis(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis")
    return root, *make_lvis(root)


def _tiny_overrides():
    model = config_to_dict(preset("shapeworld-quick")[0])
    model.update(mode="text", embed_dim=DIM, min_size=96, max_size=96)
    train = dict(steps=2, batch_size=2, micro_batch_size=None, warmup_steps=1, output_size=96,
                 clip_grad_norm=1.0, lr=0.01, checkpoint_every=100, log_every=1)
    return model, train


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_data_path_end_to_end(name, fake_coco, fake_lvis, tmp_path):
    recipe = RECIPES[name]
    root, train_json, val_json = fake_lvis if recipe.dataset == "lvis" else fake_coco
    prepared = tmp_path / "prepared"
    info = prepare_recipe(name, images=root, train_annotations=train_json, val_annotations=val_json,
                          out=prepared)
    assert load_json(prepared / "recipe.json") == json.loads(json.dumps(info))
    assert info["commands"] and "torchrun" in info["commands"][0]
    train_file = prepared / info["train"]
    novel = set(info["novel_category_ids"])
    train_data = load_json(train_file)
    assert train_data["annotations"] and not any(a["category_id"] in novel for a in train_data["annotations"])
    val_data = load_json(prepared / info["val"])
    assert {a["category_id"] for a in val_data["annotations"]} & novel  # novel objects are evaluated
    if recipe.dataset == "coco":
        split = load_split(name)
        assert len(info["base_category_ids"]) + len(novel) == len(split["base"]) + len(split["novel"])
        unused = {c["id"] for c in split["unused"]}
        assert not any(a["category_id"] in unused for a in val_data["annotations"])
        assert {c["id"] for c in val_data["categories"] if c["novel"]} == novel
        raw = load_json(train_json)
        base = set(info["base_category_ids"])
        with_base = {a["image_id"] for a in raw["annotations"] if a["category_id"] in base}
        assert info["num_train_images"] == len(with_base) < len(raw["images"])  # as the split files
    else:
        assert info["num_train_images"] == 6  # LVIS keeps images whose objects are all rare

    vocab = dataset_vocabulary(train_file)
    assert {c for c, b in zip(vocab["category_ids"], vocab["base"]) if not b} == novel
    base_ids = tuple(c for c, b in zip(vocab["category_ids"], vocab["base"]) if b)
    dataset = DetectionDataset(info["images"], train_file, category_ids=base_ids)
    image, target = dataset[0]
    assert image.shape[0] == 3 and target["boxes"].shape[0] == target["labels"].shape[0] > 0

    model_over, train_over = _tiny_overrides()
    model_cfg, train_cfg = recipe_configs(name, model=model_over, train=train_over)
    text = F.normalize(torch.randn(len(vocab["names"]), DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    rows = [vocab["category_ids"].index(c) for c in base_ids]
    out = train_detector(model_cfg, train_cfg, TrainData(info["images"], str(train_file), base_ids),
                         text[rows], tmp_path / "model", vocabulary=vocab, all_text_embeddings=text,
                         progress=False)

    metrics = evaluate_recipe(prepared, out, max_images=3)
    if recipe.dataset == "lvis":
        assert {"APr", "APc", "APf", "AP"} <= set(metrics["lvis"]["segm"])
    else:
        box = metrics["generalized"]["bbox"]
        assert {"AP50_novel", "AP50_base", "Recall@100_novel", "Recall@100_base", "AP50_harmonic"} <= set(box)
        assert {"AP50", "Recall@100"} <= set(metrics["zero_shot"]["bbox"])
    assert metrics["timing"]["images"] == 3


def test_prepare_cli_and_errors(fake_coco, fake_lvis, tmp_path, capsys):
    root, train_json, val_json = fake_coco
    args = ["recipe", "prepare", "coco-ov-65-15", "--images", str(root), "--train-annotations",
            str(train_json), "--val-annotations", str(val_json), "--out", str(tmp_path / "p")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "65 base and 15 novel" in out and "vild recipe eval" in out
    # an LVIS recipe refuses COCO files, a COCO recipe refuses LVIS files
    lroot, ltrain, lval = fake_lvis
    with pytest.raises(VildError, match="not LVIS v1"):
        prepare_recipe("lvis-r50", images=root, train_annotations=train_json, val_annotations=val_json,
                       out=tmp_path / "x")
    with pytest.raises(VildError, match="not COCO 2017"):
        prepare_recipe("coco-ov-48-17", images=lroot, train_annotations=ltrain, val_annotations=lval,
                       out=tmp_path / "y")
    # missing images are an error unless allowed
    missing = root / "val2017" / "000000001001.jpg"
    saved = missing.read_bytes()
    missing.unlink()
    try:
        assert main([*args[:-1], str(tmp_path / "q")]) == 1
        assert "missing" in capsys.readouterr().err
        info = prepare_recipe("coco-ov-65-15", images=root, train_annotations=train_json,
                              val_annotations=val_json, out=tmp_path / "r", allow_missing=True)
        assert info["missing_images"]["val"] == 1
    finally:
        missing.write_bytes(saved)
    assert main(["recipe", "show", "coco-ov-48-17"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["batch_size"] == 256
