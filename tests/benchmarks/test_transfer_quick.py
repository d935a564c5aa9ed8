"""Plumbing of the vocabulary-transfer benchmark and of `vild eval --dataset` on another
vocabulary. No quality is asserted: --quick trains a tiny model for a handful of steps.

Everything (source world, teacher, model, alt world) is built in a temporary folder.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = {
    "ViLD transfer (text embeddings swapped)",
    "Finetuning (linear classifier only)",
    "Source domain (reference)",
}


def _env(cache: Path) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               VILD_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("VILD_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transfer")
    paths = {
        "model": tmp / "source" / "ensemble", "teacher": tmp / "teacher", "world": tmp / "world",
        "alt": tmp / "world-alt", "work": tmp / "work", "results": tmp / "results", "cache": tmp / "cache",
    }
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "transfer.py"), "--quick",
        "--model", str(paths["model"]), "--teacher", str(paths["teacher"]),
        "--source-world", str(paths["world"]), "--alt-world", str(paths["alt"]),
        "--work", str(paths["work"]), "--results", str(paths["results"]),
        "--no-progress", "--threads", "1",
    ]
    done = subprocess.run(cmd, env=_env(paths["cache"]), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return paths


def test_quick_transfer_writes_every_row(quick_run):
    data = json.loads((quick_run["results"] / "transfer_quick.json").read_text())
    rows = data["rows"]
    assert set(rows) == ROWS
    for row in rows.values():
        assert {"AP", "APr", "APc", "APf", "box_AP", "coco_box_AP50", "coco_mask_AP50"} <= set(row["metrics"])
        assert row["metrics"]["ms_per_image"] > 0
    transfer, finetune = rows["ViLD transfer (text embeddings swapped)"], rows["Finetuning (linear classifier only)"]
    assert transfer["categories"] == finetune["categories"] == 16  # the alt vocabulary
    assert transfer["base_mask_true"] == 0  # no alt name was trained: all weighted as novel
    assert finetune["base_mask_true"] == 16  # the finetuned classifier saw every alt category
    meta = data["meta"]
    assert meta["name_overlap_with_source"] == []
    assert meta["finetune"]["steps"] == 4 and meta["finetune"]["model_state_unchanged"]
    assert math.isfinite(meta["finetune"]["loss_first"]) and math.isfinite(meta["finetune"]["loss_last"])
    assert {"load_average_start", "load_average_end", "wall_minutes", "command"} <= set(meta)
    table = (quick_run["results"] / "transfer_quick.md").read_text()
    assert all(label in table for label in ROWS) and "COCO box AP50" in table

    # the finetuned classifier is a model folder: source weights + the alt vocabulary
    finetuned = quick_run["work"] / "finetuned-linear"
    vocab = json.loads((finetuned / "vocabulary.json").read_text())
    alt_names = [c["name"] for c in json.loads((quick_run["alt"] / "world.json").read_text())["categories"]]
    assert vocab["names"] == alt_names and all(vocab["base"])
    assert (finetuned / "model.safetensors").read_bytes() == (quick_run["model"] / "model.safetensors").read_bytes()
    assert len(json.loads((finetuned / "finetune_log.json").read_text())) == 4


def _vild_eval(quick_run, model: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    alt = quick_run["alt"]
    cmd = [sys.executable, "-m", "vild", "eval", "--model", str(model),
           "--dataset", str(alt / "val" / "annotations.json"), "--images", str(alt / "val" / "images"),
           "--threads", "1", "--no-progress", *extra]
    return subprocess.run(cmd, env=_env(quick_run["cache"]), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


def test_vild_eval_dataset_swaps_in_the_datasets_vocabulary(quick_run, tmp_path):
    """`vild eval --dataset ALT.json --images DIR --teacher T` on a model trained on another
    vocabulary: the alt categories' text embeddings replace the classifier; the metrics are
    the benchmark's transfer row (same code path), and the finetuned folder's are its
    finetuning row."""
    rows = json.loads((quick_run["results"] / "transfer_quick.json").read_text())["rows"]
    alt_ids = {c["id"] for c in json.loads((quick_run["alt"] / "val" / "annotations.json").read_text())["categories"]}
    for model, label in ((quick_run["model"], "ViLD transfer (text embeddings swapped)"),
                         (quick_run["work"] / "finetuned-linear", "Finetuning (linear classifier only)")):
        out, results = tmp_path / f"{model.name}.json", tmp_path / f"{model.name}_results.json"
        done = _vild_eval(quick_run, model, tmp_path, "--teacher", str(quick_run["teacher"]),
                          "--out", str(out), "--results", str(results))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        metrics = json.loads(out.read_text())
        assert "APr" in done.stdout and "COCO mask AP" in done.stdout
        expected = rows[label]["metrics"]
        assert metrics["lvis"]["segm"]["AP"] == pytest.approx(expected["AP"], abs=1e-6, nan_ok=True)
        assert metrics["lvis"]["bbox"]["AP"] == pytest.approx(expected["box_AP"], abs=1e-6, nan_ok=True)
        assert metrics["coco"]["bbox"]["AP50"] == pytest.approx(expected["coco_box_AP50"], abs=1e-6, nan_ok=True)
        detections = json.loads(results.read_text())
        assert detections and {d["category_id"] for d in detections} <= alt_ids


def test_vild_eval_other_vocabulary_needs_the_teacher(quick_run, tmp_path):
    done = _vild_eval(quick_run, quick_run["model"], tmp_path)
    assert done.returncode == 1
    assert "give --teacher" in done.stderr and "Traceback" not in done.stderr
