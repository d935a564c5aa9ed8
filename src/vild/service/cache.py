"""A bounded, thread-safe LRU cache of image embeddings (`ImageRegions`), keyed by random ids."""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections import OrderedDict
from typing import Any

import torch


def tensor_bytes(obj: Any, _depth: int = 0) -> int:
    """Bytes of the tensors reachable from `obj` (dataclasses, dicts, lists, attributes)."""
    if _depth > 6 or obj is None:
        return 0
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, _depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, _depth + 1) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(tensor_bytes(v, _depth + 1) for v in vars(obj).values())
    return 0


@dataclasses.dataclass
class _Entry:
    value: Any
    nbytes: int
    info: dict


class RegionCache:
    """At most `max_items` entries and `max_bytes` bytes of tensors; least recently used out."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def put(self, value: Any, info: dict | None = None) -> str:
        key = secrets.token_urlsafe(12)
        nbytes = tensor_bytes(value)
        with self._lock:
            self._items[key] = _Entry(value, nbytes, dict(info or {}))
            self._bytes += nbytes
            # Always keep the newest entry, even when it alone is over max_bytes.
            while len(self._items) > 1 and (
                len(self._items) > self.max_items or self._bytes > self.max_bytes
            ):
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
                self.evictions += 1
        return key

    def get(self, key: str) -> tuple[Any, dict] | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            return entry.value, entry.info

    def delete(self, key: str) -> bool:
        with self._lock:
            entry = self._items.pop(key, None)
            if entry is None:
                return False
            self._bytes -= entry.nbytes
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def stats(self) -> dict:
        with self._lock:
            return {
                "items": len(self._items), "bytes": self._bytes, "max_items": self.max_items,
                "max_bytes": self.max_bytes, "evictions": self.evictions,
            }
