"""Every way of not having weights is one clear WeightsUnavailableError line, offline and fast."""

from __future__ import annotations

import json
import pickle
import shutil
import time

import huggingface_hub.constants
import pytest
import torch

from vild.cli import main
from vild.errors import VildError, WeightsUnavailableError
from vild.teacher import Teacher
from vild.teacher.teacher import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def load_error(spec, **kwargs) -> str:
    with pytest.raises(WeightsUnavailableError) as info:
        Teacher.load(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    assert info.value.__cause__ is None or info.value.__suppress_context__
    return message


def test_missing_folder(tmp_path):
    msg = load_error(tmp_path / "nope")
    assert "does not exist" in msg and "vild train-teacher" in msg
    assert "does not exist" in load_error(f"local-dir:{tmp_path / 'nope'}")
    assert "does not exist" in load_error("./not/a/teacher")


def test_a_file_is_not_a_folder(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"hello")
    assert "is a file, not a teacher folder" in load_error(f)


def test_folder_without_config_or_weights(tmp_path, tiny_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"has no {CONFIG_NAME}" in load_error(empty)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_folder, no_weights)
    (no_weights / WEIGHTS_NAME).unlink()
    assert "has no weights" in load_error(no_weights)  # open_clip alone would random-init here


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    (json.dumps({"preprocess_cfg": {}}), "no 'model_cfg'"),
])
def test_bad_config(tiny_folder, content, expected):
    (tiny_folder / CONFIG_NAME).write_text(content)
    assert expected in load_error(tiny_folder)


def test_corrupt_safetensors(tiny_folder):
    (tiny_folder / WEIGHTS_NAME).write_bytes(b"\x00" * 7 + b"garbage, not a safetensors file")
    msg = load_error(tiny_folder)
    assert "could not load teacher folder" in msg and "corrupt" in msg


def test_truncated_safetensors(tiny_folder):
    data = (tiny_folder / WEIGHTS_NAME).read_bytes()
    (tiny_folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    assert "could not load teacher folder" in load_error(tiny_folder)


def test_weights_of_another_architecture(tmp_path, tiny_folder):
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(3)}, str(tiny_folder / WEIGHTS_NAME))
    assert "could not load teacher folder" in load_error(tiny_folder)


def test_pickles_are_never_unpickled(tiny_folder, tmp_path):
    (tiny_folder / WEIGHTS_NAME).unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tiny_folder / "open_clip_pytorch_model.bin").write_bytes(pickle.dumps({"state_dict": Evil()}))
    assert "could not load teacher folder" in load_error(tiny_folder)
    (tiny_folder / "open_clip_pytorch_model.bin").write_text("this is not a checkpoint at all")
    assert "could not load teacher folder" in load_error(tiny_folder)


def test_hf_hub_offline_bogus_repo(offline):
    start = time.perf_counter()
    msg = load_error("hf-hub:no-such-org/no-such-clip")
    assert "hf-hub:no-such-org/no-such-clip" in msg and "HF_HUB_OFFLINE" in msg
    assert time.perf_counter() - start < 10
    assert "ORG/REPO" in load_error("hf-hub:justaname")


def test_known_tag_offline_is_a_clear_error(offline):
    msg = load_error("ViT-B-32:openai")
    assert "ViT-B-32" in msg and "openai" in msg and "HF_HUB_OFFLINE" in msg


def test_unknown_tag_lists_the_known_ones():
    msg = load_error("ViT-B-32:not_a_tag")
    assert "unknown pretrained tag 'not_a_tag'" in msg and "openai" in msg and "laion2b_s34b_b79k" in msg


def test_unknown_architecture_and_missing_tag():
    assert "unknown open_clip architecture" in load_error("ViT-Q-99:openai")
    msg = load_error("ViT-B-32")
    assert "ViT-B-32:TAG" in msg and "openai" in msg
    assert "no such folder" in load_error("definitely-not-a-teacher")
    assert "empty" in load_error("  ")


def test_arch_with_a_checkpoint_file(tmp_path, tiny_teacher):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert "could not load open_clip ViT-B-32" in load_error(f"ViT-B-32:{bad}")


def test_cli_prints_one_line_without_traceback(tmp_path, capsys):
    code = main(["train-teacher", str(tmp_path / "no-world"), "--out", str(tmp_path / "t"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("vild train-teacher: error:") and err.count("\n") == 1
    assert "Traceback" not in err
    assert issubclass(WeightsUnavailableError, VildError)
