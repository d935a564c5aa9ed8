"""Training-step cost of the ShapeWorld backbone + FPN at 1 vs N torch threads.

    .venv/bin/python benchmarks/cpu_threads.py [--threads 1 2]

Writes benchmarks/results/cpu_threads.json with the machine's load average: on a machine whose
cores are busy, OpenMP threads stall at every operator and 1 thread can be much faster.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.io import save_json  # noqa: E402
from vild.model import build_detector  # noqa: E402
from vild.training.presets import preset  # noqa: E402


def step_ms(model, x, repeats: int) -> float:
    for _ in range(2):
        sum(v.sum() for v in model.backbone(x).values()).backward()
    started = time.perf_counter()
    for _ in range(repeats):
        sum(v.sum() for v in model.backbone(x).values()).backward()
    return 1000 * (time.perf_counter() - started) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model_cfg, _ = preset("shapeworld", model=dict(mode="text", embed_dim=256))
    model = build_detector(model_cfg).train()
    x = torch.rand(8, 3, 128, 128)
    load_before = os.getloadavg()
    results = {}
    for n in args.threads:
        torch.set_num_threads(n)
        results[str(n)] = step_ms(model, x, args.repeats)
        print(f"{n} thread(s): {results[str(n)]:.0f} ms per 8-image forward+backward")
    save_json(ROOT / "benchmarks/results/cpu_threads.json", {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "ms_per_step_by_threads": results,
        "what": "ShapeWorld preset backbone+FPN, batch 8 x 128 px, forward+backward",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
