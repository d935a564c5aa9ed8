"""The custom open_clip architecture: registration, creation, tokenizer context."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

import vild.teacher.arch as arch_module
from vild.teacher import ARCH_NAME, create_clip, register
from vild.teacher.arch import CONFIG_PATH, model_config

from .conftest import tiny_cfg


def test_register_is_idempotent_and_visible_to_open_clip():
    assert register() == ARCH_NAME
    assert register() == ARCH_NAME
    assert ARCH_NAME in open_clip.list_models()
    assert open_clip.list_models().count(ARCH_NAME) == 1
    cfg = open_clip.get_model_config(ARCH_NAME)
    assert cfg["vision_cfg"]["image_size"] == 64
    assert CONFIG_PATH.is_file() and CONFIG_PATH.parent == Path(arch_module.__file__).parent


def test_open_clip_creates_the_packaged_architecture():
    register()
    model = open_clip.create_model(ARCH_NAME)
    cfg = model_config()
    assert model.visual.image_size == (64, 64)
    with torch.no_grad():
        img = model.encode_image(torch.zeros(2, 3, 64, 64))
        tok = open_clip.get_tokenizer(ARCH_NAME)
        txt = model.encode_text(tok(["a photo of a star."]))
    assert img.shape == (2, cfg["embed_dim"]) and txt.shape == (1, cfg["embed_dim"])
    assert tok.context_length == cfg["text_cfg"]["context_length"]


def test_create_clip_with_a_tiny_config():
    model, tokenizer, cfg = create_clip(tiny_cfg())
    assert cfg == tiny_cfg()
    assert tokenizer.context_length == 16
    with torch.no_grad():
        assert model.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 32)


def test_vild_prompts_fit_the_context_length():
    """The 63 ViLD prompts with the longest ShapeWorld names are not truncated."""
    templates = (Path(__file__).parents[2] / "src/vild/text/vild_prompt_templates.txt").read_text().splitlines()
    templates = [t for t in templates if t.strip()]
    names = ["six-sided polygon", "three-sided shape", "lightning bolt", "five-pointed star"]
    prompts = []
    for t in templates:
        for n in names:
            p = t.replace("{article}", "a").replace("{}", n)
            if p.startswith(("a ", "the ")):
                p = "This is " + p
            prompts.append(p)
    ctx = model_config()["text_cfg"]["context_length"]
    tok = open_clip.get_tokenizer(ARCH_NAME, context_length=ctx + 1)
    assert int((tok(prompts)[:, -1] != 0).sum()) == 0


def test_packaged_image_tower_is_the_timm_registered_cnn(tmp_path):
    import timm

    from vild.teacher import Teacher
    from vild.teacher.cnn import TIMM_NAME, ShapeWorldCNN

    register()
    assert timm.is_model(TIMM_NAME)
    model, tokenizer, cfg = create_clip()
    assert cfg["vision_cfg"]["timm_model_name"] == TIMM_NAME
    assert isinstance(model.visual.trunk, ShapeWorldCNN)
    model.eval()
    teacher = Teacher(model, tokenizer, image_size=64, mean=(0.5,) * 3, std=(0.25,) * 3, model_cfg=cfg)
    x = torch.rand(3, 3, 64, 64)
    before = teacher.encode_images(x)
    reloaded = Teacher.load(teacher.save(tmp_path / "t"))  # through open_clip's local-dir path
    assert isinstance(reloaded.model.visual.trunk, ShapeWorldCNN)
    assert torch.allclose(reloaded.encode_images(x), before, atol=1e-6)


def test_cnn_follows_the_timm_head_protocol():
    import pytest
    import timm

    from vild.teacher.cnn import TIMM_NAME, ShapeWorldCNN

    register()
    net = timm.create_model(TIMM_NAME, num_classes=5)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    net.reset_classifier(0, global_pool="max")
    assert net(torch.zeros(2, 3, 40, 40)).shape == (2, net.num_features)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(TIMM_NAME, pretrained=True)
    with pytest.raises(ValueError, match="global_pool"):
        ShapeWorldCNN().reset_classifier(0, global_pool="attn")
