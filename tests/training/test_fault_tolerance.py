"""Checkpoints are atomic and complete: a run SIGKILLed mid-way and resumed ends with the
same weights, bit for bit, as an uninterrupted run, whatever the number of loader workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.training._cli import cli_env, run_vild, vild_command
from tests.training._tiny import tiny_training
from vild.errors import VildError
from vild.training.checkpoint import (
    RESUME_OLD,
    RESUME_TMP,
    load_resume_state,
    read_resume_meta,
    resume_state_dir,
    save_resume_state,
)
from vild.training.config import TrainConfig
from vild.training.loop import train_detector

STEPS = 10


def train_args(world, teacher, out, *extra):
    return ["train", "--world", str(world), "--teacher", str(teacher), "--preset", "shapeworld-quick",
            "--mode", "text", "--steps", str(STEPS), "--set", "batch_size=2", "--set", "warmup_steps=2",
            "--set", "checkpoint_every=3", "--set", "log_every=1", "--threads", "1", "--device", "cpu",
            "--no-progress", "--out", str(out), *extra]


def logged_steps(folder) -> list[int]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line being written
    return steps


@pytest.mark.parametrize("killed_workers,resumed_workers", [(None, None), ("2", "1")])
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_world, tiny_teacher_dir, tmp_path,
                                                        killed_workers, resumed_workers):
    """The uninterrupted run loads in the main process (the default on <= 2 cores); the killed
    one, in the second case, with 2 loader workers and its resume with 1."""
    cache = tmp_path / "cache"
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_vild(train_args(tiny_world, tiny_teacher_dir, full, "--workers", "0"), cache)
    killed_extra = ("--workers", killed_workers) if killed_workers else ()
    resumed_extra = ("--workers", resumed_workers) if resumed_workers else ()

    proc = subprocess.Popen(vild_command(train_args(tiny_world, tiny_teacher_dir, killed, *killed_extra)),
                            env=cli_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while max(logged_steps(killed), default=-1) < 4:  # past the checkpoint of step 3
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the run did not progress"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists(), "killed too late: the run had finished"
    meta = read_resume_meta(killed)
    assert meta is not None and meta["step"] in (3, 6, 9)
    assert meta["sampler"]["kind"] == "shuffle" and meta["sampler"]["next_step"] == meta["step"]
    assert meta["scheduler"]["next_lr"] > 0 and "python_rng" in meta and "numpy_rng" in meta

    run_vild(train_args(tiny_world, tiny_teacher_dir, killed, "--resume", *resumed_extra), cache)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert logged_steps(killed) == list(range(STEPS))  # lines after the checkpoint were replaced
    assert not list(killed.glob(".*"))  # no temp or old state left behind
    # resuming a finished run changes nothing
    run_vild(train_args(tiny_world, tiny_teacher_dir, killed, "--resume"), cache)
    assert load_file(str(killed / "model.safetensors")).keys() == a.keys()


def test_checkpoint_survives_a_kill_between_renames(tiny_world, tmp_path):
    model_cfg, train_cfg, data, text = tiny_training(tiny_world)
    out = tmp_path / "m"
    train_detector(model_cfg, train_cfg, data, text, out, progress=False, stop_after=2)
    state = resume_state_dir(out)
    assert state == out / "resume"
    # killed after renaming resume/ -> .resume.old/ and before .resume.tmp/ -> resume/
    (out / "resume").rename(out / RESUME_OLD)
    (out / RESUME_TMP).mkdir()
    (out / RESUME_TMP / "model.safetensors").write_bytes(b"half written")
    assert resume_state_dir(out) == out / RESUME_OLD
    model = __import__("vild.model", fromlist=["build_detector"]).build_detector(model_cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert load_resume_state(out, model, opt) == 2
    # the next checkpoint replaces both, keeping one complete state at every instant
    save_resume_state(out, model, opt, 2, train_cfg)
    assert resume_state_dir(out) == out / "resume"
    assert not (out / RESUME_OLD).exists() and not (out / RESUME_TMP).exists()

    # and the resumed run equals an uninterrupted one
    train_detector(model_cfg, train_cfg, data, text, out, progress=False, resume=True)
    ref = train_detector(model_cfg, train_cfg, data, text, tmp_path / "ref", progress=False)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_data_plan(tiny_world, tmp_path):
    model_cfg, train_cfg, data, text = tiny_training(tiny_world)
    out = tmp_path / "m"
    train_detector(model_cfg, train_cfg, data, text, out, progress=False, stop_after=2)
    bigger = TrainConfig(**{**train_cfg.__dict__, "batch_size": 4})
    with pytest.raises(VildError, match="batch_size"):
        train_detector(model_cfg, bigger, data, text, out, progress=False, resume=True)
    other_micro = TrainConfig(**{**train_cfg.__dict__, "micro_batch_size": 1})
    with pytest.raises(VildError, match="micro-batches"):
        train_detector(model_cfg, other_micro, data, text, out, progress=False, resume=True)


def test_gradient_accumulation_resumes_exactly_and_moves_bn_statistics_once_per_step(tiny_world, tmp_path):
    """batch_size=2 in micro-batches of 1 (accumulation), killed after one step and resumed."""
    model_cfg, train_cfg, data, text = tiny_training(tiny_world, micro_batch_size=1, steps=3)
    a = train_detector(model_cfg, train_cfg, data, text, tmp_path / "a", progress=False)
    part = tmp_path / "b"
    train_detector(model_cfg, train_cfg, data, text, part, progress=False, stop_after=1)
    train_detector(model_cfg, train_cfg, data, text, part, progress=False, resume=True)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert int(wa["backbone.body.bn1.num_batches_tracked"]) == 3  # one update per step
    shutil.rmtree(part)
