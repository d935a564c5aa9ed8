"""Trunk-training throughput: optimiser steps per second of the ShapeWorld preset (128 px,
batch 8) with the batches built in the training process (--workers 0) or by loader workers.

    .venv/bin/python benchmarks/train_throughput.py                 # CPU, 1 compute thread
    .venv/bin/python benchmarks/train_throughput.py --device cuda --workers 0 1 2 4
    .venv/bin/python benchmarks/train_throughput.py --baseline-src OLD/src   # + an older vild

Generates a small world (or takes --world), trains the shared-trunk detector of
benchmarks/shapeworld.py (mode text, fixed random class prototypes, no teacher) for
--steps steps per worker count, in rounds that alternate the worker counts (the machine may be
shared), and times steps --skip .. --steps from the loop's own log (start-up and the first
steps excluded); on CUDA also the mean GPU utilisation over each run. --baseline-src adds, to every round, a run of another checkout's sources
(in a subprocess; its loop loads batches in the training process whatever it supports).
Writes benchmarks/results/train_throughput_<device>.json with the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("VILD_SRC") or str(ROOT / "src"))  # --baseline-src runs set it

from vild.io import save_json  # noqa: E402
from vild.training.distributed import resolve_device  # noqa: E402
from vild.training.loop import TrainData, train_detector  # noqa: E402
from vild.training.presets import preset  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, world_paths  # noqa: E402

TRUNK_DIM = 64  # as benchmarks/shapeworld.py's trunk


def steps_per_second(metrics: Path, batch_size: int, skip: int) -> float:
    """From the loop's log: each line's images_per_s is images so far / seconds since the loop
    began, so two lines give the time between them."""
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    elapsed = {r["step"]: (r["step"] + 1) * batch_size / r["images_per_s"] for r in lines}
    first = min(s for s in elapsed if s >= skip)
    last = max(elapsed)
    return (last - first) / (elapsed[last] - elapsed[first])


class UtilisationSampler:
    """Mean GPU utilisation (%, NVML via torch.cuda.utilization) while a run trains; None on
    CPU or where NVML is missing."""

    def __init__(self, device: torch.device, every_s: float = 0.25) -> None:
        self.device, self.every_s, self.samples = device, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception:  # no pynvml / NVML: report None rather than fail the benchmark
                self.samples = []
                return

    def __enter__(self) -> "UtilisationSampler":
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 1) if self.samples else None


def one_run(world: Path, out: Path, *, workers: int, steps: int, skip: int, device, seed: int) -> dict:
    paths = world_paths(world)
    vocab = dataset_vocabulary(paths["train_base"])
    ids = tuple(c for c, b in zip(vocab["category_ids"], vocab["base"]) if b)
    prototypes = torch.nn.functional.normalize(
        torch.randn(len(ids), TRUNK_DIM, generator=torch.Generator().manual_seed(1000)), dim=-1)
    model_cfg, train_cfg = preset("shapeworld", model=dict(mode="text", embed_dim=TRUNK_DIM),
                                  train=dict(steps=steps, log_every=max(1, skip // 2), seed=seed))
    data = TrainData(str(paths["train_images"]), str(paths["train_base"]), ids)
    loader = {"workers": workers} if "workers" in inspect.signature(train_detector).parameters else {}
    started = time.perf_counter()
    with UtilisationSampler(device) as gpu:
        train_detector(model_cfg, train_cfg, data, prototypes, out, progress=False, device=device, **loader)
    wall = time.perf_counter() - started
    rate = steps_per_second(out / "metrics.jsonl", train_cfg.batch_size, skip)
    return {"workers": workers if loader else "baseline", "steps_per_s": round(rate, 3),
            "wall_s_with_startup": round(wall, 1), "gpu_utilisation_pct": gpu.mean}


def baseline_run(src: Path, world: Path, out: Path, args, seed: int) -> dict:
    """The same run with another checkout's sources, in a fresh process."""
    cmd = [sys.executable, __file__, "--single", str(out), "--world", str(world), "--device", args.device,
           "--steps", str(args.steps), "--skip", str(args.skip), "--threads", str(args.threads),
           "--seed", str(seed)]
    env = dict(os.environ, VILD_SRC=str(src.resolve()))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"baseline run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, help="default: a new 64-image world in a temporary folder")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--skip", type=int, default=10, help="first steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="compute threads of the training process")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src/ to time beside this one")
    parser.add_argument("--single", type=Path, help=argparse.SUPPRESS)  # one baseline run, JSON out
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.single:
        print(json.dumps(one_run(args.world, args.single, workers=0, steps=args.steps, skip=args.skip,
                                 device=device, seed=args.seed)))
        return 0
    from vild.data.loading import available_cores  # this checkout's (a baseline may lack it)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vild-throughput-") as tmp:
        world = args.world
        if world is None:
            from vild.data.world import make_world

            world = Path(tmp) / "world"
            make_world(world, num_train=64, num_val=4, num_web=1, num_web_val=1, progress=False,
                       workers=available_cores())
        runs = []
        for r in range(args.rounds):
            for workers in args.workers:
                run = one_run(world, Path(tmp) / f"run-{r}-{workers}", workers=workers, steps=args.steps,
                              skip=args.skip, device=device, seed=r)
                run["round"] = r
                print(json.dumps(run), flush=True)
                runs.append(run)
            if args.baseline_src:
                run = baseline_run(args.baseline_src, world, Path(tmp) / f"run-{r}-baseline", args, seed=r)
                run["round"] = r
                print(json.dumps(run), flush=True)
                runs.append(run)
    variants = [*args.workers, *(["baseline"] if args.baseline_src else [])]
    summary = {str(w): statistics.median(x["steps_per_s"] for x in runs if x["workers"] == w) for w in variants}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "device": f"{device}: {name}",
        "cpu_cores": available_cores(),
        "compute_threads": args.threads,
        "preset": "shapeworld (128 px, batch 8), mode text, trunk prototypes",
        "timed_steps": f"{args.skip}..{args.steps - 1} of each run",
        "baseline_src": str(args.baseline_src) if args.baseline_src else None,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "median_steps_per_s_by_workers": summary,
        "runs": runs,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"train_throughput_{device.type}.json"
    save_json(path, result)
    print(json.dumps(summary), "->", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
