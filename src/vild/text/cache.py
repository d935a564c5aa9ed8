"""On-disk cache of per-name text embeddings.

Layout::

    <root>/<teacher identity>/<key>/shard-<content hash>.safetensors
    <root>/<teacher identity>/<key>/key.json        # what the key stands for (informational)

``<key>`` hashes everything besides the teacher weights that determines an embedding: the
exact effective template strings and prompt rules (`vild.text.prompts.templates_key`), the
tokenizer (a hash of the tokens of probe strings), the encoding precision and the cache format.
Each value is one name's normalised prompt-averaged embedding ``[D]`` float32.

A shard is written once, atomically (temp file + rename), and never modified: concurrent
builders each add their own shard, and a killed writer leaves at most a hidden temp file that
readers never open. A shard is trusted only if its safetensors header parses, it holds exactly
one float32 ``[n, D]`` tensor, its metadata names are ``n`` distinct strings, a SHA-256 over
names and values matches, every value is finite and every row has unit norm. Anything else is
logged, deleted, and its names are simply encoded again. When a directory holds more than
`MAX_SHARDS` shards they are merged into one (written before the old ones are deleted). No
pickle anywhere: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from vild.io import atomic_write_bytes

log = logging.getLogger("vild.text")

FORMAT = "vild-text-cache/1"
MAX_SHARDS = 8
_STALE_TMP_S = 24 * 3600
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def default_cache_dir() -> Path:
    """``$VILD_CACHE_DIR/text`` if set, else ``~/.cache/vild/text``."""
    root = os.environ.get("VILD_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vild"
    return base / "text"


def _safe_component(s: str) -> str:
    if _SAFE.match(s) and s not in (".", ".."):
        return s
    return "h" + hashlib.sha256(s.encode("utf-8")).hexdigest()[:24]


def _digest(names_json: str, values: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(names_json.encode("utf-8"))
    h.update(b"\0")
    h.update(str(tuple(values.shape)).encode())
    h.update(values.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """Name -> embedding store for one (teacher, template set, tokenizer, precision) key."""

    def __init__(self, root: str | os.PathLike, identity: str, key: str, *, dim: int | None = None,
                 describe: Mapping | None = None) -> None:
        self.dir = Path(root).expanduser() / _safe_component(str(identity)) / _safe_component(key)
        self.dim = dim
        self.describe = dict(describe or {})

    # ------------------------------------------------------------------ reading
    def _shards(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.glob("shard-*.safetensors") if p.is_file())
        except OSError:
            return []

    def _read_shard(self, path: Path) -> dict[str, torch.Tensor] | None:
        """The shard's entries, or None if it vanished (a concurrent merge). Raises ValueError
        with the reason if the shard is corrupt."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = list(f.keys())
                if keys != ["embeddings"]:
                    raise ValueError(f"unexpected tensors {keys}")
                values = f.get_tensor("embeddings")
        except FileNotFoundError:
            return None
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean corrupt
            raise ValueError(f"unreadable safetensors ({type(e).__name__}: {e})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r} != {FORMAT!r}")
        names_json = meta.get("names", "")
        try:
            names = json.loads(names_json)
        except json.JSONDecodeError:
            raise ValueError("names metadata is not JSON") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("names metadata is not a list of strings")
        if len(set(names)) != len(names):
            raise ValueError("repeated names")
        if values.dtype != torch.float32 or values.ndim != 2 or values.shape[0] != len(names):
            raise ValueError(f"bad tensor {values.dtype} {tuple(values.shape)} for {len(names)} names")
        if self.dim is not None and values.shape[1] != self.dim:
            raise ValueError(f"dimension {values.shape[1]} != {self.dim}")
        if meta.get("sha256") != _digest(names_json, values):
            raise ValueError("checksum mismatch")
        arr = values.numpy()  # numpy: single-threaded, no thread-pool wake-ups for small checks
        if not np.isfinite(arr).all():
            raise ValueError("non-finite values")
        if arr.shape[0] and float(np.abs(np.sqrt(np.einsum("ij,ij->i", arr, arr)) - 1).max()) > 1e-3:
            raise ValueError("rows are not unit-norm")
        return dict(zip(names, values))

    def _discard(self, path: Path, why: str) -> None:
        log.warning("discarding corrupt text-embedding cache file %s: %s", path, why)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # read-only cache: ignore the file, never trust it
            log.warning("could not delete %s: %s", path, e)

    def load(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Cached embeddings (of `names` only, if given). Corrupt shards are discarded."""
        wanted = None if names is None else set(names)
        found: dict[str, torch.Tensor] = {}
        for path in self._shards():
            try:
                entries = self._read_shard(path)
            except ValueError as e:
                self._discard(path, str(e))
                continue
            if entries is None:
                continue
            for n, v in entries.items():
                if wanted is None or n in wanted:
                    found.setdefault(n, v)
        return found

    # ------------------------------------------------------------------ writing
    def add(self, entries: Mapping[str, torch.Tensor]) -> None:
        """Store new entries as one new shard (atomic); merges shards when there are many."""
        if not entries:
            return
        names = list(entries)
        values = torch.stack([entries[n].detach().float().cpu() for n in names]).contiguous()
        try:
            self._write(names, values)
            self._write_key_file()
            shards = self._shards()
            if len(shards) > MAX_SHARDS:
                self._merge(shards)
        except OSError as e:
            log.warning("could not write the text-embedding cache in %s: %s", self.dir, e)

    def _write(self, names: list[str], values: torch.Tensor) -> Path:
        from safetensors.torch import save

        names_json = json.dumps(names, ensure_ascii=False)
        digest = _digest(names_json, values)
        meta = {"format": FORMAT, "names": names_json, "sha256": digest}
        path = self.dir / f"shard-{digest[:24]}.safetensors"
        atomic_write_bytes(path, save({"embeddings": values}, metadata=meta))
        return path

    def _write_key_file(self) -> None:
        path = self.dir / "key.json"
        if self.describe and not path.exists():
            atomic_write_bytes(path, (json.dumps(self.describe, indent=2) + "\n").encode("utf-8"))

    def _merge(self, shards: list[Path]) -> None:
        merged: dict[str, torch.Tensor] = {}
        read: list[Path] = []
        for path in shards:
            try:
                entries = self._read_shard(path)
            except ValueError as e:
                self._discard(path, str(e))
                continue
            if entries is None:
                continue
            read.append(path)
            for n, v in entries.items():
                merged.setdefault(n, v)
        if not merged:
            return
        names = list(merged)
        new = self._write(names, torch.stack([merged[n] for n in names]).contiguous())
        for path in read:
            if path != new:
                path.unlink(missing_ok=True)
        now = time.time()
        for tmp in self.dir.glob(".shard-*.tmp"):  # leftovers of killed writers
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                pass

    def clear(self) -> None:
        for path in self._shards():
            path.unlink(missing_ok=True)
