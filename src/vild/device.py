"""Devices named by users (`--device`, `device=`): checked up front, one clear line if unusable."""

from __future__ import annotations

from vild.errors import VildError


def check_device(spec):
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a `torch.device` -> `torch.device`.

    Raises `VildError` for a name torch does not know, and for a device this machine lacks
    (no CUDA, a GPU index past the last one, no MPS), before any model is loaded."""
    import torch

    if isinstance(spec, torch.device):
        dev = spec
    else:
        try:
            dev = torch.device(str(spec).strip())
        except (RuntimeError, TypeError, ValueError):
            raise VildError(f"unknown device {str(spec)[:40]!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VildError(f"device {str(spec)!r}: this machine has no CUDA GPU that torch can use "
                            "(use --device cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise VildError(f"device {str(spec)!r}: this machine has {count} CUDA GPU(s), "
                            f"numbered 0..{count - 1}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise VildError(f"device {str(spec)!r}: MPS is not available on this machine (use --device cpu)")
        return dev
    raise VildError(f"device {str(spec)!r}: vild runs on cpu, cuda or mps")
