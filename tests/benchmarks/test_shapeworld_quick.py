"""Plumbing of the paper-table benchmark: every row trains, evaluates and is written out.

No quality is asserted: --quick trains for a handful of steps on a tiny world.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark():
    """benchmarks/shapeworld.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shapeworld_bench", ROOT / "benchmarks" / "shapeworld.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_quick_benchmark_writes_every_row(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "shapeworld.py"), "--quick", "--seeds", "1",
        "--world", str(tmp_path / "world"), "--teacher", str(tmp_path / "teacher"),
        "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--no-progress",
        "--threads", "1",  # robust on a shared machine (see benchmarks/cpu_threads.py)
        "--device", "cpu",
        "--jobs", "2",  # the rows train in processes of their own, two at a time
        "--model-set", "fpn_channels=32",  # trunks and rows alike
    ]
    stale = tmp_path / "results" / "shapeworld_partial.json"  # as a stopped multi-seed run leaves it
    stale.parent.mkdir()
    stale.write_text("{}")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not stale.exists(), "the finished table must replace the partial one"
    data = json.loads((tmp_path / "results" / "shapeworld_quick.json").read_text())
    rows = data["summary"]["rows"]
    assert set(rows) == {
        "CLIP on cropped regions", "ViLD-text", "ViLD-image", "ViLD",
        "ViLD-ensemble (w=0.5)", "ViLD-text + CLIP", "Supervised-RFS (base+novel)",
        "ViLD-image, tower head", "ViLD, tower head", "ViLD-ensemble, tower head",
    }
    for row in rows.values():
        assert {"APr", "APc", "APf", "AP", "box_AP", "ms_per_image"} <= set(row)
        assert row["ms_per_image"]["mean"] > 0
    assert set(data["summary"]["rpn_recall_novel"]) == {"base", "base+novel"}
    meta = data["meta"]
    assert meta["device"].startswith("cpu")
    assert meta["jobs"] == 2 and meta["model_set"] == ["fpn_channels=32"]
    assert "rows_in_parallel" in meta["stage_seconds"]
    for row in ("trunk", "trunk-all", "seed0/text", "seed0/ensemble", "seed0/supervised"):
        saved = json.loads((tmp_path / "work" / row / "model_config.json").read_text())
        assert saved["fpn_channels"] == 32, row
    # the distilling rows weight their loss by rarity (image apart); the others distil nothing
    rarity = {mode: json.loads((tmp_path / "work" / "seed0" / mode / "train_config.json").read_text())["distill_rarity"]
              for mode in ("text", "image", "vild", "ensemble", "supervised")}
    assert rarity == {"text": 0.0, "image": 1.0, "vild": 0.5, "ensemble": 0.5, "supervised": 0.0}
    assert meta["distill_rarity"] == {"vild": 0.5, "ensemble": 0.5, "image": 1.0}
    # ViLD's one head imitates the teacher: it trains and scores at the teacher's logit scale
    heads = {mode: json.loads((tmp_path / "work" / "seed0" / mode / "model_config.json").read_text())
             for mode in ("text", "vild", "ensemble")}
    assert heads["text"]["temperature"] == heads["ensemble"]["temperature"] == 50.0
    assert heads["vild"]["temperature"] == heads["vild"]["image_temperature"] != 50.0
    # the ensemble's distillation head is left unnormalised, with the L2 loss (`row_recipe`)
    outputs = {mode: json.loads((tmp_path / "work" / "seed0" / mode / "model_config.json").read_text())
               for mode in ("image", "ensemble")}
    assert (outputs["ensemble"]["image_head_output"], outputs["ensemble"]["distill_loss"]) == ("mean", "l2")
    assert (outputs["image"]["image_head_output"], outputs["image"]["distill_loss"]) == ("unit", "l1")
    # the tower rows: the seed's ViLD-text row with a head on the teacher's own tower
    tower = json.loads((tmp_path / "work" / "seed0" / "tower" / "model_config.json").read_text())
    assert (tower["mode"], tower["image_head_input"], tower["fpn_channels"]) == ("ensemble", "tower", 32)
    assert json.loads((tmp_path / "work" / "seed0" / "tower" / "tower_head.json").read_text())["recipe"]["seed"] == 0
    tower_vild = json.loads((tmp_path / "work" / "seed0" / "tower-vild" / "model_config.json").read_text())
    assert (tower_vild["mode"], tower_vild["image_head_input"]) == ("vild", "tower")
    assert tower_vild["temperature"] == heads["vild"]["temperature"]  # the teacher's scale, as ViLD's
    stages = meta["stage_seconds"]
    assert {"world", "trunks", "teacher", "region_store", "seed0", "total"} <= set(stages)
    parts = sum(v for k, v in stages.items() if k != "total")
    assert 0 < parts <= stages["total"] + 0.5  # rounded to 0.1 s each
    table = (tmp_path / "results" / "shapeworld_quick.md").read_text()
    assert "ViLD-ensemble" in table and "AR_r@100" in table

    # the ablation script trains rows from the same trunk and store with other settings
    rows = [
        sys.executable, str(ROOT / "benchmarks" / "distill_rows.py"), "--world", str(tmp_path / "world"),
        "--teacher", str(tmp_path / "teacher"), "--trunk", str(tmp_path / "work" / "trunk"),
        "--store", str(tmp_path / "work" / "regions"), "--modes", "image", "--set", "distill_rarity=0.5",
        "--steps", "2", "--out", str(tmp_path / "rows"),
    ]
    done = subprocess.run(rows, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trained = json.loads((tmp_path / "rows" / "image" / "train_config.json").read_text())
    assert trained["distill_rarity"] == 0.5 and trained["steps"] == 2
    assert trained["init_from"] == str(tmp_path / "work" / "trunk") and trained["freeze"] == ["backbone", "rpn"]
    # ... or from random initialisation, distilling the same store
    scratch = rows[:rows.index("--trunk")] + rows[rows.index("--store"):-1] + [str(tmp_path / "rows-scratch"), "--scratch"]
    done = subprocess.run(scratch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trained = json.loads((tmp_path / "rows-scratch" / "image" / "train_config.json").read_text())
    assert trained["init_from"] is None and trained["freeze"] == [] and trained["steps"] == 2

    # the tower scripts: a tower model's rows for each choice of boxes, and a recipe sweep
    world = ["--world", str(tmp_path / "world"), "--teacher", str(tmp_path / "teacher"), "--val-images", "2"]
    tower_rows = [sys.executable, str(ROOT / "benchmarks" / "tower_rows.py"), *world, "--model",
                  str(tmp_path / "work" / "seed0" / "tower"), "--methods", "vild-image", "--out", str(tmp_path / "reads.json")]
    done = subprocess.run(tower_rows, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert set(json.loads((tmp_path / "reads.json").read_text())["rows"]) == {
        "vild-image, tower head reads refined boxes", "vild-image, tower head reads proposals boxes"}
    sweep = [sys.executable, str(ROOT / "benchmarks" / "tower_head_sweep.py"), *world, "--text-model",
             str(tmp_path / "work" / "seed0" / "text"), "--store", str(tmp_path / "work" / "regions"),
             "--variant", "steps=3", "--variant", "fc_dims=8,8", "--variant", "grid=1+steps=3",
             "--variant", "steps=3+output=mean+loss=l2", "--out", str(tmp_path / "sweep.json")]
    done = subprocess.run(sweep, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    swept = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert swept["steps=3"]["recipe"]["steps"] == 3 and swept["fc_dims=8,8"]["recipe"]["fc_dims"] == [8, 8]
    assert {"vild-image", "vild-ensemble"} <= set(swept["steps=3"])
    assert swept["grid=1+steps=3"]["recipe"]["grid"] == 1 and swept["grid=1+steps=3"]["recipe"]["steps"] == 3
    assert {k: swept["steps=3+output=mean+loss=l2"]["recipe"][k] for k in ("output", "loss")} == {
        "output": "mean", "loss": "l2"}
    norms = swept["steps=3+output=mean+loss=l2"]["embedding_norm"]
    assert sum(group["proposals"] for group in norms.values()) > 0 and "embedding_norm" not in swept["steps=3"]
    readings = json.loads((tmp_path / "sweep.json").read_text())["seconds_features_by_reading"]
    assert len(readings) == 2  # the 1x1 grid is a second read of the features, the others share one


def test_a_finished_row_trained_on_another_schedule_is_not_reused(tmp_path):
    import pytest

    from vild.training.config import TrainConfig

    bench = _load_benchmark()
    import dataclasses

    # what train_detector records: the whole TrainConfig (clip_grad_norm and init_from included)
    saved = TrainConfig(steps=600, lr=0.04, batch_size=8, seed=0)
    (tmp_path / "train_config.json").write_text(json.dumps(dataclasses.asdict(saved)))
    bench.check_same_schedule(tmp_path, TrainConfig(steps=600, lr=0.04, batch_size=8, seed=0))
    with pytest.raises(SystemExit, match="steps=600"):
        bench.check_same_schedule(tmp_path, TrainConfig(steps=4000, lr=0.04, batch_size=8, seed=0))
    with pytest.raises(SystemExit, match="clip_grad_norm"):
        bench.check_same_schedule(tmp_path, dataclasses.replace(saved, clip_grad_norm=None))
    # `--row-set distill_rarity=0.5` must not reuse a uniformly distilled row ...
    with pytest.raises(SystemExit, match="distill_rarity"):
        bench.check_same_schedule(tmp_path, dataclasses.replace(saved, distill_rarity=0.5))
    # ... while a row saved before the setting existed counts as its default (uniform)
    older = {k: v for k, v in dataclasses.asdict(saved).items() if not k.startswith("distill_rarity")}
    (tmp_path / "train_config.json").write_text(json.dumps(older))
    bench.check_same_schedule(tmp_path, saved)
    with pytest.raises(SystemExit, match="distill_rarity"):
        bench.check_same_schedule(tmp_path, dataclasses.replace(saved, distill_rarity=1.0))
    # a row saved before distill_skip_part_iou existed distilled every proposal
    older = {k: v for k, v in older.items() if k != "distill_skip_part_iou"}
    (tmp_path / "train_config.json").write_text(json.dumps(older))
    bench.check_same_schedule(tmp_path, saved)
    with pytest.raises(SystemExit, match="distill_skip_part_iou"):
        bench.check_same_schedule(tmp_path, dataclasses.replace(saved, distill_skip_part_iou=0.1))


def test_a_finished_row_is_reused_across_trunk_paths_and_by_text_rows_across_rarity(tmp_path, monkeypatch):
    """The same trunk named relative to the repository root or absolutely is one trunk; a
    ViLD-text row distils nothing, so the rarity setting does not stop its reuse, while a
    distilling row's does."""
    import dataclasses

    import pytest

    from vild.model import ViLDConfig
    from vild.training.config import TrainConfig

    bench = _load_benchmark()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work" / "trunk").mkdir(parents=True)
    saved = TrainConfig(steps=10, init_from="work/trunk", distill_rarity=0.5)
    (tmp_path / "train_config.json").write_text(json.dumps(dataclasses.asdict(saved)))
    absolute = dataclasses.replace(saved, init_from=str(tmp_path / "work" / "trunk"))
    bench.check_same_schedule(tmp_path, absolute)
    with pytest.raises(SystemExit, match="init_from"):
        bench.check_same_schedule(tmp_path, dataclasses.replace(saved, init_from=str(tmp_path / "other")))
    with pytest.raises(SystemExit, match="init_from"):
        bench.check_same_schedule(tmp_path, dataclasses.replace(saved, init_from=None))
    uniform = dataclasses.replace(absolute, distill_rarity=0.0)
    bench.check_same_schedule(tmp_path, uniform, ViLDConfig(mode="text"))
    with pytest.raises(SystemExit, match="distill_rarity"):
        bench.check_same_schedule(tmp_path, uniform, ViLDConfig(mode="ensemble"))


def test_a_finished_row_with_other_model_settings_is_not_reused(tmp_path):
    """`--row-set distill_weight=2` must not reuse a row trained with w = 0.5; the scoring-only
    image_temperature may differ."""
    import dataclasses

    import pytest

    from vild.io import save_config
    from vild.model import ViLDConfig
    from vild.training.config import TrainConfig

    bench = _load_benchmark()
    train, model = TrainConfig(steps=10), ViLDConfig(mode="vild", distill_weight=0.5, image_temperature=50.0)
    save_config(tmp_path / "train_config.json", train)
    save_config(tmp_path / "model_config.json", model)
    bench.check_same_schedule(tmp_path, train, dataclasses.replace(model, image_temperature=20.5))
    with pytest.raises(SystemExit, match="distill_weight=0.5"):
        bench.check_same_schedule(tmp_path, train, dataclasses.replace(model, distill_weight=2.0))


def test_model_set_refuses_training_settings(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "shapeworld.py"), "--quick", "--work", str(tmp_path),
           "--model-set", "steps=3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--model-set takes model settings only" in done.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was made
