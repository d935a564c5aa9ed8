"""What each training step sees: the dataset indices of its global batch (`StepBatches`), how
that batch is cut into micro-batches (`MicroPlan`), and the loader that builds those
micro-batches ahead of the model in worker processes (`micro_batch_loader`).

A micro-batch is a pure function of (seed, step, micro-batch index): its images are chosen by
`StepBatches` from the seed alone, augmented under the RNG seed `micro_seed(seed, step, j)`,
and the RNG state the augmentation leaves behind travels with the batch, so the model's RoI
sampling continues from exactly where it would have in a single process. Hence any number of
loader workers, and a resume from any checkpoint, give the same weights bit for bit. Batches
are built with one CPU thread in every process (resampling rounds differently with more).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from vild.data.detection import DetectionDataset, collate
from vild.data.loading import loader_options
from vild.data.sampling import RepeatFactorSampler, ShuffleSampler, repeat_factors
from vild.errors import VildError
from vild.training.config import TrainConfig

__all__ = ["MicroBatch", "MicroPlan", "StepBatches", "micro_batch_loader", "micro_seed"]


class StepBatches:
    """Dataset indices of the batch at any step, from the seed alone (so a resume is exact)."""

    def __init__(self, dataset: DetectionDataset, config: TrainConfig) -> None:
        if config.repeat_factor_threshold is not None:
            factors = repeat_factors(dataset, config.repeat_factor_threshold)
            self.sampler = RepeatFactorSampler(factors, seed=config.seed)
        else:
            self.sampler = ShuffleSampler(len(dataset), seed=config.seed)
        self._num_items = len(dataset)
        self._seed = int(config.seed)
        self.batch_size = config.batch_size
        self._epochs: list[list[int]] = []

    def _epoch(self, epoch: int) -> list[int]:
        while len(self._epochs) <= epoch:
            self._epochs.append(self.sampler.epoch_indices(len(self._epochs)).tolist())
        return self._epochs[epoch]

    @property
    def kind(self) -> str:
        return "repeat_factor" if isinstance(self.sampler, RepeatFactorSampler) else "shuffle"

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, offset in that epoch) of the first image of `step`'s batch."""
        start, epoch = step * self.batch_size, 0
        while True:
            n = len(self._epoch(epoch))
            if n == 0:
                raise VildError("the training set is empty")
            if start < n:
                return epoch, start
            start, epoch = start - n, epoch + 1

    def state(self, step: int) -> dict:
        """The data sampler's state before `step` (JSON): enough to check a resume."""
        epoch, offset = self.position(step)
        return {
            "kind": self.kind, "seed": self._seed, "num_items": int(self._num_items),
            "batch_size": self.batch_size, "next_step": int(step), "epoch": epoch, "offset": offset,
            "epoch_length": len(self._epoch(epoch)),
        }

    def indices(self, step: int) -> list[int]:
        start, out, epoch, offset = step * self.batch_size, [], 0, 0
        while len(out) < self.batch_size:
            items = self._epoch(epoch)
            if not items:
                raise VildError("the training set is empty")
            end = offset + len(items)
            if start < end:
                lo = max(start - offset, 0)
                out.extend(items[lo: lo + self.batch_size - len(out)])
                start = end  # continue at the next epoch's first item if the batch spans two
            offset, epoch = end, epoch + 1
        return out


MICRO_SEED_STRIDE = 1_000_000_007


def micro_seed(seed: int, step: int, micro: int) -> int:
    """The RNG seed of micro-batch `micro` of `step` (augmentation + RoI sampling). Micro-batch
    0 keeps the single-batch seed of earlier versions, so their runs are unchanged."""
    return seed * 1_000_003 + step + micro * MICRO_SEED_STRIDE


@dataclass(frozen=True)
class MicroPlan:
    """How a step's global batch is cut: `count` micro-batches of `size` images, `per_rank` of
    them (consecutive) on each of `world_size` processes."""

    size: int
    count: int
    per_rank: int
    world_size: int

    @classmethod
    def of(cls, config: TrainConfig, world_size: int) -> "MicroPlan":
        size = config.micro_batch_size
        if size is None:
            if config.batch_size % world_size:
                raise VildError(
                    f"batch_size {config.batch_size} does not split over {world_size} processes; "
                    "set micro_batch_size or change batch_size"
                )
            size = config.batch_size // world_size
        count = config.batch_size // size
        if config.batch_size % size or count % world_size:
            raise VildError(
                f"batch_size {config.batch_size} must be a multiple of micro_batch_size {size} x "
                f"{world_size} processes"
            )
        return cls(size, count, count // world_size, world_size)

    def micro_batches(self, rank: int) -> range:
        return range(rank * self.per_rank, (rank + 1) * self.per_rank)


class MicroBatch(NamedTuple):
    """One collated micro-batch of `step`, as the loader hands it to the training loop (a named
    tuple, so that the loader's pin-memory thread reaches its tensors).
    rng_state: the CPU RNG state after its augmentation (restored before the forward pass)."""

    step: int
    micro: int
    images: list
    targets: list
    rng_state: torch.Tensor


class _MicroBatchSource(torch.utils.data.Dataset):
    """(step, micro-batch index) -> `MicroBatch`; the same in any process."""

    def __init__(self, dataset: DetectionDataset, batches: StepBatches, plan: MicroPlan, seed: int) -> None:
        self.dataset, self.batches, self.plan, self.seed = dataset, batches, plan, int(seed)

    def __getitem__(self, key: tuple[int, int]) -> MicroBatch:
        step, micro = key
        size = self.plan.size
        indices = self.batches.indices(step)[micro * size:(micro + 1) * size]
        # one thread wherever it runs: resampling rounds differently with more threads, and
        # loader workers have one
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # CPU generator only: seeding CUDA here would touch the GPU from a worker process
            torch.default_generator.manual_seed(micro_seed(self.seed, step, micro))
            images, targets = collate([self.dataset[i] for i in indices])
        finally:
            torch.set_num_threads(threads)
        return MicroBatch(step, micro, images, targets, torch.get_rng_state())


def _as_is(item: MicroBatch) -> MicroBatch:
    return item


def micro_batch_loader(dataset: DetectionDataset, batches: StepBatches, plan: MicroPlan, *, seed: int,
                       rank: int, start: int, end: int, workers: int,
                       device: torch.device | None) -> torch.utils.data.DataLoader:
    """The micro-batches this rank runs for steps start .. end - 1, in order, built by
    `workers` processes (0 = in this process). Together the workers keep at least one step's
    micro-batches ready (each at least 2), and no more: big images fill shared memory fast.
    One pass covers the whole run, so the workers live as long as it (what
    persistent_workers gives a multi-epoch loader)."""
    keys = [(step, j) for step in range(start, end) for j in plan.micro_batches(rank)]
    prefetch = max(2, -(-plan.per_rank // max(workers, 1)))
    return torch.utils.data.DataLoader(
        _MicroBatchSource(dataset, batches, plan, seed), sampler=keys, batch_size=None,
        collate_fn=_as_is, **loader_options(workers, device, prefetch=prefetch),
    )
