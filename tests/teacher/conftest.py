"""Fixtures for the teacher tests: tiny open_clip configs, tiny random teachers, tiny worlds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vild.data.world.layout import WORLD_VERSION

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_cfg() -> dict:
    return json.loads(json.dumps(TINY_CFG))


def make_tiny_teacher(seed: int = 0):
    from vild.teacher import Teacher, create_clip

    torch.manual_seed(seed)
    model, tokenizer, cfg = create_clip(tiny_cfg())
    return Teacher(model, tokenizer, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                   model_cfg=cfg, name=f"tiny-{seed}")


@pytest.fixture
def tiny_teacher():
    return make_tiny_teacher(0)


@pytest.fixture
def tiny_folder(tmp_path, tiny_teacher):
    path = tmp_path / "teacher"
    tiny_teacher.save(path)
    return path


SHAPES = ("square", "circle", "bar")
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}


def _draw(shape: str, rgb, size: int, rng: np.random.Generator) -> np.ndarray:
    img = (rng.integers(90, 140, (size, size, 3))).astype(np.uint8)  # grey noisy background
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-2, 2, 2)
    r = size * rng.uniform(0.25, 0.35)
    if shape == "square":
        m = (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r)
    elif shape == "circle":
        m = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r
    else:
        m = (abs(yy - c[0]) < r * 0.3) & (abs(xx - c[1]) < r * 1.2)
    img[m] = rgb
    return img


def write_tiny_world(root, n_train: int = 96, n_val: int = 24, size: int = 32, seed: int = 0):
    """A minimal ShapeWorld-OV-shaped folder: world.json + web/{train,val}.npz + captions."""
    rng = np.random.default_rng(seed)
    (root / "web").mkdir(parents=True, exist_ok=True)
    cats = [{"id": i + 1, "name": s, "synonyms": [f"{s} shape"], "frequency": "f" if i < 2 else "r",
             "novel": i == 2} for i, s in enumerate(SHAPES)]
    (root / "world.json").write_text(json.dumps({"version": WORLD_VERSION, "categories": cats}))
    colours = list(COLOURS)
    for split, n in (("train", n_train), ("val", n_val)):
        images, ids, captions = [], [], []
        for i in range(n):
            k = i % len(SHAPES)
            colour = colours[int(rng.integers(len(colours)))]
            images.append(_draw(SHAPES[k], COLOURS[colour], size, rng))
            ids.append(k + 1)
            captions.append(f"a photo of a {colour} {SHAPES[k]}.")
        np.savez(root / "web" / f"{split}.npz", images=np.stack(images), category_ids=np.array(ids, np.int64))
        (root / "web" / f"{split}_captions.json").write_text(json.dumps(captions))
    return root


@pytest.fixture
def tiny_world(tmp_path):
    return write_tiny_world(tmp_path / "world")
