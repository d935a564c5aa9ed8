"""The diagnostics' per-novel-category breakdown counts the right boxes and names."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from shapeworld_diagnostics import _novel_by_category  # noqa: E402


def test_novel_by_category_top1_and_most_frequent_name():
    names = ["circle", "square", "heart", "star"]
    base = torch.tensor([True, False, False, True])  # square and heart are novel
    truth = [1, 1, 1, 2, 2, 0, 3]
    predicted = {"text_head": [1, 0, 0, 2, 3, 0, 3], "distillation_head": [], "model_scores": [1, 1, 1, 3, 3, 0, 0]}
    out = _novel_by_category(predicted, truth, base, names)
    assert set(out) == {"text_head", "model_scores"}  # a head without guesses is left out
    assert set(out["text_head"]) == {"square", "heart"}  # base categories are not listed
    assert out["text_head"]["square"] == {"boxes": 3, "top1": 33.3, "named_most_often": "circle"}
    assert out["text_head"]["heart"]["boxes"] == 2 and out["text_head"]["heart"]["top1"] == 50.0
    assert out["model_scores"]["square"]["top1"] == 100.0
    assert out["model_scores"]["heart"] == {"boxes": 2, "top1": 0.0, "named_most_often": "star"}
