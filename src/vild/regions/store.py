"""On-disk store of teacher embeddings of proposals (ViLD-image targets), and its reader.

Layout of a store folder:
    manifest.json                  what the store is (see `new_manifest`) and its finished shards
    shard-00000.safetensors        images 0..S-1 of the plan, S = shard_size
    shard-00001.safetensors        ...
    shard-00003.part-00016.safetensors   resume checkpoints of an unfinished shard (writer only)

A shard holds, for its n images and their M proposals in total:
    image_ids   int64   [n]
    offsets     int64   [n + 1]   image i owns rows offsets[i]:offsets[i+1]
    boxes       float32 [M, 4]    xyxy, pixels of the original (untransformed) image
    scores      float32 [M]       objectness of the proposer, descending within an image
    embeddings  float16 [M, D]    L2-normalised sum of the 1x and 1.5x crop embeddings

Every file is written to a temporary name and renamed, and the manifest is rewritten (same way)
after each finished shard, so readers never see a partial file. The manifest lists each shard's
image ids, byte size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from vild.errors import VildError
from vild.io import load_json

__all__ = [
    "FORMAT",
    "VERSION",
    "MANIFEST_NAME",
    "RegionStore",
    "shard_name",
    "part_name",
    "encode_shard",
    "decode_shard_bytes",
    "sha256_file",
]

FORMAT = "vild-region-store"
VERSION = 1
MANIFEST_NAME = "manifest.json"
_TENSOR_KEYS = ("image_ids", "offsets", "boxes", "scores", "embeddings")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def part_name(shard_index: int, start: int) -> str:
    return f"shard-{shard_index:05d}.part-{start:05d}.safetensors"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _payload_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in _TENSOR_KEYS:
        t = tensors[key].contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def encode_shard(
    image_ids: Sequence[int],
    entries: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    embed_dim: int,
    metadata: dict[str, str] | None = None,
) -> tuple[bytes, int]:
    """Per-image `(boxes [P,4], scores [P], embeddings [P,D])` -> (safetensors bytes, M).

    Embeddings are stored as float16. The payload digest goes into the header metadata, so a
    file can be checked on its own (`decode_shard_bytes`)."""
    from safetensors.torch import save

    counts = [int(e[0].shape[0]) for e in entries]
    offsets = torch.zeros(len(entries) + 1, dtype=torch.int64)
    if counts:
        offsets[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.int64), 0)
    total = int(offsets[-1])

    def cat(i: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        parts = [e[i].to("cpu", dtype) for e in entries if e[i].shape[0]]
        return torch.cat(parts).contiguous() if parts else torch.zeros(shape, dtype=dtype)

    tensors = {
        "image_ids": torch.tensor([int(i) for i in image_ids], dtype=torch.int64),
        "offsets": offsets,
        "boxes": cat(0, (0, 4), torch.float32),
        "scores": cat(1, (0,), torch.float32),
        "embeddings": cat(2, (0, embed_dim), torch.float16),
    }
    if tensors["embeddings"].shape != (total, embed_dim):
        raise ValueError(f"embeddings {tuple(tensors['embeddings'].shape)} != {(total, embed_dim)}")
    meta = {"format": FORMAT, "version": str(VERSION), "payload_sha256": _payload_digest(tensors)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    # one metadata entry: safetensors writes a multi-key metadata map in random order, and the
    # bytes of a shard must be deterministic (resumed run == uninterrupted run)
    return save(tensors, metadata={"vild": json.dumps(meta, sort_keys=True)}), total


def decode_shard_bytes(data: bytes, *, name: str = "shard") -> tuple[dict[str, torch.Tensor], dict]:
    """Safetensors bytes -> (tensors, header metadata); checks structure and payload digest."""
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types
        raise VildError(f"corrupt region shard {name}: {e}") from None
    meta = _header_metadata(data, name)
    _check_structure(tensors, name)
    if meta.get("payload_sha256") != _payload_digest(tensors):
        raise VildError(f"corrupt region shard {name}: payload checksum mismatch")
    return tensors, meta


def _header_metadata(data: bytes, name: str) -> dict:
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n].decode("utf-8"))
        return dict(json.loads(header.get("__metadata__", {}).get("vild", "{}")))
    except Exception as e:
        raise VildError(f"corrupt region shard {name}: bad header ({e})") from None


def _check_structure(tensors: dict[str, torch.Tensor], name: str) -> None:
    missing = [k for k in _TENSOR_KEYS if k not in tensors]
    if missing:
        raise VildError(f"corrupt region shard {name}: missing tensors {missing}")
    n = tensors["image_ids"].shape[0]
    offsets = tensors["offsets"]
    m = tensors["boxes"].shape[0]
    ok = (
        offsets.shape == (n + 1,)
        and int(offsets[0]) == 0
        and int(offsets[-1]) == m
        and bool((offsets[1:] >= offsets[:-1]).all())
        and tuple(tensors["boxes"].shape) == (m, 4)
        and tuple(tensors["scores"].shape) == (m,)
        and tensors["embeddings"].dim() == 2
        and tensors["embeddings"].shape[0] == m
    )
    if not ok:
        raise VildError(f"corrupt region shard {name}: inconsistent tensor shapes")


class _OpenShard:
    """A lazily read shard: header parsed, index tensors loaded, rows sliced on demand."""

    def __init__(self, path: Path, entry: dict, embed_dim: int) -> None:
        from safetensors import safe_open

        self.path = path
        try:
            self.handle = safe_open(str(path), framework="pt")
            keys = set(self.handle.keys())
            missing = [k for k in _TENSOR_KEYS if k not in keys]
            if missing:
                raise VildError(f"corrupt region shard {path}: missing tensors {missing}")
            self.image_ids = self.handle.get_tensor("image_ids")
            self.offsets = self.handle.get_tensor("offsets").tolist()
            m = self.handle.get_slice("boxes").get_shape()
            e = self.handle.get_slice("embeddings").get_shape()
        except VildError:
            raise
        except Exception as exc:
            raise VildError(f"corrupt region shard {path}: {exc}") from None
        ids = [int(i) for i in self.image_ids.tolist()]
        if ids != [int(i) for i in entry["image_ids"]]:
            raise VildError(f"corrupt region shard {path}: image ids differ from the manifest")
        total = m[0] if m else 0
        if (len(self.offsets) != len(ids) + 1 or self.offsets[0] != 0
                or self.offsets[-1] != total or list(e) != [total, embed_dim]):
            raise VildError(f"corrupt region shard {path}: inconsistent tensor shapes")
        self.position = {iid: i for i, iid in enumerate(ids)}

    def get(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = self.position[image_id]
        a, b = self.offsets[i], self.offsets[i + 1]
        try:
            boxes = self.handle.get_slice("boxes")[a:b]
            scores = self.handle.get_slice("scores")[a:b]
            emb = self.handle.get_slice("embeddings")[a:b]
        except Exception as exc:
            raise VildError(f"corrupt region shard {self.path}: {exc}") from None
        return boxes.float(), scores.float(), F.normalize(emb.float(), dim=-1)


class RegionStore:
    """Reader of a region-embedding store folder (see module docstring).

    `get(image_id)` -> `(boxes FloatTensor [P, 4] xyxy original-image px, scores [P],
    embeddings [P, D] float32, L2-normalised)`, or None when the image is not in the store.
    Shards are opened lazily (safetensors `safe_open`, rows sliced without reading the whole
    file) and kept in a small LRU cache. Missing or corrupt shards raise `VildError` naming the
    file: size and structure are checked when a shard is opened; with `verify=True` its sha256
    too (once per shard and process). `verify_all()` checks every shard.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False, cache_size: int = 8) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise VildError(f"not a region store (no {MANIFEST_NAME}): {self.path}")
        manifest = load_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise VildError(f"{manifest_path} is not a {FORMAT} manifest")
        if int(manifest.get("version", -1)) > VERSION:
            raise VildError(
                f"{manifest_path}: store version {manifest.get('version')} is newer than this "
                f"vild understands ({VERSION}); upgrade vild"
            )
        self.manifest: dict = manifest
        self.verify = bool(verify)
        self.cache_size = max(1, int(cache_size))
        self._shards: list[dict] = list(manifest.get("shards", []))
        self._where: dict[int, int] = {}
        for s, entry in enumerate(self._shards):
            for iid in entry["image_ids"]:
                self._where[int(iid)] = s
        self._image_ids = [int(i) for e in self._shards for i in e["image_ids"]]
        self._cache: OrderedDict[int, _OpenShard] = OrderedDict()
        self._verified: set[int] = set()
        self._pid = os.getpid()

    # -- description ------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def num_proposals(self) -> int:
        return int(self.manifest["num_proposals"])

    @property
    def teacher_identity(self) -> str:
        return str(self.manifest["teacher"]["identity"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete", False))

    @property
    def image_ids(self) -> list[int]:
        """Ids of the stored images, in store order."""
        return list(self._image_ids)

    def __len__(self) -> int:
        return len(self._image_ids)

    def __contains__(self, image_id: object) -> bool:
        try:
            return int(image_id) in self._where  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def __repr__(self) -> str:
        return (f"RegionStore({str(self.path)!r}, images={len(self)}, "
                f"complete={self.complete}, embed_dim={self.manifest.get('embed_dim')})")

    # -- reading ----------------------------------------------------------------------------

    def _shard_path(self, s: int) -> Path:
        return self.path / self._shards[s]["file"]

    def _check_file(self, s: int, *, full: bool) -> Path:
        entry = self._shards[s]
        path = self._shard_path(s)
        if not path.is_file():
            raise VildError(f"region shard missing: {path}")
        size = path.stat().st_size
        if "size" in entry and size != int(entry["size"]):
            raise VildError(f"corrupt region shard {path}: {size} bytes, manifest says {entry['size']}")
        if full and "sha256" in entry and sha256_file(path) != entry["sha256"]:
            raise VildError(f"corrupt region shard {path}: sha256 does not match the manifest")
        return path

    def _open(self, s: int) -> _OpenShard:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: do not share handles
            self._cache.clear()
            self._pid = os.getpid()
        shard = self._cache.get(s)
        if shard is not None:
            self._cache.move_to_end(s)
            return shard
        full = self.verify and s not in self._verified
        path = self._check_file(s, full=full)
        if full:
            self._verified.add(s)
        shard = _OpenShard(path, self._shards[s], self.embed_dim)
        self._cache[s] = shard
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return shard

    def get(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """image id -> (boxes [P, 4] xyxy px, scores [P], embeddings [P, D] normalised) or None."""
        s = self._where.get(int(image_id))
        if s is None:
            return None
        return self._open(s).get(int(image_id))

    def __getitem__(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.get(image_id)
        if out is None:
            raise KeyError(image_id)
        return out

    def items(self) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """(image_id, (boxes, scores, embeddings)) for every stored image, in store order."""
        for iid in self._image_ids:
            yield iid, self.get(iid)  # type: ignore[misc]

    def verify_all(self) -> None:
        """Check every shard's presence, size and sha256; raise `VildError` on the first bad one."""
        for s in range(len(self._shards)):
            self._check_file(s, full=True)
            self._verified.add(s)

    def storage_bytes(self) -> int:
        """Total size of the listed shards (from the manifest)."""
        return sum(int(e.get("size", 0)) for e in self._shards)

    # -- pickling (DataLoader with spawn) -----------------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()
