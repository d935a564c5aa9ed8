"""A tiny in-process training setup on the session's tiny world (text mode, 16-d classifier)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vild.training.loop import TrainData
from vild.training.presets import preset
from vild.training.vocabulary import dataset_vocabulary, world_paths


def tiny_training(world, **train):
    """-> (model config, train config, TrainData over the base categories, text embeddings [C, 16])."""
    paths = world_paths(world)
    vocab = dataset_vocabulary(paths["train_base"])
    ids = tuple(c for c, b in zip(vocab["category_ids"], vocab["base"]) if b)
    model_cfg, train_cfg = preset(
        "shapeworld-quick", model=dict(mode="text", embed_dim=16),
        train=dict(dict(steps=4, batch_size=2, checkpoint_every=2, warmup_steps=1), **train),
    )
    text = F.normalize(torch.randn(len(ids), 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    return model_cfg, train_cfg, TrainData(str(paths["train_images"]), str(paths["train_base"]), ids), text
