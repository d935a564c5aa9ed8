"""The model runs on one worker thread, off the event loop, one call at a time.

PyTorch CPU inference is not safe to re-enter from many threads at once, and one call at a
time is also the fastest order on a few cores. Cheap calls go first: a query of cached regions
(text encoding + a matrix product) waits only for the call in progress, not behind queued
detector passes, so the page's vocabulary edits stay instant while others upload images.

Callers put their deadline around `run` (asyncio.wait_for): a call still queued when its
deadline passes is cancelled before it starts; a call already running is finished and its
result thrown away.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import threading
from typing import Any, Callable

from vild.service.errors import ServiceError

FAST = 0  # queries of cached regions
SLOW = 1  # detector passes


class ModelRunner:
    def __init__(self, max_pending: int, threads: int | None = None) -> None:
        self.max_pending = max_pending
        self._threads = threads
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="vild-model", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def _work(self) -> None:
        if self._threads:
            import torch

            torch.set_num_threads(self._threads)
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)
            else:
                future.set_result(result)
            del job, future, fn, args, kwargs  # hold no tensors while idle

    async def run(self, fn: Callable[..., Any], *args: Any, _priority: int = SLOW, **kwargs: Any) -> Any:
        """Run fn(*args, **kwargs) on the model thread and await its result (FAST jobs first,
        then in arrival order). ServiceError(503) when `max_pending` calls already wait."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise ServiceError(
                    503, "busy", f"the server is busy ({self._pending} requests waiting); retry later"
                )
            self._pending += 1
        try:
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._queue.put((_priority, next(self._order), (future, fn, args, kwargs)))
            # wrap_future: cancelling the await cancels a job that has not started.
            return await asyncio.wrap_future(future)
        finally:
            with self._lock:
                self._pending -= 1

    def shutdown(self) -> None:
        self._queue.put((float("inf"), next(self._order), None))
