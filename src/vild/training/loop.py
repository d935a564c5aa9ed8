"""The training loop: deterministic by (seed, step), resumable from its last checkpoint, data
parallel under torchrun (DistributedDataParallel; NCCL on GPUs, gloo on CPU).

One optimiser step takes the global batch of `batches.indices(step)` (batch_size images, from
the seed alone), cut into micro-batches of micro_batch_size images. Micro-batch j of step s
is augmented and RoI-sampled under the seed (seed, s, j) wherever it runs; rank r runs
micro-batches r * A .. r * A + A - 1 (A = accumulation steps per rank), each loss divided by
A, and DDP averages the gradients over ranks: the step's gradient is the mean of the
micro-batches' gradients, whatever the number of processes. BatchNorm running statistics
move, once per step, by the mean of what each micro-batch would have moved them.
"""

from __future__ import annotations

import contextlib
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
from vild.training import distributed as D
from vild.training.checkpoint import (
    MODEL_WEIGHTS,
    load_resume_state,
    read_resume_meta,
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


def _to_device(images, targets, device: torch.device):
    if device.type == "cpu":
        return images, targets
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


class _RunningStats:
    """Mean over micro-batches (and ranks) of the BatchNorm running-statistics updates."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules = [
            m for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]

    def begin(self) -> None:
        self.active = [m for m in self.modules if m.training]
        self.start = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                      for m in self.active]
        self.total = [(torch.zeros_like(a), torch.zeros_like(b)) for a, b, _ in self.start]
        self.count = 0

    def collect(self) -> None:
        """After one micro-batch's forward: add its statistics, restore the step's start."""
        for m, (a, b, n), (ta, tb) in zip(self.active, self.start, self.total):
            ta += m.running_mean
            tb += m.running_var
            m.running_mean.copy_(a)
            m.running_var.copy_(b)
            m.num_batches_tracked.copy_(n)
        self.count += 1

    def finish(self) -> None:
        if not self.active:
            return
        flat = torch.cat([t.reshape(-1) for pair in self.total for t in pair]) / self.count
        D.all_reduce_mean_(flat)
        offset = 0
        for m, (_, _, n), pair in zip(self.active, self.start, self.total):
            for buf in (m.running_mean, m.running_var):
                buf.copy_(flat[offset: offset + buf.numel()].view_as(buf))
                offset += buf.numel()
            m.num_batches_tracked.copy_(n + 1)


def _check_resume_compatible(meta: dict | None, sampler_state: dict, config: TrainConfig, plan: MicroPlan) -> None:
    if not meta:
        return
    saved = meta.get("sampler")
    if saved:
        for key in ("kind", "seed", "num_items", "batch_size"):
            if saved.get(key) != sampler_state.get(key):
                raise VildError(
                    f"cannot resume: the data sampler's {key} was {saved.get(key)!r} and is now "
                    f"{sampler_state.get(key)!r} (training set or batch settings changed); "
                    "use another --out"
                )
    saved_micro = (meta.get("micro_batches") or {}).get("size")
    if saved_micro is not None and saved_micro != plan.size:
        raise VildError(
            f"cannot resume: micro-batches of {saved_micro} images before, {plan.size} now "
            "(set micro_batch_size to keep the run identical across process counts)"
        )


def _truncate_metrics(path: Path, start: int) -> None:
    """Drop log lines of steps >= start (written after the checkpoint a resume starts from)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) < start:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    from vild.io import atomic_write_text

    atomic_write_text(path, "".join(x + "\n" for x in kept))


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
    device: str | torch.device | None = "cpu",
) -> Path:
    """Train a detector; returns the model folder.

    text_embeddings [C, D]: the frozen classifier of `data.category_ids`, in that order.
    vocabulary / all_text_embeddings: saved with the model as its default vocabulary.
    stop_after: end after this many steps of this call (tests use it to simulate a kill).
    device: "cpu", "cuda", "cuda:N" or None / "auto" (this rank's GPU if there is one).
    Under torchrun (WORLD_SIZE > 1) the process group is started here if nobody did, and the
    run is data parallel (see the module docstring); rank 0 alone writes files and logs.
    `resume=True` on a finished folder returns it untouched.
    """
    out_dir = Path(out_dir)
    if (out_dir / MODEL_WEIGHTS).exists():
        if not resume:
            raise VildError(f"{out_dir} already holds a trained model; use --resume or another --out")
        return out_dir
    if text_embeddings.shape != (len(data.category_ids), model_config.embed_dim):
        raise VildError(
            f"text embeddings {tuple(text_embeddings.shape)} do not fit "
            f"{len(data.category_ids)} categories x embed_dim {model_config.embed_dim}"
        )
    if model_config.uses_distillation and not data.region_store:
        raise VildError(f"mode {model_config.mode!r} distils: give a region store (vild embed-regions)")
    device = D.resolve_device(device)
    with D.distributed_session(device) as info:
        return _train(model_config, train_config, data, text_embeddings, out_dir, info=info,
                      device=device, vocabulary=vocabulary, all_text_embeddings=all_text_embeddings,
                      resume=resume, progress=progress, stop_after=stop_after)


