"""Offline ViLD-image targets: proposals of the base-trained RPN embedded by the teacher.

`embed_regions` runs once over the training images and writes a `RegionStore` folder (layout in
`vild.regions.store`). It is resumable: each finished batch is checkpointed to a part file, each
finished shard is written and listed in the manifest, everything by temp-file + rename; a run
that is killed continues where it stopped (at most the batch in flight is recomputed).

Under torchrun (an initialised `torch.distributed` process group) the shards are dealt to the
ranks (shard k to rank k mod world size). Each rank writes its shards and, for each, a small
`shard-XXXXX.entry.json` record; rank 0 merges the records into the manifest when every rank
is done, and at the start of any later run (so a killed multi-process run resumes shard by
shard, with any number of processes). The finished store is byte for byte the one a single
process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vild.data.loading import loader_options
from vild.errors import VildError
from vild.io import atomic_write_bytes, load_json, save_json
from vild.regions.store import (
    FORMAT,
    MANIFEST_NAME,
    VERSION,
    RegionStore,
    decode_shard_bytes,
    encode_shard,
    part_name,
    sha256_file,
    shard_name,
)

__all__ = ["embed_regions", "select_proposals"]

Proposer = Callable[[list[torch.Tensor]], Sequence[Any]]
Entry = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes [P,4], scores [P], emb [P,D]


# ----------------------------------------------------------------------------- inputs


class _ImageSource(torch.utils.data.Dataset):
    """Index -> (index, raw image [3, H, W] in 0..1), from a dataset or (image_id, image) items."""

    def __init__(self, dataset_or_items: Any) -> None:
        if hasattr(dataset_or_items, "image_ids") and hasattr(dataset_or_items, "load_image"):
            self.dataset = dataset_or_items
            self.items = None
            self.image_ids = [int(i) for i in dataset_or_items.image_ids]
        else:
            items = dataset_or_items
            if not isinstance(items, Sequence):
                items = list(items)
            for item in items[:1]:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise TypeError(
                        "embed_regions needs a DetectionDataset (image_ids + load_image) or a "
                        "sequence of (image_id, image tensor [3,H,W] | path) pairs"
                    )
            self.dataset = None
            self.items = items
            self.image_ids = [int(item[0]) for item in items]
        if len(set(self.image_ids)) != len(self.image_ids):
            raise VildError("duplicate image ids in the images to embed")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        if self.dataset is not None:
            image = self.dataset.load_image(index)
        else:
            image = self.items[index][1]
            if isinstance(image, (str, os.PathLike)):
                from vild.data.images import load_image

                image = load_image(image)
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise VildError(f"image {self.image_ids[index]}: expected a tensor [3, H, W]")
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        return index, image.float()


def _collate_list(batch: list) -> list:
    return batch


# ----------------------------------------------------------------------------- proposals


def select_proposals(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int], *,
                     num_proposals: int, min_box_size: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip boxes [P, 4] xyxy to the image (h, w), drop non-finite and boxes with a side below
    `min_box_size` px, keep the top `num_proposals` by score (stable) -> (boxes, scores) float32."""
    boxes = boxes.detach().to("cpu", torch.float32).reshape(-1, 4)
    scores = scores.detach().to("cpu", torch.float32).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise VildError(f"proposer returned {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    h, w = image_size
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = (
        torch.isfinite(boxes).all(1) & torch.isfinite(scores)
        & ((boxes[:, 2] - boxes[:, 0]) >= min_box_size)
        & ((boxes[:, 3] - boxes[:, 1]) >= min_box_size)
    )
    boxes, scores = boxes[keep], scores[keep]
    order = torch.sort(scores, descending=True, stable=True).indices[:num_proposals]
    return boxes[order].contiguous(), scores[order].contiguous()


def _unpack_proposal(p: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(p, dict):
        return p["boxes"], p["scores"]
    if hasattr(p, "boxes") and hasattr(p, "scores"):
        return p.boxes, p.scores
    boxes, scores = p
    return boxes, scores


# ----------------------------------------------------------------------------- manifest


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


# ----------------------------------------------------------------------------- main entry


def embed_regions(
    dataset_or_items: Any,
    proposer: Proposer,
    teacher: Any,
    out_dir: str | os.PathLike,
    *,
    num_proposals: int = 300,
    shard_size: int = 64,
    batch_size: int = 4,
    resume: bool = True,
    progress: bool = True,
    metadata: dict | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    min_box_size: float = 1.0,
) -> RegionStore:
    """Embed the top proposals of every image with the teacher and store them in `out_dir`.

    dataset_or_items: a `DetectionDataset` (its raw images via `load_image`, no transform) or a
        sequence of `(image_id, image FloatTensor [3, H, W] in 0..1 | path)`.
    proposer(images: list of [3, H, W]) -> list of `(boxes [P, 4] xyxy px, scores [P])` (or dicts
        / objects with boxes and scores), one per image; boxes are clipped to the image, those
        with a side < `min_box_size` dropped, and the top `num_proposals` by score kept.
    teacher: has `identity`, `embed_dim` and `encode_regions(image [3, H, W], boxes [P, 4]) ->
        [P, D]` (1x + 1.5x crops, summed, normalised); optional `name`, `crop_scales`.
    `metadata` (JSON-able, e.g. the RPN checkpoint identity) is stored and must be equal when
    resuming; so must the teacher identity, num_proposals, shard_size and the image list.
    `resume=False` discards whatever store is in `out_dir`. Images are processed in order,
    `batch_size` at a time through the proposer (images moved to `device` when given),
    read by `num_workers` DataLoader workers (pinned memory when `device` is CUDA). Returns the finished `RegionStore`.
    Under an initialised `torch.distributed` group every rank must call this with the same
    arguments; each embeds its share of the shards (see the module docstring).
    """
    if num_proposals < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError("num_proposals, shard_size and batch_size must be >= 1")
    out_dir = Path(out_dir)
    source = _ImageSource(dataset_or_items)
    image_ids = source.image_ids
    n_images = len(image_ids)
    n_shards = (n_images + shard_size - 1) // shard_size

    identity = str(teacher.identity)
    embed_dim = int(teacher.embed_dim)
    crop_scales = [float(s) for s in getattr(teacher, "crop_scales", (1.0, 1.5))]
    manifest: dict = {
        "format": FORMAT,
        "version": VERSION,
        "teacher": {"identity": identity, "name": str(getattr(teacher, "name", type(teacher).__name__))},
        "embed_dim": embed_dim,
        "num_proposals": int(num_proposals),
        "crop_scales": crop_scales,
        "min_box_size": float(min_box_size),
        "box_format": "xyxy, pixels of the original image",
        "embedding_dtype": "float16",
        "shard_size": int(shard_size),
        "num_images": n_images,
        "image_ids_sha256": _plan_digest(image_ids),
        "metadata": _json_roundtrip(metadata or {}, "metadata"),
        "shards": [],
        "complete": False,
    }

    rank, world_size = _ranks()
    manifest_path = out_dir / MANIFEST_NAME

    def write_manifest() -> None:
        manifest["shards"] = [done[k] for k in sorted(done)]
        manifest["complete"] = len(done) == n_shards
        save_json(manifest_path, manifest)

    done: dict[int, dict] = {}
    error = None
    if rank == 0:  # the only rank that cleans up and writes the manifest
        try:
            done, records = _prepare_store(out_dir, manifest, resume=resume, image_ids=image_ids,
                                           shard_size=shard_size)
            write_manifest()
            for path in records:  # merged: the manifest lists them now
                path.unlink(missing_ok=True)
        except VildError as e:
            error = str(e)
    if world_size > 1:
        error = _broadcast(error)
    if error is not None:
        raise VildError(error)
    if world_size > 1 and rank != 0:
        listed = load_json(manifest_path).get("shards", [])
        done = {int(e["index"]): e for e in listed}

    # this rank's unfinished shards, with their resume checkpoints
    mine = [k for k in range(n_shards) if k not in done and k % world_size == rank]
    buffers: dict[int, dict[int, Entry]] = {k: {} for k in mine}
    part_files: dict[int, list[Path]] = {k: [] for k in buffers}
    for path in sorted(out_dir.glob("shard-*.part-*.safetensors")):
        k = _part_shard_index(path)
        if world_size > 1 and k is not None and k % world_size != rank:
            continue  # another rank's checkpoint
        if not _load_part(path, identity, image_ids, shard_size, buffers, part_files):
            path.unlink(missing_ok=True)

    def shard_positions(k: int) -> range:
        return range(k * shard_size, min(n_images, (k + 1) * shard_size))

    def finish_shard(k: int) -> None:
        positions = shard_positions(k)
        entries = [buffers[k][p - k * shard_size] for p in positions]
        ids = [image_ids[p] for p in positions]
        data, total = encode_shard(ids, entries, embed_dim=embed_dim,
                                   metadata={"teacher_identity": identity, "shard": str(k)})
        name = shard_name(k)
        atomic_write_bytes(out_dir / name, data)
        done[k] = {
            "index": k, "file": name, "image_ids": ids, "num_regions": total,
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        }
        if world_size > 1:
            save_json(out_dir / entry_name(k), done[k])  # merged into the manifest by rank 0
        else:
            write_manifest()
        for p in part_files.pop(k, []):
            p.unlink(missing_ok=True)
        del buffers[k]

    # shards whose parts already cover every image only need merging
    for k in sorted(buffers):
        if len(buffers[k]) == len(shard_positions(k)):
            finish_shard(k)

    batches: list[list[int]] = []  # runs of consecutive missing images, never across shards
    for k in sorted(buffers):
        run: list[int] = []
        for p in shard_positions(k):
            if p - k * shard_size in buffers[k]:
                if run:
                    batches.append(run)
                    run = []
                continue
            run.append(p)
            if len(run) == batch_size:
                batches.append(run)
                run = []
        if run:
            batches.append(run)
    pending = sum(len(b) for b in batches)

    failure: BaseException | None = None
    try:
        if pending:
            loader = torch.utils.data.DataLoader(
                source, batch_sampler=batches, collate_fn=_collate_list,
                **loader_options(num_workers, device, prefetch=2),
            )
            _run_batches(
                loader, proposer, teacher, out_dir,
                image_ids=image_ids, shard_size=shard_size, num_proposals=num_proposals,
                min_box_size=min_box_size, embed_dim=embed_dim, identity=identity,
                crops_per_box=len(crop_scales), device=device, progress=progress and rank == 0,
                total=pending, buffers=buffers, part_files=part_files,
                shard_positions=shard_positions, finish_shard=finish_shard,
            )
    except BaseException as e:
        if world_size == 1:
            raise
        failure = e
    if world_size > 1:
        # every rank learns whether another failed (instead of waiting for it forever)
        errors = _all_gather(None if failure is None else f"rank {rank}: {type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        failed = [e for e in errors if e]
        if failed:
            raise VildError(f"embedding regions failed on another rank ({failed[0]}); rerun to resume")
        if rank == 0:
            for path in sorted(out_dir.glob("shard-*.entry.json")):
                entry = _read_record(path)
                if entry is not None and _shard_entry_valid(out_dir, entry, int(entry["index"]),
                                                            image_ids, shard_size):
                    done[int(entry["index"])] = entry
            write_manifest()
            for path in out_dir.glob("shard-*.entry.json"):
                path.unlink(missing_ok=True)
        _barrier()
        done = {int(e["index"]): e for e in load_json(manifest_path).get("shards", [])}
    if len(done) != n_shards:  # pragma: no cover - defensive
        raise VildError(f"{out_dir}: {n_shards - len(done)} shards were not written")
    if world_size == 1:
        write_manifest()
    return RegionStore(out_dir)


# ----------------------------------------------------------------------------- ranks


def entry_name(index: int) -> str:
    """The record a rank writes next to a shard it finished (multi-process runs only)."""
    return f"shard-{index:05d}.entry.json"


def _ranks() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(obj: Any) -> list:
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _barrier() -> None:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


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


def _run_batches(loader, proposer, teacher, out_dir: Path, *, image_ids, shard_size, num_proposals,
                 min_box_size, embed_dim, identity, crops_per_box, device, progress, total,
                 buffers, part_files, shard_positions, finish_shard) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc="embedding regions", disable=not progress,
               dynamic_ncols=True)
    crops, start = 0, time.perf_counter()
    try:
        with torch.no_grad():
            for batch in loader:
                indices = [int(i) for i, _ in batch]
                images = [img if device is None else img.to(device, non_blocking=True) for _, img in batch]
                proposals = list(proposer(images))
                if len(proposals) != len(images):
                    raise VildError(
                        f"proposer returned {len(proposals)} results for {len(images)} images")
                selected = [
                    select_proposals(*_unpack_proposal(prop), (int(img.shape[-2]), int(img.shape[-1])),
                                     num_proposals=num_proposals, min_box_size=min_box_size)
                    for img, prop in zip(images, proposals)
                ]
                embeddings = _encode(teacher, images, [b for b, _ in selected], embed_dim)
                entries: list[Entry] = []
                for (boxes, scores), emb in zip(selected, embeddings):
                    entries.append((boxes, scores, emb.to(torch.float16)))
                    crops += crops_per_box * int(boxes.shape[0])
                bar.update(len(entries))
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix({"crops/s": f"{crops / elapsed:.1f}"}, refresh=False)
                _checkpoint_batch(out_dir, indices, entries, image_ids=image_ids,
                                  shard_size=shard_size, embed_dim=embed_dim, identity=identity,
                                  buffers=buffers, part_files=part_files)
                k = indices[0] // shard_size
                if len(buffers[k]) == len(shard_positions(k)):
                    finish_shard(k)
    finally:
        bar.close()


def _encode(teacher, images: list[torch.Tensor], boxes: list[torch.Tensor],
            embed_dim: int) -> list[torch.Tensor]:
    """Teacher embeddings of each image's boxes -> list of [P_i, D] float32, L2-normalised.
    Uses `teacher.encode_regions_batch` (crops of several images share forward passes) when
    the teacher has it, else `encode_regions` per image; images without boxes are skipped."""
    todo = [i for i, b in enumerate(boxes) if b.shape[0]]
    out = [torch.zeros((0, embed_dim), dtype=torch.float32) for _ in boxes]
    if not todo:
        return out
    batch_fn = getattr(teacher, "encode_regions_batch", None)
    if batch_fn is not None:
        results = list(batch_fn([images[i] for i in todo],
                                [boxes[i].to(images[i].device) for i in todo]))
    else:
        results = [teacher.encode_regions(images[i], boxes[i].to(images[i].device)) for i in todo]
    if len(results) != len(todo):
        raise VildError(f"teacher returned {len(results)} results for {len(todo)} images")
    for i, emb in zip(todo, results):
        emb = emb.detach().to("cpu", torch.float32)
        if tuple(emb.shape) != (boxes[i].shape[0], embed_dim):
            raise VildError(f"teacher returned embeddings {tuple(emb.shape)} for "
                            f"{boxes[i].shape[0]} boxes (embed_dim {embed_dim})")
        if not bool(torch.isfinite(emb).all()):
            raise VildError("teacher returned non-finite region embeddings")
        out[i] = F.normalize(emb, dim=-1)
    return out


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
