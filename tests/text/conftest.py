"""Tiny open_clip models for the text-classifier tests (random init, built in milliseconds)."""

from __future__ import annotations

import hashlib

import pytest
import torch


def tiny_clip(seed: int = 0, **text_overrides):
    """open_clip CLIP with a 2-layer, 32-wide text tower (real 49408-token vocabulary)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    text_cfg = dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)
    text_cfg.update(text_overrides)
    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32),
        text_cfg=CLIPTextCfg(**text_cfg),
    )
    return model.eval()


def tiny_custom_text_clip(seed: int = 0, **text_overrides):
    """open_clip CustomTextCLIP whose `.text` is a TextTransformer."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    torch.manual_seed(seed)
    text_cfg = dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)
    text_cfg.update(text_overrides)
    model = CustomTextCLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32),
        text_cfg=CLIPTextCfg(**text_cfg),
    )
    return model.eval()


def model_identity(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def make_teacher(model):
    import open_clip

    from vild.teacher.teacher import Teacher

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    return Teacher(
        model, tokenizer, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        identity=model_identity(model),
    )


@pytest.fixture(scope="session")
def models():
    """Factories: ``models.tiny_clip(seed, **text_cfg)``, ``models.tiny_custom_text_clip(...)``,
    ``models.teacher(model)``."""
    from types import SimpleNamespace

    return SimpleNamespace(tiny_clip=tiny_clip, tiny_custom_text_clip=tiny_custom_text_clip,
                           teacher=make_teacher, identity=model_identity)


@pytest.fixture(scope="session")
def tiny_teacher():
    return make_teacher(tiny_clip())


@pytest.fixture(scope="session")
def tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture()
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture()
def count_encoded(monkeypatch):
    """Counts the prompts that go through the text encoder (any mode)."""
    from vild.text.encode import TextEncoder

    counter = {"prompts": 0, "calls": 0}
    original = TextEncoder.encode_tokens

    def counting(self, tokens, **kwargs):
        counter["prompts"] += int(tokens.shape[0])
        counter["calls"] += 1
        return original(self, tokens, **kwargs)

    monkeypatch.setattr(TextEncoder, "encode_tokens", counting)
    return counter
