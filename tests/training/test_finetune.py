"""`vild train --init`: fine-tuning a trained model on new data and a new vocabulary."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.training._tiny import tiny_training
from vild.cli import main
from vild.errors import VildError
from vild.io import load_json
from vild.model import build_detector
from vild.training.checkpoint import load_model, load_vocabulary, save_model
from vild.training.finetune import initialise_from
from vild.training.vocabulary import world_paths


@pytest.fixture(scope="module")
def init_model(tiny_world, tmp_path_factory):
    """A ViLD-ensemble model folder trained 2 steps on the base categories (16-d)."""
    from vild.training.loop import train_detector

    model_cfg, train_cfg, data, text = tiny_training(tiny_world, steps=2)
    model_cfg = dataclasses.replace(model_cfg, mode="text")
    out = tmp_path_factory.mktemp("init") / "text"
    return train_detector(model_cfg, train_cfg, data, text, out, progress=False)


def _cli(tiny_world, teacher, out, *extra):
    paths = world_paths(tiny_world)
    return ["train", "--images", str(paths["train_images"]), "--annotations", str(paths["train_all"]),
            *(["--teacher", str(teacher)] if teacher else []), "--out", str(out), "--preset",
            "shapeworld-quick", "--steps", "2", "--set", "batch_size=2", "--set", "warmup_steps=1",
            "--threads", "1", "--no-progress", *extra]


def test_initialise_from_reports_fresh_and_unused_weights(init_model):
    config = load_model(init_model).config
    ensemble = build_detector(dataclasses.replace(config, mode="ensemble"))
    report = initialise_from(ensemble, init_model)
    saved = load_file(str(init_model / "model.safetensors"))
    state = ensemble.state_dict()
    assert report.loaded and all(torch.equal(state[k], saved[k]) for k in report.loaded)
    assert set(report.loaded) == set(saved) and not report.unused
    assert report.fresh and all(k.startswith("roi_heads.image_head.") for k in report.fresh)
    assert "fresh" in report.summary() and "roi_heads.image_head.*" in report.summary()
    # back the other way: a ViLD-text model has no use for a distillation head
    ensemble_dir = init_model.parent / "ensemble-weights"
    save_model(ensemble_dir, ensemble)
    back = initialise_from(build_detector(config), ensemble_dir)
    assert not back.fresh and set(back.unused) == set(report.fresh)
    assert "unused: roi_heads.image_head.*" in back.summary()


def test_train_init_builds_the_region_store_and_saves_the_new_vocabulary(
        tiny_world, tiny_teacher_dir, init_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VILD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "ft"
    argv = _cli(tiny_world, tiny_teacher_dir, out, "--init", str(init_model), "--mode", "ensemble",
                "--num-proposals", "5")
    assert main(argv) == 0, capsys.readouterr().err
    log = capsys.readouterr().out
    assert f"no --region-store: embedding the top 5 proposals of {init_model}'s RPN" in log
    assert "init: " in log and "fresh (not in it or another shape): roi_heads.image_head.*" in log
    store = load_json(out / "regions" / "manifest.json")
    assert store["complete"] and store["num_proposals"] == 5 and store["embed_dim"] == 16
    # the init model's architecture and temperatures, the asked mode; the preset's schedule
    init_cfg, cfg = load_model(init_model).config, load_model(out).config
    assert cfg == dataclasses.replace(init_cfg, mode="ensemble")
    train_cfg = load_json(out / "train_config.json")
    assert train_cfg["init_from"] == str(init_model) and train_cfg["steps"] == 2
    # the default vocabulary: this dataset's categories, "base" = labelled here
    annotations = load_json(world_paths(tiny_world)["train_all"])
    labelled = {a["category_id"] for a in annotations["annotations"]}
    vocab, text = load_vocabulary(out)
    assert vocab["category_ids"] == sorted(c["id"] for c in annotations["categories"])
    assert vocab["base"] == [c in labelled for c in vocab["category_ids"]]
    assert text.shape == (len(vocab["names"]), 16)
    # a rerun without --resume is refused at once; with it, the finished folder is left as it is
    weights = (out / "model.safetensors").read_bytes()
    assert main(argv) == 1 and "already holds a trained model" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert (out / "model.safetensors").read_bytes() == weights
    assert "embedding the top" not in capsys.readouterr().out


def test_train_init_text_mode_kept_without_store(tiny_world, tiny_teacher_dir, init_model, tmp_path,
                                                 monkeypatch, capsys):
    monkeypatch.setenv("VILD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "ft"
    assert main(_cli(tiny_world, tiny_teacher_dir, out, "--init", str(init_model))) == 0
    assert load_model(out).config.mode == "text"  # taken from the init model
    assert not (out / "regions").exists()
    assert "weights loaded from" in capsys.readouterr().out


def test_train_init_defaults_to_the_teacher_the_init_model_names(
        tiny_world, tiny_teacher_dir, init_model, tmp_path, monkeypatch):
    import shutil

    from vild.teacher import Teacher
    from vild.training.checkpoint import save_vocabulary

    monkeypatch.setenv("VILD_CACHE_DIR", str(tmp_path / "cache"))
    init = tmp_path / "named"
    shutil.copytree(init_model, init)
    identity = Teacher.load(str(tiny_teacher_dir)).identity
    save_vocabulary(init, {"names": ["x"], "synonyms": [[]], "category_ids": [1], "base": [True],
                           "teacher": {"name": str(tiny_teacher_dir), "identity": identity}},
                    torch.zeros(1, 16))
    out = tmp_path / "ft"
    assert main(_cli(tiny_world, None, out, "--init", str(init))) == 0
    vocab, _ = load_vocabulary(out)
    assert vocab["teacher"] == {"name": str(tiny_teacher_dir), "identity": identity}


def _no_categories(tmp_path, tiny_world):
    data = load_json(world_paths(tiny_world)["train_all"])
    path = tmp_path / "nocats.json"
    path.write_text(json.dumps(dict(data, categories=[])))
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "is neither a model folder nor a registered model name"),
    ("incomplete", "is not a trained model folder (model.safetensors missing)"),
    ("dim", "embeds regions in 8 dimensions, the teacher in 16"),
    ("categories", "has no categories"),
    ("store", "holds 8-d embeddings, the model embeds in 16"),
    ("no teacher", "does not say which teacher it was trained with: give --teacher"),
])
def test_train_init_errors_are_one_line(case, message, tiny_world, tiny_teacher_dir, init_model,
                                        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VILD_CACHE_DIR", str(tmp_path / "cache"))
    init, extra = init_model, []
    argv = _cli(tiny_world, None if case == "no teacher" else tiny_teacher_dir, tmp_path / "out")
    if case == "missing":
        init = tmp_path / "nowhere"
    elif case == "incomplete":
        init = tmp_path / "half"
        init.mkdir()
        (init / "model_config.json").write_text((init_model / "model_config.json").read_text())
    elif case == "dim":
        init = tmp_path / "dim8"
        save_model(init, build_detector(dataclasses.replace(load_model(init_model).config, embed_dim=8)))
    elif case == "categories":
        argv[argv.index("--annotations") + 1] = str(_no_categories(tmp_path, tiny_world))
    elif case == "store":
        store = tmp_path / "store"
        store.mkdir()
        (store / "manifest.json").write_text(json.dumps({"format": "vild-region-store", "embed_dim": 8}))
        extra = ["--mode", "ensemble", "--region-store", str(store)]
    assert main(argv + ["--init", str(init), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_init_by_registered_name_resolves_the_bundled_folder():
    from vild.inference.registry import DEFAULT_MODEL, assets_dir, is_installed, REGISTRY
    from vild.training.cli import _init_folder

    if not is_installed(REGISTRY[DEFAULT_MODEL]):
        pytest.skip("the bundled model is not installed in this checkout")
    assert _init_folder(DEFAULT_MODEL) == assets_dir() / "models" / DEFAULT_MODEL
    with pytest.raises(VildError, match="neither a model folder"):
        from vild.training.finetune import check_init_folder

        check_init_folder(_init_folder("no-such-model"), "no-such-model")
