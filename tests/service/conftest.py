"""Service test fixtures: one thread, and a tiny random ViLD model folder (with its tiny
teacher) for the tests that run the real `vild.inference.Detector` behind the service."""

from __future__ import annotations

import json
import os

import pytest
import torch

VOCAB = {
    "names": ["circle", "square", "star"],
    "synonyms": [["disc"], [], ["pentagram"]],
    "category_ids": [1, 2, 3],
    "base": [True, True, False],
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def write_tiny_model(root):
    """root/teacher (tiny open_clip folder) + root/model (tiny random ViLD-ensemble folder)."""
    from tests.model.conftest import tiny_config
    from tests.teacher.conftest import make_tiny_teacher
    from vild.model import build_detector
    from vild.training.checkpoint import save_model, save_vocabulary
    from vild.training.vocabulary import text_embeddings_for

    root.mkdir(parents=True, exist_ok=True)
    teacher = make_tiny_teacher(0)
    teacher_dir = root / "teacher"
    teacher.save(teacher_dir)
    vocab = dict(VOCAB, teacher={"name": str(teacher_dir), "identity": teacher.identity})
    emb = text_embeddings_for(teacher, vocab, cache_dir=os.environ.get("VILD_CACHE_DIR"))
    torch.manual_seed(0)
    model = build_detector(tiny_config(mode="ensemble", embed_dim=32, detections_per_image=50)).eval()
    folder = root / "model"
    save_model(folder, model)
    save_vocabulary(folder, vocab, emb)
    (folder / "detector.json").write_text(json.dumps({
        "format": "vild-detector/1", "name": "tiny-ensemble", "teacher": "../teacher",
        "teacher_identity": teacher.identity, "templates": "single"}))
    return folder


@pytest.fixture(scope="session")
def real_detector(tmp_path_factory):
    """`vild.inference.Detector` on a tiny random model (skips while vild.inference has no
    Detector)."""
    try:
        from vild.inference import Detector
    except (ImportError, AttributeError) as e:
        pytest.skip(f"vild.inference.Detector is not available yet ({e})")
    cache = str(tmp_path_factory.getbasetemp() / "vild-cache")
    old = os.environ.get("VILD_CACHE_DIR")
    os.environ["VILD_CACHE_DIR"] = cache
    torch.set_num_threads(1)
    try:
        folder = write_tiny_model(tmp_path_factory.mktemp("tiny-model"))
        return Detector.from_pretrained(str(folder), cache_dir=cache)
    finally:
        if old is None:
            os.environ.pop("VILD_CACHE_DIR", None)
        else:
            os.environ["VILD_CACHE_DIR"] = old
