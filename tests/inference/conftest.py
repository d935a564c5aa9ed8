"""Fixtures for the inference tests: a tiny random ViLD-ensemble model folder with its tiny
teacher, built once per session, and image files of every awkward kind."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.model.conftest import tiny_config
from tests.teacher.conftest import make_tiny_teacher

VOCAB = {
    "names": ["circle", "square", "star"],
    "synonyms": [["disc"], [], ["pentagram"]],
    "category_ids": [1, 2, 3],
    "base": [True, True, False],
}


@pytest.fixture(autouse=True)
def _seed_and_threads(monkeypatch, tmp_path_factory):
    """One thread (the machine is shared) and a private text-embedding cache."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    monkeypatch.setenv("VILD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vild-cache"))
    yield


def write_model_folder(root, *, mode="ensemble", seed=0, teacher_ref="relative", with_detector_json=True,
                       templates="vild", **config):
    """root/teacher (tiny open_clip folder) + root/model (tiny ViLD folder; `config`: more
    ViLDConfig settings); returns root/model."""
    from vild.model import build_detector
    from vild.training.checkpoint import save_model, save_vocabulary
    from vild.training.vocabulary import text_embeddings_for

    root.mkdir(parents=True, exist_ok=True)
    teacher = make_tiny_teacher(0)
    teacher_dir = root / "teacher"
    if not teacher_dir.exists():
        teacher.save(teacher_dir)
    vocab = dict(VOCAB, teacher={"name": str(teacher_dir), "identity": teacher.identity})
    emb = text_embeddings_for(teacher, vocab, cache_dir=os.environ.get("VILD_CACHE_DIR"))
    torch.manual_seed(seed)
    model = build_detector(tiny_config(mode=mode, embed_dim=32, detections_per_image=50, **config)).eval()
    folder = root / "model"
    save_model(folder, model)
    save_vocabulary(folder, vocab, emb)
    if with_detector_json:
        spec = "../teacher" if teacher_ref == "relative" else str(teacher_dir)
        (folder / "detector.json").write_text(json.dumps({
            "format": "vild-detector/1", "name": "tiny-ensemble", "teacher": spec,
            "teacher_identity": teacher.identity, "templates": templates}))
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    import os as _os

    cache = tmp_path_factory.getbasetemp() / "vild-cache"
    old = _os.environ.get("VILD_CACHE_DIR")
    _os.environ["VILD_CACHE_DIR"] = str(cache)
    torch.set_num_threads(1)
    try:
        return write_model_folder(tmp_path_factory.mktemp("tiny"))
    finally:
        if old is None:
            _os.environ.pop("VILD_CACHE_DIR", None)
        else:
            _os.environ["VILD_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def detector(model_dir):
    from vild.inference import Detector

    torch.set_num_threads(1)
    return Detector.from_pretrained(str(model_dir))


def scene(h=64, w=64, seed=0):
    """A uint8 H x W x 3 image with two coloured blocks on a grey background."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (h, w, 3)).astype("uint8")
    img[h // 8: h // 2, w // 8: w // 2] = (220, 30, 30)
    img[h // 2: h - h // 8, w // 2: w - w // 8] = (30, 60, 220)
    return img
