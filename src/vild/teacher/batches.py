"""The teacher's contrastive batches, drawn step after step from one random stream, and a
loader that draws them ahead of the model in a worker process.

The stream is sequential (each step's draws follow the previous step's), so it has one
producer: `--workers 0` draws in the training process, `--workers 1` in a forked worker that
continues the same generator; both give the same batches, hence the same teacher.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vild.data.loading import loader_options
from vild.errors import VildError
from vild.teacher.config import TeacherTrainConfig

__all__ = ["ContrastiveBatches", "batch_stream"]


@dataclass
class ContrastiveBatches:
    """Yields `(idx [B], images [B, 3, S, S] float, tokens [B, ctx])` for `total` steps: a
    fresh permutation of the corpus per epoch, caption colour-word dropout, word subsampling,
    hue changes, then `augment`. Consumes `generator` (and `subsample`'s stream) in the order
    training always has."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    captions: list[str]
    tokens: torch.Tensor
    tokens_plain: torch.Tensor
    stripped: list[tuple[str, bool]]
    names_colour: torch.Tensor
    tokenizer: Any
    config: TeacherTrainConfig
    generator: torch.Generator
    subsample: Callable[[str], str]  # word subsampling of one caption (its own numpy stream)
    augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (uint8 images, hue mask) -> input
    batch: int
    total: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        config, gen, n = self.config, self.generator, len(self.captions)
        order = torch.randperm(n, generator=gen)
        pos = 0
        for _ in range(self.total):
            if pos + self.batch > n:
                order = torch.randperm(n, generator=gen)
                pos = 0
            idx = order[pos:pos + self.batch]
            pos += self.batch
            drop = (torch.rand(len(idx), generator=gen) < config.colour_dropout) & self.names_colour[idx]
            t = torch.where(drop.view(-1, 1), self.tokens_plain[idx], self.tokens[idx])
            if config.subsample_captions > 0:
                sub = (torch.rand(len(idx), generator=gen) < config.subsample_captions).tolist()
                rows = [j for j, flag in enumerate(sub) if flag]
                if rows:
                    texts = [self.stripped[int(idx[j])][0] if drop[j] else self.captions[int(idx[j])]
                             for j in rows]
                    t = t.clone()
                    t[rows] = self.tokenizer([self.subsample(c) for c in texts])
            hue = (drop | ~self.names_colour[idx]) & (torch.rand(len(idx), generator=gen) < config.hue_augment)
            yield idx, self.augment(self.images[idx], hue), t


class _InWorker(torch.utils.data.IterableDataset):
    def __init__(self, stream: ContrastiveBatches) -> None:
        self.stream = stream

    def __iter__(self):
        return iter(self.stream)


def _one_thread(stream: ContrastiveBatches):
    # a worker has one thread; resampling rounds differently with more, so the main process
    # draws with one too (and gives the model its threads back in between)
    threads = torch.get_num_threads()
    it = iter(stream)
    while True:
        torch.set_num_threads(1)
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(threads)
        yield item


def batch_stream(stream: ContrastiveBatches, *, workers: int, device: str | torch.device) -> Iterator:
    """The stream's batches: drawn here (`workers` 0) or by one forked worker process
    (`workers` 1) a few steps ahead, in pinned memory when `device` is CUDA."""
    if workers == 0:
        return _one_thread(stream)
    if workers != 1:
        raise VildError(f"train-teacher draws its batches from one random stream: --workers is 0 or 1, got {workers}")
    if "fork" not in multiprocessing.get_all_start_methods():
        raise VildError("--workers 1 needs the fork start method (not available here); use --workers 0")
    loader = torch.utils.data.DataLoader(
        _InWorker(stream), batch_size=None, multiprocessing_context="fork",
        **loader_options(1, device, prefetch=4),
    )
    return iter(loader)
