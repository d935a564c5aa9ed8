"""The training loop: deterministic by (seed, step), resumable from its last checkpoint."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vild.data.detection import DetectionDataset, collate
from vild.data.sampling import RepeatFactorSampler, ShuffleSampler, repeat_factors
from vild.data.transforms import TrainTransform
from vild.errors import VildError
from vild.io import save_config
from vild.model import ViLDConfig, build_detector
from vild.training.checkpoint import (
    MODEL_WEIGHTS,
    load_resume_state,
    save_model,
    save_resume_state,
    save_vocabulary,
)
from vild.training.config import TrainConfig, learning_rate


@dataclass(frozen=True)
class TrainData:
    """Where the training data lives and which categories are trained (label order)."""

    images_dir: str
    annotations: str
    category_ids: tuple[int, ...]
    region_store: str | None = None


class StepBatches:
    """Dataset indices of the batch at any step, from the seed alone (so a resume is exact)."""

    def __init__(self, dataset: DetectionDataset, config: TrainConfig) -> None:
        if config.repeat_factor_threshold is not None:
            factors = repeat_factors(dataset, config.repeat_factor_threshold)
            self.sampler = RepeatFactorSampler(factors, seed=config.seed)
        else:
            self.sampler = ShuffleSampler(len(dataset), seed=config.seed)
        self.batch_size = config.batch_size
        self._epochs: list[list[int]] = []

    def _epoch(self, epoch: int) -> list[int]:
        while len(self._epochs) <= epoch:
            self._epochs.append(self.sampler.epoch_indices(len(self._epochs)).tolist())
        return self._epochs[epoch]

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


def initialise_from(model: torch.nn.Module, folder: str | Path, modules: tuple[str, ...] = ()) -> list[str]:
    """Copy every weight of a saved model whose name and shape match (under `modules`, if
    given); returns the names copied."""
    from safetensors.torch import load_file

    path = Path(folder) / MODEL_WEIGHTS
    if not path.is_file():
        raise VildError(f"init_from: {path} not found")
    source = load_file(str(path))
    own = model.state_dict()
    copied = {
        k: v for k, v in source.items()
        if k in own and own[k].shape == v.shape
        and (not modules or any(k.startswith(m) for m in modules))
    }
    if not copied:
        raise VildError(f"init_from: no weight of {path} fits this model")
    model.load_state_dict(copied, strict=False)
    return sorted(copied)


def train_detector(
    model_config: ViLDConfig,
    train_config: TrainConfig,
    data: TrainData,
    text_embeddings: torch.Tensor,
    out_dir: str | Path,
    *,
    vocabulary: dict | None = None,
    all_text_embeddings: torch.Tensor | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train a detector; returns the model folder.

    text_embeddings [C, D]: the frozen classifier of `data.category_ids`, in that order.
    vocabulary / all_text_embeddings: saved with the model as its default vocabulary.
    stop_after: end after this many steps of this call (tests use it to simulate a kill).
    """
    out_dir = Path(out_dir)
    if (out_dir / MODEL_WEIGHTS).exists() and not resume:
        raise VildError(f"{out_dir} already holds a trained model; use --resume or another --out")
    if text_embeddings.shape != (len(data.category_ids), model_config.embed_dim):
        raise VildError(
            f"text embeddings {tuple(text_embeddings.shape)} do not fit "
            f"{len(data.category_ids)} categories x embed_dim {model_config.embed_dim}"
        )
    if model_config.uses_distillation and not data.region_store:
        raise VildError(f"mode {model_config.mode!r} distils: give a region store (vild embed-regions)")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(out_dir / "train_config.json", train_config)

    torch.manual_seed(train_config.seed)
    model = build_detector(model_config).train()
    dataset = DetectionDataset(
        data.images_dir,
        data.annotations,
        category_ids=list(data.category_ids),
        region_store=data.region_store if model_config.uses_distillation else None,
        transform=TrainTransform(
            train_config.output_size, tuple(train_config.scale_range), train_config.hflip_prob
        ),
        with_masks=model_config.with_masks,
    )
    batches = StepBatches(dataset, train_config)
    if train_config.init_from:
        initialise_from(model, train_config.init_from, tuple(train_config.init_modules))
    for name, param in model.named_parameters():
        if any(name.startswith(prefix) for prefix in train_config.freeze):
            param.requires_grad_(False)
    frozen_bn = [m for name, m in model.named_modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 and any(name.startswith(prefix) for prefix in train_config.freeze)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=train_config.lr, momentum=train_config.momentum,
        weight_decay=train_config.weight_decay,
    )
    start = 0
    if resume:
        start = load_resume_state(out_dir, model, optimizer) or 0
    text_embeddings = text_embeddings.float()
    log = (out_dir / "metrics.jsonl").open("a")
    bar = tqdm(
        total=train_config.steps, initial=start, disable=not progress, desc="train", unit="step",
        dynamic_ncols=True,
    )
    started, images_seen = time.perf_counter(), 0
    end = train_config.steps if stop_after is None else min(train_config.steps, start + stop_after)
    for step in range(start, end):
        lr = learning_rate(train_config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(train_config.seed * 1_000_003 + step)  # augmentation + RoI sampling
        for module in frozen_bn:  # frozen parts keep their running statistics
            module.eval()
        images, targets = collate([dataset[i] for i in batches.indices(step)])
        losses = model(images, text_embeddings, targets).losses
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise VildError(
                f"loss became {loss.item()} at step {step} ({ {k: v.item() for k, v in losses.items()} }); "
                "lower the learning rate or enable clip_grad_norm"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_config.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, train_config.clip_grad_norm)
        optimizer.step()
        images_seen += len(images)
        bar.update(1)
        if step % train_config.log_every == 0 or step == train_config.steps - 1:
            record = {"step": step, "lr": lr, "loss": loss.item()}
            record.update({k: round(v.item(), 5) for k, v in losses.items()})
            record["images_per_s"] = images_seen / max(time.perf_counter() - started, 1e-9)
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}")
        done = step + 1
        if done % train_config.checkpoint_every == 0 and done < train_config.steps:
            save_resume_state(out_dir, model, optimizer, done, train_config)
    bar.close()
    log.close()
    if end < train_config.steps:  # stopped early on request: leave a resumable state
        save_resume_state(out_dir, model, optimizer, end, train_config)
        return out_dir
    model.eval()
    if vocabulary is not None and all_text_embeddings is not None:
        save_vocabulary(out_dir, vocabulary, all_text_embeddings)
    save_model(out_dir, model)  # weights last: their presence marks a finished run
    return out_dir
