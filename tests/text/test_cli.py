"""`vild build-classifier` and the vocabulary readers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vild.cli import main
from vild.errors import VildError, VocabularyError
from vild.text import TextClassifier
from vild.text.vocab import parse_vocab_string, read_vocab_file, vocabulary_from_lvis, vocabulary_from_world


def test_help_is_instant_and_lists_options():
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys; from vild.cli import main; rc = main(['build-classifier', '--help']);"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    for opt in ("--teacher", "--vocab", "--vocab-file", "--world", "--templates", "--cache-dir", "--out"):
        assert opt in out.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, vild.text.cli; print('torch' in sys.modules)"],
        capture_output=True, text=True,
    )
    assert probe.stdout.strip() == "False"  # no heavy imports at registration


def test_parse_vocab_string():
    assert parse_vocab_string("circle, star|pentagram ,, square") == [
        ["circle"], ["star", "pentagram"], ["square"]]
    with pytest.raises(VocabularyError):
        parse_vocab_string(" , ")


def test_read_vocab_file(tmp_path):
    f = tmp_path / "vocab.txt"
    f.write_text("# shapes\ncircle\n\nstar | pentagram\n  bow_(weapon)  \n", encoding="utf-8")
    assert read_vocab_file(f) == [["circle"], ["star", "pentagram"], ["bow_(weapon)"]]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(VocabularyError):
        read_vocab_file(tmp_path / "empty.txt")
    with pytest.raises(VildError, match="not found"):
        read_vocab_file(tmp_path / "missing.txt")


def _world(tmp_path):
    cats = [
        {"id": 2, "name": "star", "synonyms": ["pentagram"], "frequency": "c", "novel": False},
        {"id": 1, "name": "lightning_bolt", "synonyms": [], "frequency": "f", "novel": False},
        {"id": 3, "name": "heart", "synonyms": ["love_heart", "heart"], "frequency": "r", "novel": True},
    ]
    (tmp_path / "world.json").write_text(json.dumps({"seed": 0, "categories": cats}))
    return tmp_path


def test_vocabulary_from_world_and_lvis(tmp_path):
    expected = [["lightning_bolt"], ["star", "pentagram"], ["heart", "love_heart", "heart"]]
    assert vocabulary_from_world(_world(tmp_path)) == expected
    assert vocabulary_from_lvis(tmp_path / "world.json") == expected
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "world.json").write_text(json.dumps({"categories": [{"id": 1}]}))
    with pytest.raises(VildError, match="malformed"):
        vocabulary_from_world(tmp_path / "bad")


@pytest.fixture()
def fake_load(monkeypatch, tiny_teacher):
    """Teacher.load returning the tiny teacher, whatever the teacher package provides."""
    from vild.teacher.teacher import Teacher

    calls = []

    def load(name, *args, **kwargs):
        calls.append(name)
        return tiny_teacher

    monkeypatch.setattr(Teacher, "load", staticmethod(load), raising=False)
    return calls


def test_cli_builds_and_saves(tmp_path, fake_load, capsys):
    out = tmp_path / "clf.safetensors"
    rc = main(["build-classifier", "--teacher", "tiny", "--world", str(_world(tmp_path)),
               "--cache-dir", str(tmp_path / "cache"), "--templates", "single", "--out", str(out)])
    assert rc == 0 and fake_load == ["tiny"]
    clf = TextClassifier.load(out)
    assert clf.names == ["lightning_bolt", "star", "heart"]
    assert clf.synonyms[2] == ["heart", "love heart"]
    assert clf.embeddings.shape == (3, 16)
    assert "3 categories" in capsys.readouterr().out
    vocab = tmp_path / "v.txt"
    vocab.write_text("circle\nstar|pentagram\n")
    assert main(["build-classifier", "--teacher", "tiny", "--vocab-file", str(vocab), "--no-cache",
                 "--no-progress", "--out", str(out)]) == 0
    assert TextClassifier.load(out).names == ["circle", "star"]


def test_cli_errors_are_one_line(tmp_path, fake_load, capsys):
    rc = main(["build-classifier", "--teacher", "tiny", "--vocab", "apple,Apple", "--no-cache",
               "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and "duplicate category" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_with_a_teacher_folder(tmp_path, models):
    """End to end through the real Teacher.load on an open_clip local-dir folder."""
    from safetensors.torch import save_file

    model = models.tiny_clip(seed=3)
    folder = tmp_path / "teacher"
    folder.mkdir()
    cfg = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "image_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    out = tmp_path / "clf.safetensors"
    rc = main(["build-classifier", "--teacher", str(folder), "--vocab", "circle,star|pentagram",
               "--cache-dir", str(tmp_path / "cache"), "--templates", "single", "--out", str(out)])
    assert rc == 0
    clf = TextClassifier.load(out)
    with torch.inference_mode():
        ref = model.encode_text(__import__("open_clip").get_tokenizer("ViT-B-32")(
            ["This is a photo of a circle."])).float()
    assert torch.allclose(clf.embeddings[0], ref[0] / ref[0].norm(), atol=1e-5)
