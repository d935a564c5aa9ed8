"""The custom open_clip architecture of the ShapeWorld-OV teacher, registered with open_clip.

`vild-shapeworld-clip` is an ordinary open_clip model config (`vild-shapeworld-clip.json`,
shipped next to this file) so the teacher is built, tokenised, saved and loaded by open_clip
itself, exactly like a real pretrained CLIP:

    from vild.teacher.arch import ARCH_NAME, register
    register()
    model = open_clip.create_model(ARCH_NAME)          # random init
    tokenizer = open_clip.get_tokenizer(ARCH_NAME)     # CLIP BPE, context length 32
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

ARCH_NAME = "vild-shapeworld-clip"
CONFIG_PATH = Path(__file__).with_name(f"{ARCH_NAME}.json")

# Normalisation of the ShapeWorld-OV teacher (mean/std of ShapeWorld web images, rounded;
# `train_teacher` measures them on the corpus it trains on and stores them with the weights).
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)


def register() -> str:
    """Register `vild-shapeworld-clip` with open_clip (idempotent); returns the name."""
    import open_clip

    from vild.teacher.cnn import register_timm

    register_timm()  # the image tower is a timm model of ours (see vild.teacher.cnn)
    if ARCH_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)
    return ARCH_NAME


def model_config() -> dict:
    """A fresh copy of the packaged `vild-shapeworld-clip` model config."""
    return copy.deepcopy(json.loads(CONFIG_PATH.read_text(encoding="utf-8")))


def create_clip(model_cfg: dict | None = None, *, device: str = "cpu"):
    """A randomly initialised open_clip CLIP and its tokenizer: `(model, tokenizer, model_cfg)`.

    model_cfg: a full open_clip model config ({"embed_dim", "vision_cfg", "text_cfg", ...});
    None -> the packaged `vild-shapeworld-clip` config. Built through
    `open_clip.create_model`, so any config open_clip accepts works (tests use tiny ones).
    """
    import open_clip

    register()
    cfg = model_config() if model_cfg is None else copy.deepcopy(model_cfg)
    overrides = {k: copy.deepcopy(v) for k, v in cfg.items()}
    from vild.teacher.factory import _quiet_open_clip

    force_custom_text = bool(overrides.pop("custom_text", False))
    with _quiet_open_clip():  # "no pretrained weights loaded" is the point here
        model = open_clip.create_model(ARCH_NAME, pretrained=None, device=device, output_dict=True,
                                       force_custom_text=force_custom_text, **overrides)
    context_length = int(cfg.get("text_cfg", {}).get("context_length", 77))
    tokenizer = open_clip.get_tokenizer(ARCH_NAME, context_length=context_length)
    return model, tokenizer, cfg
