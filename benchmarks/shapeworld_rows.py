"""Rows of `benchmarks/shapeworld.py`: the world and teacher they need, when a trained row may
be reused, and `--jobs J` (rows trained J at a time, each in a process of its own)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from vild.data.loading import available_cores
from vild.io import config_to_dict


QUICK_WORLD = dict(num_train=24, num_val=12, num_web=40, num_web_val=5)


def ensure_world(path: Path, quick: bool, progress: bool, log) -> None:
    if (path / "world.json").is_file():
        return
    from vild.data.world import make_world

    log(f"generating world in {path}")
    make_world(path, **(QUICK_WORLD if quick else {}), progress=progress, workers=available_cores())


def ensure_teacher(path: Path, world: Path, quick: bool, progress: bool, log, device: str = "cpu") -> None:
    if (path / "open_clip_config.json").is_file():
        return
    from vild.teacher import TeacherTrainConfig, train_teacher

    log(f"training the teacher into {path}")
    cfg = TeacherTrainConfig(steps=6, batch_size=64, warmup_steps=2, pretrain_steps=2) if quick else TeacherTrainConfig()
    train_teacher(world, path, cfg, progress=progress, device=device)


def check_same_schedule(out: Path, wanted, wanted_model=None) -> None:
    """A finished model is reused only if it was trained with the schedule and the model
    settings asked for now (`--row-set distill_weight=2` must not reuse a w = 0.5 row).
    image_temperature only scores, so a row trained before it followed the teacher is reused."""
    saved = json.loads((out / "train_config.json").read_text())
    checks = [(key, saved.get(key), getattr(wanted, key))
              for key in ("steps", "lr", "batch_size", "seed", "clip_grad_norm")]
    # the same trunk named by another path (relative from the repository root, or absolute)
    had_init, asked_init = saved.get("init_from"), wanted.init_from
    if had_init is None or asked_init is None or Path(had_init).resolve() != Path(asked_init).resolve():
        checks.append(("init_from", had_init, asked_init))
    # settings newer than some saved rows: a row saved before one existed had its default.
    # A ViLD-text row distils nothing, so the distillation loss's settings do not touch it.
    if wanted_model is None or wanted_model.mode != "text":
        defaults = {f.name: f.default for f in dataclasses.fields(wanted)}
        checks += [(key, saved.get(key, defaults[key]), getattr(wanted, key))
                   for key in ("distill_rarity", "distill_rarity_threshold", "distill_skip_part_iou")]
    if wanted_model is not None and (out / "model_config.json").is_file():
        model = json.loads((out / "model_config.json").read_text())
        asked = json.loads(json.dumps(config_to_dict(wanted_model)))  # tuples as saved: lists
        # a model saved before a setting existed had its default (e.g. the tower fields)
        model_defaults = json.loads(json.dumps(config_to_dict(type(wanted_model)())))
        checks += [(key, model.get(key, model_defaults[key]), value) for key, value in asked.items()
                   if key != "image_temperature"]
    for key, had, asked in checks:
        if had != asked:
            raise SystemExit(
                f"{out} was trained with {key}={had!r}, this run asks for {asked!r}: "
                "pass --fresh or another --work"
            )


def row_overrides(args) -> tuple[dict, dict]:
    """(model, train) settings of every row: --model-set, then --row-set."""
    return {**args.model_overrides, **args.row_overrides[0]}, args.row_overrides[1]


def train_rows_in_parallel(args, script: Path, log) -> None:
    """--jobs J (trunk protocol): every seed's untrained rows, each in its own process
    (`--train-only SEED:MODE`), J at a time. The rows share nothing but the frozen trunk and the
    store, and one process leaves the GPU (or a core) mostly idle."""
    tasks = [(seed, mode) for seed in range(args.seeds)
             for mode in ("text", "image", "vild", "ensemble", "supervised")
             if (mode == "text" or mode in args.rows)
             and not (args.work / f"seed{seed}" / mode / "model.safetensors").is_file()]
    # the tower head trains on its seed's ViLD-text row, in the run's own process afterwards
    argv, skip = [], False
    for item in sys.argv[1:]:  # the same settings, minus --jobs/--threads and --fresh (done once)
        if skip:
            skip = False
        elif item in ("--jobs", "--threads"):
            skip = True
        elif item != "--fresh" and not item.startswith(("--jobs=", "--threads=")):
            argv.append(item)
    threads = max(1, args.threads // args.jobs)
    if args.workers is None:  # eight GPU jobs with eight loader workers each would swamp the cores
        argv += ["--workers", str(max(0, available_cores() // args.jobs - 1))]
    running: list[tuple[tuple[int, str], subprocess.Popen]] = []
    failed = []
    # `timeout` or a kill stops this process alone: end the rows with it (they would hold the
    # GPU and the terminal's output open), then exit as a process killed by SIGTERM
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        while tasks or running:
            while tasks and len(running) < args.jobs:
                seed, mode = tasks.pop(0)
                log(f"seed {seed}: training {mode} in a process of its own")
                cmd = [sys.executable, str(script), *argv, "--threads", str(threads),
                       "--no-progress", "--train-only", f"{seed}:{mode}"]
                running.append(((seed, mode), subprocess.Popen(cmd)))
            time.sleep(1)
            for task, proc in list(running):
                if proc.poll() is not None:
                    running.remove((task, proc))
                    if proc.returncode:
                        failed.append(task)
    finally:
        for _, proc in running:
            proc.terminate()
        for _, proc in running:
            proc.wait()
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise SystemExit(f"rows failed to train (seed, mode): {failed}; their logs are above")


def ensure_tower(out: Path, text_dir: Path, world: Path, teacher, store: Path, seed: int, args,
                 timings: dict, feature_cache: dict, log, mode: str = "ensemble") -> Path:
    """The seed's ViLD-text row with a head on the teacher's tower (`vild distill-tower`, mode
    ensemble or vild), unless it exists with the same recipe."""
    from vild.training.tower_head import TowerHeadConfig, distill_tower

    config = TowerHeadConfig(mode=mode, seed=seed, steps=12 if args.quick else 2000)
    if (out / "model.safetensors").is_file():
        # a recipe saved before a setting existed was trained at the setting's old behaviour,
        # which every setting added since keeps as its default
        saved = {**TowerHeadConfig().record(), **json.loads((out / "tower_head.json").read_text())["recipe"]}
        if saved != config.record():
            raise SystemExit(f"{out} was made with another recipe ({saved}); use --fresh or another --work")
        return out
    from vild.training.vocabulary import world_paths

    paths = world_paths(world)
    log(f"training {out} (tower head, {config.steps} steps)")
    started = time.perf_counter()
    distill_tower(text_dir, teacher, paths["train_images"], paths["train_base"], store, out, config,
                  device=args.device, progress=args.progress, feature_cache=feature_cache)
    timings[f"train_{out.name}_s"] = time.perf_counter() - started
    return out
