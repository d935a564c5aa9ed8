"""Data-parallel helpers shared by `vild train` and `vild embed-regions` under `torchrun`.

    torchrun --nproc_per_node 8 -m vild train ...        # one process per GPU (NCCL)
    torchrun --nproc_per_node 2 -m vild train ... --device cpu   # gloo on CPU

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK (and the rendezvous address); `init_distributed`
reads them and starts the process group (NCCL for CUDA devices, gloo otherwise). Everything
here is a no-op in a plain single process, so the same code path serves both.

`SyncBatchNorm` below is a CPU-capable synchronised BatchNorm (PyTorch's `nn.SyncBatchNorm`
refuses CPU tensors); `convert_sync_batchnorm` picks PyTorch's on CUDA and ours elsewhere.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vild.errors import VildError

__all__ = [
    "DistInfo",
    "SyncBatchNorm",
    "all_reduce_mean_",
    "barrier",
    "convert_sync_batchnorm",
    "current",
    "env_info",
    "init_distributed",
    "distributed_session",
    "resolve_device",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank in [0, world_size), local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The job layout torchrun announces in the environment (1 process when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise VildError("WORLD_SIZE / RANK / LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise VildError(f"bad distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def current() -> DistInfo:
    """The initialised process group's layout, else a single process."""
    if dist.is_available() and dist.is_initialized():
        env = env_info()
        return DistInfo(dist.get_rank(), dist.get_world_size(), env.local_rank)
    return DistInfo()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None/"auto" -> this rank's GPU (cuda:LOCAL_RANK) when CUDA is available, else CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", env_info().local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env_info().local_rank % max(torch.cuda.device_count(), 1))
    return device


def init_distributed(device: torch.device | None = None, *, timeout_s: float = 1800.0) -> tuple[DistInfo, bool]:
    """Start the process group when torchrun asked for more than one process.

    -> (layout, whether this call started the group and must end it). NCCL when `device` is a
    CUDA device, gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return current(), False
    info = env_info()
    if not info.enabled:
        return info, False
    if not dist.is_available():
        raise VildError("this PyTorch build has no torch.distributed")
    device = resolve_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise VildError(f"cannot start the {backend} process group: {e}") from None
    return current(), True


@contextmanager
def distributed_session(device: torch.device | None = None):
    """`with distributed_session(device) as info:` starts (and afterwards ends) the group if
    torchrun asked for one and nobody started it yet."""
    info, owned = init_distributed(device)
    try:
        yield info
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean of `tensor` over ranks (unchanged in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj, src: int = 0):
    """`obj` of rank `src` on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


# ----------------------------------------------------------------------------- sync BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, with the gradient summed over ranks too (each rank's loss depends on
    every rank's input through the shared statistics)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-time statistics are computed over the whole global batch
    (every rank's images), on any device and backend (gloo included).

    The per-channel sum, sum of squares and count are all-reduced by an autograd-aware sum
    over ranks, so gradients flow through the global
    statistics exactly as in a single BatchNorm over the concatenated batch. Same state-dict
    keys as BatchNorm2d: a model trained with it loads into a plain model. Outside training,
    or in a single process, it is exactly BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        packed = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
        packed = _AllReduceSum.apply(packed)
        n = packed[-1]
        mean = packed[:channels] / n
        var = (packed[channels:2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp_min(1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Every BatchNorm2d of `module` -> a synchronised BatchNorm sharing its parameters and
    statistics: PyTorch's `nn.SyncBatchNorm` on CUDA, `SyncBatchNorm` above elsewhere.
    FrozenBatchNorm2d and GroupNorm are left alone. Returns the (possibly new) module."""
    device = device or next(module.parameters()).device
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if type(module) is nn.BatchNorm2d:
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
