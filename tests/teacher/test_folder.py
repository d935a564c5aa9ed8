"""Teacher folders: save -> load round trips through open_clip's local-dir path, identity, atomicity."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from vild.errors import VildError
from vild.teacher import Teacher, save_teacher_folder, weights_identity
from vild.teacher.teacher import CONFIG_NAME, WEIGHTS_NAME

from .conftest import make_tiny_teacher

TEXTS = ["a photo of a red star.", "circle", "a blurry photo of a large hexagon with stripes."]


def test_save_writes_the_open_clip_layout(tiny_folder):
    names = sorted(p.name for p in tiny_folder.iterdir())
    assert names == [CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((tiny_folder / CONFIG_NAME).read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"}
    assert config["preprocess_cfg"]["size"] == 32
    assert config["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert not [p for p in tiny_folder.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_round_trip_gives_identical_embeddings(tiny_teacher, tiny_folder):
    loaded = Teacher.load(tiny_folder)
    images = torch.rand(3, 3, 40, 48)
    assert torch.equal(loaded.encode_text(TEXTS), tiny_teacher.encode_text(TEXTS))
    assert torch.equal(loaded.encode_images(images), tiny_teacher.encode_images(images))
    assert loaded.identity == tiny_teacher.identity
    assert loaded.embed_dim == 32 and loaded.image_size == 32
    assert loaded.tokenizer.context_length == 16
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    # "local-dir:" prefix and str paths are the same thing
    assert Teacher.load(f"local-dir:{tiny_folder}").identity == tiny_teacher.identity


def test_folder_loads_with_open_clip_directly(tiny_teacher, tiny_folder):
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(tiny_folder))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(tiny_folder))
    model.eval()
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
    assert torch.allclose(text, tiny_teacher.encode_text(TEXTS), atol=1e-6)
    assert weights_identity(model) == tiny_teacher.identity


def test_identity_is_stable_and_depends_on_the_weights(tiny_teacher):
    again = make_tiny_teacher(0)
    other = make_tiny_teacher(1)
    assert len(tiny_teacher.identity) == 16
    assert again.identity == tiny_teacher.identity
    assert other.identity != tiny_teacher.identity
    nudged = make_tiny_teacher(0)
    with torch.no_grad():
        nudged.model.logit_scale.add_(1e-3)  # a 0-dim parameter counts too
    assert weights_identity(nudged.model) != tiny_teacher.identity


def test_resave_replaces_the_folder_atomically(tmp_path, tiny_teacher):
    path = tmp_path / "t"
    tiny_teacher.save(path)
    other = make_tiny_teacher(1)
    other.save(path)
    assert Teacher.load(path).identity == other.identity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_interrupted_save_leaves_nothing_loadable(tmp_path, tiny_teacher, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        tiny_teacher.save(tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_clobber_a_foreign_folder(tmp_path, tiny_teacher):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(VildError, match="not a teacher folder"):
        tiny_teacher.save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"


def test_save_with_info_and_without_config(tmp_path, tiny_teacher):
    path = save_teacher_folder(tiny_teacher.model, tmp_path / "t", model_cfg=tiny_teacher.model_cfg,
                               preprocess_cfg=tiny_teacher.preprocess_cfg, info={"steps": 3})
    assert json.loads((path / "vild_teacher.json").read_text()) == {"steps": 3}
    assert Teacher.load(path).identity == tiny_teacher.identity
    bare = Teacher(tiny_teacher.model, tiny_teacher.tokenizer, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(VildError, match="model config"):
        bare.save(tmp_path / "u")
