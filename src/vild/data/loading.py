"""DataLoader settings shared by every stage that reads images while a model computes
(`vild train`, `vild embed-regions`): how many worker processes, pinned memory, prefetch.

Workers decode and augment the next batches in other processes while the model runs on the
current one; on a GPU that is what keeps it busy. On a small CPU box a worker competes with
the compute thread for the same cores, so the default there is none
(`benchmarks/train_throughput.py` measures both; `benchmarks/results/train_throughput_cpu.json`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from vild.errors import VildError

__all__ = ["available_cores", "default_workers", "loader_options", "resolve_workers"]

#: With this many cores or fewer, loading runs in the main process by default.
SMALL_MACHINE_CORES = 2


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device: str | torch.device | None = None) -> int:
    """Loader processes when the user names none: 0 on a machine of <= 2 cores (the worker
    would take a core from the model), else one per spare core up to 4 for a CPU model and 8
    for a GPU model, leaving one core to the main process."""
    cores = available_cores()
    if cores <= SMALL_MACHINE_CORES:
        return 0
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return max(0, min(8 if on_gpu else 4, cores - 1))


def resolve_workers(workers: int | None, device: str | torch.device | None = None) -> int:
    """`--workers N` -> N (checked); None -> `default_workers(device)`."""
    if workers is None:
        return default_workers(device)
    if int(workers) != workers or workers < 0:
        raise VildError(f"--workers must be a whole number >= 0, got {workers!r}")
    return int(workers)


def loader_options(workers: int, device: str | torch.device | None, *, prefetch: int = 2) -> dict[str, Any]:
    """Keyword arguments for `torch.utils.data.DataLoader`: `workers` processes, each holding
    up to `prefetch` items ready; page-locked (pinned) batches when the model is on CUDA, so
    that `.to(device, non_blocking=True)` overlaps the copy with compute. A private generator
    keeps the loader from drawing its worker seeds from the global RNG (which training seeds
    per step)."""
    on_gpu = device is not None and torch.device(device).type == "cuda"
    options: dict[str, Any] = {
        "num_workers": int(workers),
        "pin_memory": on_gpu,
        "generator": torch.Generator().manual_seed(0),
    }
    if workers > 0:
        options["prefetch_factor"] = max(1, int(prefetch))
    return options
