"""Loader settings: worker-count defaults by machine size, checks, pinned memory for CUDA."""

from __future__ import annotations

import pytest

from vild.data.loading import default_workers, loader_options, resolve_workers
from vild.errors import VildError


def test_worker_count_defaults_and_checks(monkeypatch):
    import vild.data.loading as loading

    monkeypatch.setattr(loading, "available_cores", lambda: 2)
    assert default_workers("cpu") == 0 and resolve_workers(None, "cpu") == 0
    monkeypatch.setattr(loading, "available_cores", lambda: 16)
    assert default_workers("cpu") == 4 and default_workers("cuda") == 8
    assert resolve_workers(3, "cpu") == 3
    with pytest.raises(VildError, match="--workers"):
        resolve_workers(-1)
    assert loader_options(0, "cpu")["pin_memory"] is False and "prefetch_factor" not in loader_options(0, "cpu")
    assert loader_options(2, "cuda")["pin_memory"] is True and loader_options(2, "cuda", prefetch=3)["prefetch_factor"] == 3
