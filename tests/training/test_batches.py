"""Micro-batches are a pure function of (seed, step, micro-batch): the same from the main
process and from loader workers, so weights do not depend on --workers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vild.data.detection import DetectionDataset
from vild.data.transforms import TrainTransform
from vild.training.batches import MicroPlan, StepBatches, micro_batch_loader
from vild.training.loop import TrainData, train_detector
from vild.training.presets import preset
from vild.training.vocabulary import dataset_vocabulary, world_paths


def _config(**train):
    return preset("shapeworld-quick", model=dict(mode="text", embed_dim=16),
                  train=dict(dict(steps=4, batch_size=2, checkpoint_every=2, warmup_steps=1), **train))


def _batches(world, workers: int, micro_batch_size: int | None = None) -> list:
    _, cfg = _config(micro_batch_size=micro_batch_size)
    paths = world_paths(world)
    dataset = DetectionDataset(paths["train_images"], paths["train_base"],
                               transform=TrainTransform(cfg.output_size, tuple(cfg.scale_range), cfg.hflip_prob))
    plan = MicroPlan.of(cfg, 1)
    loader = micro_batch_loader(dataset, StepBatches(dataset, cfg), plan, seed=cfg.seed, rank=0,
                                start=1, end=4, workers=workers, device=torch.device("cpu"))
    return list(loader)


@pytest.mark.parametrize("micro_batch_size", [None, 1])
def test_workers_build_the_same_micro_batches_in_order(tiny_world, micro_batch_size):
    """Run with the suite's 2 threads: batches are built with one in every process."""
    here, there = _batches(tiny_world, 0, micro_batch_size), _batches(tiny_world, 2, micro_batch_size)
    per_step = 1 if micro_batch_size is None else 2
    assert [(b.step, b.micro) for b in here] == [(s, j) for s in range(1, 4) for j in range(per_step)]
    assert [(b.step, b.micro) for b in there] == [(b.step, b.micro) for b in here]
    for a, b in zip(here, there):
        assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a.targets, b.targets))
        assert torch.equal(a.rng_state, b.rng_state)
    # the RNG state after augmentation differs between micro-batches (each has its own seed)
    assert not torch.equal(here[0].rng_state, here[1].rng_state)


def test_weights_do_not_depend_on_the_number_of_workers(tiny_world, tmp_path):
    torch.set_num_threads(1)  # 2 threads crawl on shared cores (README: CPU threads)
    model_cfg, train_cfg = _config(micro_batch_size=1, steps=3)
    paths = world_paths(tiny_world)
    vocab = dataset_vocabulary(paths["train_base"])
    ids = tuple(c for c, b in zip(vocab["category_ids"], vocab["base"]) if b)
    text = F.normalize(torch.randn(len(ids), 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    data = TrainData(str(paths["train_images"]), str(paths["train_base"]), ids)
    a = train_detector(model_cfg, train_cfg, data, text, tmp_path / "a", progress=False, workers=0)
    b = train_detector(model_cfg, train_cfg, data, text, tmp_path / "b", progress=False, workers=2)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
