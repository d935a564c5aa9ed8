"""Samplers for detection training: Repeat Factor Sampling (LVIS), plain shuffling, infinite.

All samplers are deterministic given their seed and epoch and yield dataset indices (ints).
Epoch samplers (`RepeatFactorSampler`, `ShuffleSampler`) are finite and change with
`set_epoch(e)`; `InfiniteSampler` chains their epochs for training by steps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from vild.errors import VildError

__all__ = [
    "repeat_factors",
    "RepeatFactorSampler",
    "ShuffleSampler",
    "InfiniteSampler",
]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63))
    return g


def _category_sets(source: Any) -> list[set[int]]:
    """Per-image category sets from a dataset, an annotation dict/path, or the sets themselves."""
    if hasattr(source, "image_category_ids"):
        return [set(s) for s in source.image_category_ids()]
    if isinstance(source, (str, os.PathLike, dict)):
        from vild.data.detection import load_annotation_file

        data = load_annotation_file(source)
        index = {int(im["id"]): i for i, im in enumerate(data["images"])}
        sets: list[set[int]] = [set() for _ in data["images"]]
        for ann in data["annotations"]:
            i = index.get(int(ann["image_id"]))
            if i is not None and not int(ann.get("iscrowd", 0)):
                sets[i].add(int(ann["category_id"]))
        return sets
    if isinstance(source, Iterable):
        return [set(int(c) for c in s) for s in source]
    raise TypeError(f"cannot get per-image categories from {type(source).__name__}")


def repeat_factors(dataset_or_annotations: Any, threshold: float = 0.001) -> torch.Tensor:
    """LVIS repeat factors, one per image -> FloatTensor [num_images].

    `dataset_or_annotations`: a `DetectionDataset` (its kept annotations, dataset order), an
    LVIS/COCO json path or dict (all non-crowd annotations, json image order), or a sequence of
    per-image category-id collections. With f(c) the fraction of images containing category c,
    r(c) = max(1, sqrt(threshold / f(c))); an image's factor is the max over its categories
    (1 for images without annotations).
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    sets = _category_sets(dataset_or_annotations)
    n = len(sets)
    if n == 0:
        return torch.zeros(0, dtype=torch.float32)
    counts: dict[int, int] = {}
    for s in sets:
        for c in s:
            counts[c] = counts.get(c, 0) + 1
    cat_factor = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    factors = [max((cat_factor[c] for c in s), default=1.0) for s in sets]
    return torch.tensor(factors, dtype=torch.float32)


class RepeatFactorSampler(torch.utils.data.Sampler[int]):
    """One epoch of Repeat Factor Sampling: image i appears floor(r_i) times plus once more with
    probability frac(r_i) (stochastic rounding drawn anew each epoch), shuffled when `shuffle`.
    Deterministic given `seed` and the epoch (`set_epoch`). With `world_size > 1`, each rank
    takes every world_size-th index of the same epoch order (a shard of equal length, padded by
    wrapping around)."""

    def __init__(self, repeat_factors: torch.Tensor | Sequence[float], *, seed: int,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        factors = torch.as_tensor(repeat_factors, dtype=torch.float64).flatten()
        if factors.numel() and bool((factors < 0).any()):
            raise VildError("repeat factors must be non-negative")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.repeat_factors = factors
        self._int = factors.floor()
        self._frac = factors - self._int
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._cache: tuple[int, torch.Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """The full (all ranks) index order of an epoch: LongTensor."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        g = _epoch_generator(self.seed, epoch)
        rand = torch.rand(self.repeat_factors.shape, generator=g, dtype=torch.float64)
        reps = (self._int + (rand < self._frac).double()).long()
        indices = torch.repeat_interleave(torch.arange(len(reps)), reps)
        if self.shuffle:
            indices = indices[torch.randperm(len(indices), generator=g)]
        self._cache = (epoch, indices)
        return indices

    def _rank_indices(self) -> torch.Tensor:
        indices = self.epoch_indices()
        if self.world_size == 1 or len(indices) == 0:
            return indices
        per_rank = math.ceil(len(indices) / self.world_size)
        total = per_rank * self.world_size
        if total > len(indices):
            indices = torch.cat([indices, indices[: total - len(indices)]])
        return indices[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_indices().tolist())

    def __len__(self) -> int:
        return len(self._rank_indices())


class ShuffleSampler(torch.utils.data.Sampler[int]):
    """Every index once per epoch, shuffled (when `shuffle`) deterministically by seed and epoch."""

    def __init__(self, num_items: int, *, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        self._inner = RepeatFactorSampler(torch.ones(int(num_items)), seed=seed, shuffle=shuffle,
                                          rank=rank, world_size=world_size)

    @property
    def epoch(self) -> int:
        return self._inner.epoch

    def set_epoch(self, epoch: int) -> None:
        self._inner.set_epoch(epoch)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        return self._inner.epoch_indices(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)


class InfiniteSampler(torch.utils.data.Sampler[int]):
    """Endless stream of indices for training by steps: epochs `start_epoch`, +1, ... of an
    epoch sampler (anything with `set_epoch`, e.g. `RepeatFactorSampler`), or of a
    `ShuffleSampler(source, seed=seed)` when `source` is a number of items.

    `start` skips that many indices of the stream (resume after `start` samples were consumed)
    without materialising them one by one.
    """

    def __init__(self, source: int | torch.utils.data.Sampler, *, seed: int = 0,
                 shuffle: bool = True, start: int = 0, start_epoch: int = 0) -> None:
        if isinstance(source, int):
            source = ShuffleSampler(source, seed=seed, shuffle=shuffle)
        if not hasattr(source, "set_epoch"):
            raise TypeError("InfiniteSampler needs an int or a sampler with set_epoch()")
        self.sampler = source
        self.start = int(start)
        self.start_epoch = int(start_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Restart the stream at `epoch` (does not reset `start`)."""
        self.start_epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.start_epoch, self.start
        empty_epochs = 0
        while True:
            self.sampler.set_epoch(epoch)
            n = len(self.sampler)
            if n == 0:
                empty_epochs += 1
                if empty_epochs > 1000:
                    raise VildError("InfiniteSampler: the sampler yields no indices")
                epoch += 1
                continue
            empty_epochs = 0
            if skip >= n:
                skip -= n
                epoch += 1
                continue
            it = iter(self.sampler)
            for i, index in enumerate(it):
                if i >= skip:
                    yield index
            skip = 0
            epoch += 1
