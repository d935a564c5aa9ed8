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
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vild.data.loading import loader_options
from vild.errors import VildError
from vild.io import atomic_write_bytes, load_json, save_json
from vild.regions.inputs import _collate_list, _ImageSource
from vild.regions.proposals import Proposer, _unpack_proposal, select_proposals
from vild.regions.ranks import _all_gather, _barrier, _broadcast, _ranks
from vild.regions.resume import (
    Entry,
    _checkpoint_batch,
    _json_roundtrip,
    _load_part,
    _part_shard_index,
    _plan_digest,
    _prepare_store,
    _read_record,
    _shard_entry_valid,
    entry_name,
)
from vild.regions.store import (
    FORMAT,
    MANIFEST_NAME,
    VERSION,
    RegionStore,
    encode_shard,
    shard_name,
)

__all__ = ["embed_regions"]


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
