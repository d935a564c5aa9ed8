"""Fixtures: the tiny LVIS-format ground truth of `gt_builder`, as a dict and as a file."""

from __future__ import annotations

import pytest

from .gt_builder import build_gt, results_from_gt


@pytest.fixture
def gt() -> dict:
    return build_gt()


@pytest.fixture
def gt_path(tmp_path, gt):
    from vild.io import save_json

    path = tmp_path / "annotations.json"
    save_json(path, gt)
    return path


@pytest.fixture
def make_results():
    return results_from_gt
