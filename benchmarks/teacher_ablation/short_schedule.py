"""Teacher recipe ablation at a short schedule: train with TeacherTrainConfig overrides, 1 thread.

    .venv/bin/python benchmarks/teacher_ablation/short_schedule.py NAME '{"pretrain_steps": 750, "steps": 900}'

Writes the teacher to /tmp/teacher_ablation/NAME and prints the held-out top-1 with simple
prompts over all 2,400 held-out web images (`val_top1_simple_prompts`) and the 480-image
probe curve. Two such runs share the 2 cores at a time, so their seconds are not comparable
with benchmarks/results/teacher.json. Output lines are collected in
benchmarks/results/teacher_ablation.log.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from vild.teacher.config import TeacherTrainConfig  # noqa: E402
from vild.teacher.train import train_teacher  # noqa: E402

name, overrides = sys.argv[1], json.loads(sys.argv[2])
config = TeacherTrainConfig(threads=1, eval_every=300, **overrides)
summary = train_teacher("benchmarks/work/world", f"/tmp/teacher_ablation/{name}", config, progress=False)
print(name, overrides, "FINAL", summary["val_top1_simple_prompts"], summary["train_seconds"],
      [c["val_top1"] for c in summary.get("curve", [])], flush=True)
