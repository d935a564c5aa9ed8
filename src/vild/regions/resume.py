"""The resumable state of a region store folder: manifest checks, per-batch part files and the
per-shard records ranks leave behind. `embed_regions` decides what to run; this module decides
what on disk is still valid to keep (see the `vild.regions.embed` docstring).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vild.errors import VildError
from vild.io import atomic_write_bytes, load_json
from vild.regions.store import (
    FORMAT,
    MANIFEST_NAME,
    VERSION,
    decode_shard_bytes,
    encode_shard,
    part_name,
    sha256_file,
    shard_name,
)

Entry = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes [P,4], scores [P], emb [P,D]



def _plan_digest(image_ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps([int(i) for i in image_ids]).encode()).hexdigest()


def _json_roundtrip(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise VildError(f"{what} must be JSON-serialisable: {e}") from None


_COMPAT_KEYS = (
    ("teacher identity", lambda m: m["teacher"]["identity"]),
    ("embed_dim", lambda m: m["embed_dim"]),
    ("num_proposals", lambda m: m["num_proposals"]),
    ("crop_scales", lambda m: m["crop_scales"]),
    ("min_box_size", lambda m: m["min_box_size"]),
    ("shard_size", lambda m: m["shard_size"]),
    ("images (count and order)", lambda m: (m["num_images"], m["image_ids_sha256"])),
    ("metadata", lambda m: m["metadata"]),
)


def _check_compatible(old: dict, new: dict, out_dir: Path) -> None:
    if old.get("format") != FORMAT:
        raise VildError(f"{out_dir / MANIFEST_NAME} is not a {FORMAT} manifest; choose another folder")
    if int(old.get("version", -1)) != VERSION:
        raise VildError(f"{out_dir}: store version {old.get('version')} != {VERSION}; "
                        "resume=False to rebuild it")
    for what, get in _COMPAT_KEYS:
        try:
            a = get(old)
        except (KeyError, TypeError):
            a = None
        b = get(new)
        if a != b:
            if what == "teacher identity":
                raise VildError(
                    f"{out_dir} was made by teacher {a}, not {b}; refusing to resume into it "
                    "(use another folder, or resume=False to rebuild it)"
                )
            raise VildError(
                f"{out_dir} was made with a different {what} ({a!r} != {b!r}); refusing to "
                "resume into it (use another folder, or resume=False to rebuild it)"
            )


def _is_ours(name: str) -> bool:
    return (name.startswith("shard-") and name.endswith(".safetensors")) or (
        name.startswith(".") and name.endswith(".tmp")
        and (name.startswith(".shard-") or name.startswith(f".{MANIFEST_NAME}."))
    )


def _remove_store_files(out_dir: Path, *, keep: set[str] = frozenset(), manifest: bool = False) -> None:
    for p in out_dir.iterdir():
        if p.is_file() and _is_ours(p.name) and p.name not in keep:
            p.unlink(missing_ok=True)
    if manifest:
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)


def entry_name(index: int) -> str:
    """The record a rank writes next to a shard it finished (multi-process runs only)."""
    return f"shard-{index:05d}.entry.json"


def _part_shard_index(path: Path) -> int | None:
    try:
        return int(path.name.split(".")[0].split("-")[1])
    except (IndexError, ValueError):
        return None


def _read_record(path: Path) -> dict | None:
    try:
        entry = load_json(path)
        int(entry["index"])
        return entry
    except (VildError, KeyError, TypeError, ValueError):
        return None


def _prepare_store(out_dir: Path, manifest: dict, *, resume: bool, image_ids: list[int],
                   shard_size: int) -> tuple[dict[int, dict], list[Path]]:
    """Check a store folder against the plan and clean it: -> (finished shards worth keeping,
    rank records to delete once the manifest lists them)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise VildError(f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    done: dict[int, dict] = {}
    had_manifest = manifest_path.exists()
    if had_manifest and resume:
        old = load_json(manifest_path)
        _check_compatible(old, manifest, out_dir)
        for entry in old.get("shards", []):
            k = int(entry.get("index", -1))
            if _shard_entry_valid(out_dir, entry, k, image_ids, shard_size):
                done[k] = entry
    records = sorted(out_dir.glob("shard-*.entry.json"))
    if had_manifest and resume:  # shards a killed multi-process run finished but did not list
        for path in records:
            entry = _read_record(path)
            if entry is None:
                continue
            k = int(entry["index"])
            if k not in done and _shard_entry_valid(out_dir, entry, k, image_ids, shard_size):
                done[k] = entry
    keep_names = {e["file"] for e in done.values()}
    if resume and had_manifest:
        # keep part files too (checked by their shard's rank); drop temp files and unlisted shards
        keep_names |= {p.name for p in out_dir.glob("shard-*.part-*.safetensors")}
    _remove_store_files(out_dir, keep=keep_names, manifest=not resume)
    return done, records


def _checkpoint_batch(out_dir: Path, indices: list[int], entries: list[Entry], *, image_ids,
                      shard_size, embed_dim, identity, buffers, part_files) -> None:
    k = indices[0] // shard_size
    start = indices[0] - k * shard_size
    assert all(i // shard_size == k for i in indices) and indices == list(
        range(indices[0], indices[0] + len(indices)))
    ids = [image_ids[i] for i in indices]
    data, _ = encode_shard(ids, entries, embed_dim=embed_dim, metadata={
        "teacher_identity": identity, "shard": str(k), "start": str(start),
    })
    path = out_dir / part_name(k, start)
    atomic_write_bytes(path, data)
    part_files[k].append(path)
    for j, entry in enumerate(entries):
        buffers[k][start + j] = entry


def _shard_entry_valid(out_dir: Path, entry: dict, k: int, image_ids: list[int], shard_size: int) -> bool:
    """A manifest-listed shard is kept on resume iff its file exists with the listed size and
    sha256 and it covers exactly the planned images of slot k."""
    try:
        path = out_dir / entry["file"]
        if entry["file"] != shard_name(k) or not path.is_file():
            return False
        if path.stat().st_size != int(entry["size"]) or sha256_file(path) != entry["sha256"]:
            return False
        planned = image_ids[k * shard_size:(k + 1) * shard_size]
        return [int(i) for i in entry["image_ids"]] == planned and len(planned) > 0
    except (KeyError, TypeError, ValueError, OSError):
        return False


def _load_part(path: Path, identity: str, image_ids: list[int], shard_size: int,
               buffers: dict[int, dict[int, Entry]], part_files: dict[int, list[Path]]) -> bool:
    """Load a resume checkpoint into `buffers`; False if it is unusable (caller deletes it)."""
    try:
        tensors, meta = decode_shard_bytes(path.read_bytes(), name=str(path))
        k, start = int(meta["shard"]), int(meta["start"])
    except (VildError, KeyError, ValueError, OSError):
        return False
    if meta.get("teacher_identity") != identity or k not in buffers or path.name != part_name(k, start):
        return False
    ids = [int(i) for i in tensors["image_ids"].tolist()]
    first = k * shard_size + start
    if not ids or start + len(ids) > shard_size or ids != image_ids[first:first + len(ids)]:
        return False
    if any(start + j in buffers[k] for j in range(len(ids))):
        return False
    off = tensors["offsets"].tolist()
    for j in range(len(ids)):
        a, b = off[j], off[j + 1]
        buffers[k][start + j] = (tensors["boxes"][a:b], tensors["scores"][a:b],
                                 tensors["embeddings"][a:b])
    part_files[k].append(path)
    return True
