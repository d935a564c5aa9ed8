"""Caption-word pretraining of the image tower, and contrastive training with the trunk locked."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vild.teacher import TeacherTrainConfig, train_teacher
from vild.teacher.arch import create_clip
from vild.teacher.pretrain import caption_vocabulary, pretrain_image_tower, word_targets

from .conftest import tiny_cfg


def tiny_cnn_cfg() -> dict:
    cfg = tiny_cfg()
    cfg["vision_cfg"] = {"image_size": 32, "timm_model_name": "vild_shapeworld_cnn",
                         "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "linear"}
    return cfg


def test_vocabulary_and_targets():
    captions = ["a red square.", "A red circle", "a blue square", "zebra"]
    vocab = caption_vocabulary(captions, min_count=2)
    assert vocab == ["a", "red", "square"]
    t = word_targets(captions, vocab)
    assert torch.allclose(t[0], torch.tensor([1 / 3, 1 / 3, 1 / 3]))
    assert torch.allclose(t[1], torch.tensor([0.5, 0.5, 0.0]))
    assert t[3].sum() == 0  # no known word: the row is skipped in training


def test_idf_weighting_moves_target_mass_to_rare_words():
    captions = ["a red square"] * 3 + ["a blue circle"] * 5 + ["a red circle"] * 2
    vocab = caption_vocabulary(captions, min_count=1)
    uniform = word_targets(captions, vocab)
    for power in (1.0, 2.0):
        t = word_targets(captions, vocab, idf_power=power)
        assert torch.allclose(t.sum(1), torch.ones(len(captions)))
        row = t[0]  # "a red square": "a" is in every caption (idf 0), "square" in 3 of 10
        assert row[vocab.index("a")] < 1e-6
        assert row[vocab.index("square")] > row[vocab.index("red")] > 0  # 3 of 10 vs 5 of 10
    assert torch.equal(word_targets(captions, vocab, idf_power=0.0), uniform)
    with pytest.raises(ValueError, match="idf_power"):
        word_targets(captions, vocab, idf_power=-1.0)


def test_pretraining_lowers_the_word_loss():
    torch.manual_seed(0)
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    captions = []
    for i in range(64):
        colour = i % 2
        images[i, colour] = 255  # red or green image
        captions.append("a red thing" if colour == 0 else "a green thing")
    model, _, _ = create_clip(tiny_cnn_cfg())
    summary = pretrain_image_tower(
        model.visual, images, captions, steps=40, batch_size=16, lr=3e-3, weight_decay=0.0,
        warmup_steps=2, make_batch=lambda x, g: x.float() / 255 - 0.5,
        generator=torch.Generator().manual_seed(0), min_count=2, progress=False)
    assert summary["vocabulary_size"] == 4
    # uniform over 4 words: ln 4 = 1.386; the floor is the targets' entropy ln 3 = 1.0986,
    # reached only when the colour word is predicted from the image
    assert summary["loss_last"] < summary["loss_first"]
    assert summary["loss_last"] < 1.11


def test_locked_trunk_keeps_its_pretrained_weights(tiny_world, tmp_path):
    def run(name, steps, lock):
        cfg = TeacherTrainConfig(steps=steps, batch_size=16, warmup_steps=1, precision="fp32", threads=1,
                                 pretrain_steps=3, lock_image_trunk=lock)
        summary = train_teacher(tiny_world, tmp_path / name, cfg, model_cfg=tiny_cnn_cfg(), progress=False, log=None)
        return summary, load_file(str(tmp_path / name / "open_clip_model.safetensors"))

    summary, short = run("short", 1, True)
    assert summary["word_pretraining"]["vocabulary_size"] > 0
    _, long = run("long", 5, True)
    _, free = run("free", 5, False)
    trunk = [k for k in short if k.startswith("visual.trunk.")]
    text = [k for k in short if k.startswith("transformer.")]
    assert trunk and text
    # same pretraining (same seed); a locked trunk (weights and BatchNorm statistics) does not
    # move during contrastive training, the text tower and an unlocked trunk do
    assert all(torch.equal(short[k], long[k]) for k in trunk)
    assert any(not torch.equal(short[k], long[k]) for k in text)
    assert any(not torch.equal(long[k], free[k]) for k in trunk)


def test_lock_needs_a_timm_tower(tiny_world, tmp_path):
    import pytest

    from vild.errors import VildError

    cfg = TeacherTrainConfig(steps=2, batch_size=8, warmup_steps=1, precision="fp32", threads=1,
                             lock_image_trunk=True)
    with pytest.raises(VildError, match="timm image tower"):
        train_teacher(tiny_world, tmp_path / "t", cfg, model_cfg=tiny_cfg(), progress=False, log=None)


def test_pretraining_trains_a_given_head_and_checks_its_shape():
    images = torch.zeros(32, 3, 32, 32, dtype=torch.uint8)
    images[::2, 0] = 255
    captions = ["a red thing" if i % 2 == 0 else "a green thing" for i in range(32)]
    model, _, cfg = create_clip(tiny_cnn_cfg())
    kwargs = dict(steps=3, batch_size=8, lr=3e-3, weight_decay=0.0, warmup_steps=1,
                  make_batch=lambda x, g: x.float() / 255 - 0.5, generator=torch.Generator().manual_seed(0),
                  min_count=2, progress=False, loss="softmax")
    head = torch.nn.Linear(cfg["embed_dim"], 4)
    before = head.weight.detach().clone()
    pretrain_image_tower(model.visual, images, captions, head=head, **kwargs)
    assert not torch.equal(head.weight, before)  # trained in place, usable afterwards
    with pytest.raises(ValueError, match="head must be Linear"):
        pretrain_image_tower(model.visual, images, captions, head=torch.nn.Linear(cfg["embed_dim"], 5), **kwargs)


def test_word_loss_during_contrastive_training(tiny_world, tmp_path):
    def run(name, weight):
        cfg = TeacherTrainConfig(steps=3, batch_size=16, warmup_steps=1, threads=1, pretrain_steps=2,
                                 word_loss_weight=weight, eval_every=0)
        summary = train_teacher(tiny_world, tmp_path / name, cfg, model_cfg=tiny_cnn_cfg(), progress=False, log=None)
        return summary, load_file(str(tmp_path / name / "open_clip_model.safetensors"))

    plain, plain_weights = run("plain", 0.0)
    worded, worded_weights = run("worded", 1.0)
    assert plain["word_loss_last"] is None
    assert worded["word_loss_last"] > 0
    assert plain_weights.keys() == worded_weights.keys()  # the word head is not part of the teacher
    # identical pretraining, so the trunks differ because of the word loss in contrastive training
    assert plain["word_pretraining"]["loss_last"] == worded["word_pretraining"]["loss_last"]
    trunk = [k for k in plain_weights if k.startswith("visual.trunk.")]
    assert any(not torch.equal(plain_weights[k], worded_weights[k]) for k in trunk)
    from vild.errors import VildError

    with pytest.raises(VildError, match="word_loss_weight"):
        train_teacher(tiny_world, tmp_path / "bad", TeacherTrainConfig(word_loss_weight=-1.0), log=None)
