"""The evaluation sweep's settings take effect, the RPN's included, on the same weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from distill_eval_sweep import with_settings  # noqa: E402
from tests.model.conftest import tiny_config  # noqa: E402
from vild.model import build_detector  # noqa: E402


def test_rpn_and_scoring_settings_apply_to_the_same_weights():
    torch.manual_seed(0)
    model = build_detector(tiny_config(mode="ensemble")).eval()
    swept = with_settings(model, {"rpn_post_nms_top_n_test": 7, "image_temperature": 3.0, "ensemble_lambda": 0.5})
    assert swept.rpn._post_nms_top_n["testing"] == 7
    assert swept.config.image_temperature == 3.0 and swept.roi_heads.config.ensemble_lambda == 0.5
    assert not swept.training
    before, after = model.state_dict(), swept.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        assert len(swept.propose([image])[0][0]) <= 7 < len(model.propose([image])[0][0])
