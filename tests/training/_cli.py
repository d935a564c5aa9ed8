"""Run `vild` commands in fresh processes (alone or under torchrun), one thread each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_env(cache_dir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", VILD_CACHE_DIR=str(cache_dir))
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("VILD_DEBUG", None)
    return env


def vild_command(args: list[str], *, nproc: int = 1) -> list[str]:
    """`python -m vild ARGS`, or the same under torchrun with `nproc` processes on this host."""
    if nproc == 1:
        return [sys.executable, "-m", "vild", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "vild", *args]


def run_vild(args: list[str], cache_dir: Path, *, nproc: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(vild_command(args, nproc=nproc), env=cli_env(cache_dir), capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"vild {' '.join(args[:1])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
