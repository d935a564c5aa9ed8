"""Teacher training on a tiny web corpus: loss goes down, the folder loads, bad inputs are clear."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vild.cli import main
from vild.errors import VildError
from vild.teacher import Teacher, TeacherTrainConfig, load_web_corpus, train_teacher
from vild.teacher.augment import augment

from .conftest import tiny_cfg, write_tiny_world

FAST = TeacherTrainConfig(steps=30, batch_size=24, lr=3e-3, warmup_steps=3, threads=1, precision="fp32",
                          pretrain_steps=20)


def test_training_reduces_the_loss_and_writes_a_loadable_teacher(tiny_world, tmp_path):
    out = tmp_path / "teacher"
    summary = train_teacher(tiny_world, out, FAST, model_cfg=tiny_cfg(), progress=False, log=None)
    assert summary["steps"] == 30 and summary["batch_size"] == 24
    assert summary["loss_last"] < summary["loss_first"] - 0.3
    assert 0.0 <= summary["val_top1_simple_prompts"] <= 1.0
    teacher = Teacher.load(out)
    assert teacher.identity == summary["identity"]
    assert teacher.image_size == 32 and teacher.embed_dim == 32
    info = json.loads((out / "vild_teacher.json").read_text())
    assert info["config"]["steps"] == 30
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"] == tiny_cfg()
    assert 0.2 < config["preprocess_cfg"]["mean"][0] < 0.8  # measured on the corpus
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher", "world"]  # no temp folders


def test_training_is_deterministic(tiny_world, tmp_path):
    cfg = TeacherTrainConfig(steps=3, batch_size=8, warmup_steps=1, precision="fp32", threads=1, pretrain_steps=3)
    a = train_teacher(tiny_world, tmp_path / "a", cfg, model_cfg=tiny_cfg(), progress=False, log=None)
    b = train_teacher(tiny_world, tmp_path / "b", cfg, model_cfg=tiny_cfg(), progress=False, log=None)
    assert a["identity"] == b["identity"]


def test_augment_keeps_hue_and_shapes():
    images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    images[:, 0] = 200  # pure red
    gen = torch.Generator().manual_seed(0)
    cfg = TeacherTrainConfig(aug_scale=(0.9, 1.0), aug_shift=0.0, aug_aspect=0.0)
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    out = augment(images, cfg, gen, mean=mean, std=std, out_size=24)
    assert out.shape == (4, 3, 24, 24)
    centre = out[:, :, 8:16, 8:16]
    # brightness / contrast act on all channels alike: green == blue, red well above: still red
    assert torch.allclose(centre[:, 1], centre[:, 2])
    assert torch.all(centre[:, 0] > centre[:, 1] + 0.5)


def test_cli_trains(tiny_world, tmp_path, capsys):
    out = tmp_path / "t"
    code = main(["train-teacher", str(tiny_world), "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--pretrain-steps", "2", "--threads", "1", "--quiet"])
    assert code == 0
    assert Teacher.load(out).image_size == 64  # the packaged vild-shapeworld-clip config
    assert main(["train-teacher", str(tiny_world), "--out", str(out), "--steps", "1", "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_bad_worlds(tmp_path):
    with pytest.raises(VildError, match="not found"):
        load_web_corpus(tmp_path / "missing")
    world = write_tiny_world(tmp_path / "w", n_train=6, n_val=3)
    (world / "web" / "train_captions.json").write_text(json.dumps(["only one caption"]))
    with pytest.raises(VildError, match="must match"):
        load_web_corpus(world)
    (world / "web" / "val.npz").write_bytes(b"not an npz")
    with pytest.raises(VildError):
        load_web_corpus(world, "val")
    np.savez(world / "web" / "train.npz", images=np.zeros((1, 4, 4), np.uint8), category_ids=np.zeros(1))
    with pytest.raises(VildError, match="uint8"):
        load_web_corpus(world)


def test_bad_settings_and_outputs(tiny_world, tmp_path):
    with pytest.raises(VildError, match="batch-size"):
        train_teacher(tiny_world, tmp_path / "t", TeacherTrainConfig(batch_size=1), log=None)
    with pytest.raises(VildError, match="lr"):
        train_teacher(tiny_world, tmp_path / "t", TeacherTrainConfig(lr=0), log=None)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(VildError, match="not a teacher folder"):
        train_teacher(tiny_world, foreign, FAST, model_cfg=tiny_cfg(), log=None)


def test_a_worker_process_draws_the_same_batches(tiny_world, tmp_path):
    """Every random branch of the stream on (colour dropout, subsampling, hue): the worker
    continues the same generators, so the teacher is the same."""
    cfg = TeacherTrainConfig(steps=6, batch_size=8, warmup_steps=1, precision="fp32", threads=1, pretrain_steps=2,
                             colour_dropout=0.5, hue_augment=0.5, subsample_captions=0.5, eval_every=0)
    a = train_teacher(tiny_world, tmp_path / "a", cfg, model_cfg=tiny_cfg(), progress=False, log=None, workers=0)
    b = train_teacher(tiny_world, tmp_path / "b", cfg, model_cfg=tiny_cfg(), progress=False, log=None, workers=1)
    assert a["identity"] == b["identity"] and a["loss_last"] == b["loss_last"]
    with pytest.raises(VildError, match="0 or 1"):
        train_teacher(tiny_world, tmp_path / "c", cfg, model_cfg=tiny_cfg(), progress=False, log=None, workers=2)


def test_a_non_finite_loss_stops_training_at_the_next_read_back(tiny_world, tmp_path, monkeypatch):
    import open_clip.loss

    class NanOnThirdCall(open_clip.loss.ClipLoss):
        calls = 0

        def forward(self, *args, **kwargs):
            NanOnThirdCall.calls += 1
            out = super().forward(*args, **kwargs)
            return out * float("nan") if NanOnThirdCall.calls == 3 else out

    monkeypatch.setattr(open_clip.loss, "ClipLoss", NanOnThirdCall)
    cfg = TeacherTrainConfig(steps=8, batch_size=8, warmup_steps=1, threads=1, pretrain_steps=0, eval_every=0)
    with pytest.raises(VildError, match="diverged by step 5"):  # losses are read back every 5 steps
        train_teacher(tiny_world, tmp_path / "t", cfg, model_cfg=tiny_cfg(), progress=False, log=None, workers=0)
    assert not (tmp_path / "t").exists()
