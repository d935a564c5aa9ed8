"""Service test fixtures: one thread, and a tiny random ViLD model folder (with its tiny
teacher) for the tests that run the real `vild.inference.Detector` behind the service."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def write_tiny_model(root):
    """root/teacher (tiny open_clip folder) + root/model (tiny random ViLD-ensemble folder),
    scored with a single prompt (the service tests need no prompt ensemble)."""
    from tests.inference.conftest import write_model_folder

    return write_model_folder(root, templates="single")


@pytest.fixture(scope="session")
def real_detector(tmp_path_factory):
    """`vild.inference.Detector` on a tiny random model."""
    from vild.inference import Detector

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
