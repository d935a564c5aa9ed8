"""Plumbing of benchmarks/perf_onnx.py: --quick exports the bundled model and writes every stage
for both runtimes. No speed is asserted (benchmarks, not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'vild[export]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'vild[export]')")

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_every_stage(tmp_path):
    out = tmp_path / "perf_onnx.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf_onnx.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["gpu"] == "not measured" and len(result["device"]["loadavg_at_start"]) == 3
    (row,) = result["rows"]
    assert row["categories"] == 24 and row["detections"] == row["max_detections"] == 100
    assert set(row["median_s"]) == {"graph", "finish", "end_to_end"}
    for stage in row["median_s"].values():
        assert stage["pytorch"] > 0 and stage["onnxruntime"] > 0
    assert sum(row["onnxruntime_profile_s_by_op"].values()) > 0