def _train(model_config, train_config, data, text_embeddings, out_dir: Path, *, info, device,
           vocabulary, all_text_embeddings, resume, progress, stop_after) -> Path:
    plan = MicroPlan.of(train_config, info.world_size)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(out_dir / "train_config.json", train_config)
    D.barrier()

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
    if train_config.sync_bn:
        model = D.convert_sync_batchnorm(model, device)
    model.to(device)
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
        meta = read_resume_meta(out_dir)
        if meta is not None:
            _check_resume_compatible(meta, batches.state(int(meta["step"])), train_config, plan)
        start = load_resume_state(out_dir, model, optimizer) or 0
    net = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,  # running statistics: averaged by _RunningStats
            find_unused_parameters=True,  # e.g. the ensemble's image head without distill boxes
        )
    running = _RunningStats(model) if plan.count > 1 else None
    text_embeddings = text_embeddings.float().to(device)
    log = None
    if info.is_main:
        if resume:
            _truncate_metrics(out_dir / "metrics.jsonl", start)
        log = (out_dir / "metrics.jsonl").open("a")
    bar = tqdm(
        total=train_config.steps, initial=start, disable=not (progress and info.is_main), desc="train",
        unit="step", dynamic_ncols=True,
    )
    started, images_seen = time.perf_counter(), 0
    end = train_config.steps if stop_after is None else min(train_config.steps, start + stop_after)
    micro_ids = plan.micro_batches(info.rank)

    def checkpoint(done: int) -> None:
        if info.is_main:
            save_resume_state(out_dir, model, optimizer, done, train_config, extra={
                "sampler": batches.state(done),
                "scheduler": {"kind": "warmup_step_decay", "next_lr": learning_rate(train_config, done)},
                "micro_batches": {"size": plan.size, "count": plan.count, "world_size": plan.world_size},
            })
        D.barrier()

    try:
        for step in range(start, end):
            lr = learning_rate(train_config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices = batches.indices(step)
            optimizer.zero_grad(set_to_none=True)
            for module in frozen_bn:  # frozen parts keep their running statistics
                module.eval()
            if running is not None:
                running.begin()
            totals: dict[str, float] = {}
            finite = True
            for a, j in enumerate(micro_ids):
                torch.manual_seed(micro_seed(train_config.seed, step, j))
                images, targets = collate([dataset[i] for i in indices[j * plan.size:(j + 1) * plan.size]])
                images, targets = _to_device(images, targets, device)
                last = a == plan.per_rank - 1
                sync = contextlib.nullcontext() if (net is model or last) else net.no_sync()
                with sync:
                    losses = net(images, text_embeddings, targets).losses
                    loss = sum(losses.values())
                    finite = finite and math.isfinite(loss.item())
                    (loss / plan.per_rank if plan.per_rank > 1 else loss).backward()
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach()) / plan.per_rank
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / plan.per_rank
                if running is not None:
                    running.collect()
            if info.enabled:
                flag = torch.tensor([0.0 if finite else 1.0], device=device)
                finite = D.all_reduce_max_(flag).item() == 0.0
            if not finite:
                raise VildError(
                    f"loss became non-finite at step {step} ({ {k: round(v, 5) for k, v in totals.items()} }); "
                    "lower the learning rate or enable clip_grad_norm"
                )
            if running is not None:
                running.finish()
            if train_config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, train_config.clip_grad_norm)
            optimizer.step()
            images_seen += train_config.batch_size
            bar.update(1)
            if step % train_config.log_every == 0 or step == train_config.steps - 1:
                names = sorted(totals)
                values = torch.tensor([totals[k] for k in names], dtype=torch.float64)
                if info.enabled:
                    values = D.all_reduce_mean_(values.to(device)).cpu()
                mean = dict(zip(names, values.tolist()))
                if log is not None:
                    record = {"step": step, "lr": lr, "loss": mean.pop("loss")}
                    record.update({k: round(v, 5) for k, v in mean.items()})
                    record["images_per_s"] = images_seen / max(time.perf_counter() - started, 1e-9)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.4f}")
            done = step + 1
            if done % train_config.checkpoint_every == 0 and done < train_config.steps:
                checkpoint(done)
    finally:
        bar.close()
        if log is not None:
            log.close()
    if end < train_config.steps:  # stopped early on request: leave a resumable state
        checkpoint(end)
        return out_dir
    model.eval()
    if info.is_main:
        if vocabulary is not None and all_text_embeddings is not None:
            save_vocabulary(out_dir, vocabulary, all_text_embeddings)
        save_model(out_dir, model)  # weights last: their presence marks a finished run
    D.barrier()
    return out_dir
