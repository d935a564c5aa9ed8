"""`benchmarks/shapeworld.py --jobs`: stopping the parent stops the row processes it started
(a run under `timeout` once left them training on a GPU machine, holding its output open)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a child that exited but is not reaped yet is a zombie: not running
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1][0] != "Z"


def test_sigterm_to_the_parent_ends_its_row_processes(tmp_path):
    row = tmp_path / "row.py"  # stands in for a row's training: records its pid, then waits
    row.write_text(textwrap.dedent(f"""
        import os, sys, time
        task = sys.argv[sys.argv.index("--train-only") + 1].replace(":", "_")
        (__import__("pathlib").Path({str(tmp_path)!r}) / f"{{task}}.pid").write_text(str(os.getpid()))
        time.sleep(120)
    """))
    parent = tmp_path / "parent.py"
    parent.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from types import SimpleNamespace
        sys.path[:0] = [{str(ROOT / "src")!r}, {str(ROOT / "benchmarks")!r}]
        from shapeworld_rows import train_rows_in_parallel
        args = SimpleNamespace(seeds=1, rows=["text", "image"], work=Path({str(tmp_path / "work")!r}),
                               threads=2, jobs=2, workers=0)
        train_rows_in_parallel(args, Path({str(row)!r}), print)
    """))
    proc = subprocess.Popen([sys.executable, str(parent)])
    pid_files = [tmp_path / "0_text.pid", tmp_path / "0_image.pid"]
    deadline = time.time() + 60
    while not all(f.exists() and f.read_text() for f in pid_files):
        assert time.time() < deadline, "the row processes did not start"
        assert proc.poll() is None, "the parent exited early"
        time.sleep(0.2)
    children = [int(f.read_text()) for f in pid_files]
    assert all(_alive(pid) for pid in children)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.time() + 10
    while any(_alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def test_a_row_saved_before_a_setting_existed_is_reused_at_that_settings_default(tmp_path):
    """Folders trained before the tower settings existed hold no such keys: they had the
    defaults, so a run asking for the defaults reuses them, and one asking otherwise does not."""
    import dataclasses
    import json

    import pytest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from shapeworld_rows import check_same_schedule
    from vild.io import config_to_dict
    from vild.model import ViLDConfig
    from vild.training.config import TrainConfig

    model, train = ViLDConfig(mode="text"), TrainConfig()
    saved = json.loads(json.dumps(config_to_dict(model)))
    for key in [k for k in saved if k.startswith("tower_")] + ["image_head_input"]:
        del saved[key]
    (tmp_path / "model_config.json").write_text(json.dumps(saved))
    (tmp_path / "train_config.json").write_text(json.dumps(json.loads(json.dumps(config_to_dict(train)))))
    check_same_schedule(tmp_path, train, model)
    with pytest.raises(SystemExit, match="tower_grid"):
        check_same_schedule(tmp_path, train, dataclasses.replace(model, tower_grid=3))
