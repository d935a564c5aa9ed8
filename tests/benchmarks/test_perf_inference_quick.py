"""Plumbing of benchmarks/perf_inference.py: --quick runs the whole matrix at 128 px and writes
every row, stage and reference the full run writes. No speed is asserted (benchmarks, not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"preprocess", "backbone_fpn", "rpn", "box_head", "classify", "select_nms", "mask_head", "finish", "total"}


def test_quick_run_writes_every_row(tmp_path):
    out = tmp_path / "perf.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf_inference.py"), "--quick", "--device", "cpu",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"]["type"] == "cpu" and result["device"]["name"]
    combos = {(row["batch"], row["precision"], row["categories"], row["detections"]) for row in result["rows"]}
    assert combos == {(b, p, c, 20) for b in (1, 2) for p in ("fp32", "bf16") for c in (10, 100)}
    for row in result["rows"]:
        assert set(row["stages_s"]) == STAGES and row["ms_per_image"] > 0
        assert abs(sum(row["stages_s"][s] for s in STAGES - {"total"}) - row["stages_s"]["total"]) < 1e-9
    assert result["reference_torchvision"]["classes"] == 101 and result["reference_torchvision"]["seconds"] > 0
    assert result["conventional"]["ratio_vild_over_conventional"] > 0
    assert set(result["postprocess_branches"]) == {"batched", "per_image", "torchvision_paste_s"}
    assert all(v == "not measured" for v in result["targets"].values())  # GPU targets, CPU run
