"""The training loop: deterministic by (seed, step), resumable from its last checkpoint, data
parallel under torchrun (DistributedDataParallel; NCCL on GPUs, gloo on CPU).

One optimiser step takes the global batch of `batches.indices(step)` (batch_size images, from
the seed alone), cut into micro-batches of micro_batch_size images. Micro-batch j of step s
is augmented and RoI-sampled under the seed (seed, s, j) wherever it runs; rank r runs
micro-batches r * A .. r * A + A - 1 (A = accumulation steps per rank), each loss divided by
A, and DDP averages the gradients over ranks: the step's gradient is the mean of the
micro-batches' gradients, whatever the number of processes. BatchNorm running statistics
move, once per step, by the mean of what each micro-batch would have moved them. Micro-batches
are built ahead of the model by `--workers` loader processes (`vild.training.batches`); losses
are read back, and checked for non-finite values, only at log intervals and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vild.data.detection import DetectionDataset
from vild.data.loading import resolve_workers
from vild.data.transforms import TrainTransform
from vild.errors import VildError
from vild.io import save_config
from vild.model import ViLDConfig, build_detector
from vild.training import distributed as D
from vild.training.batches import MicroPlan, StepBatches, micro_batch_loader, micro_seed
from vild.training.checkpoint import (
    MODEL_WEIGHTS,
    load_resume_state,
    read_resume_meta,
    save_model,
    save_resume_state,
    save_vocabulary,
)
from vild.training.config import TrainConfig, learning_rate
from vild.training.distill_selection import distill_weights, skipped_parts
from vild.training.finetune import initialise_from


@dataclass(frozen=True)
class TrainData:
    """Where the training data lives and which categories are trained (label order)."""

    images_dir: str
    annotations: str
    category_ids: tuple[int, ...]
    region_store: str | None = None


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


class _NonFiniteWatch:
    """The first step whose loss was not finite, kept on the device: adding a step's loss costs
    no host sync; `check` reads it back (once, all ranks together) at log intervals,
    checkpoints and the end, and stops the run with a clear error."""

    _NONE = 2**62

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), self._NONE, dtype=torch.int64, device=device)

    def add(self, step: int, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first = torch.where(bad, torch.clamp(self.first, max=step), self.first)

    def check(self, totals: dict[str, torch.Tensor]) -> None:
        first = -D.all_reduce_max_(-self.first.clone())  # the earliest over ranks
        first = int(first.item())
        if first != self._NONE:
            now = {k: round(float(v), 5) for k, v in totals.items()}
            raise VildError(
                f"loss became non-finite at step {first} (losses of the last step: {now}); "
                "lower the learning rate or enable clip_grad_norm"
            )


def _autocast(precision: str, device: torch.device):
    """bf16: autocast (matmuls and convolutions in bfloat16, weights and sums in float32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    workers: int | None = None,
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
    if model_config.image_head_input == "tower" and not train_config.init_from:
        raise VildError("a tower-fed distillation head starts from a trained detector and the teacher's tower: "
                        "run vild distill-tower on the trained model (or --init from a tower model)")
    if model_config.tower_scores_text:
        raise VildError("ViLD's one head on the teacher's tower trains on a region store: run "
                        "vild distill-tower --mode vild on a trained detector")
    if model_config.uses_distillation and not data.region_store:
        raise VildError(f"mode {model_config.mode!r} distils: give a region store (vild embed-regions)")
    device = D.resolve_device(device)
    with D.distributed_session(device) as info:
        return _train(model_config, train_config, data, text_embeddings, out_dir, info=info,
                      device=device, vocabulary=vocabulary, all_text_embeddings=all_text_embeddings,
                      resume=resume, progress=progress, stop_after=stop_after,
                      workers=resolve_workers(workers, device))


def _train(model_config, train_config, data, text_embeddings, out_dir: Path, *, info, device,
           vocabulary, all_text_embeddings, resume, progress, stop_after, workers) -> Path:
    plan = MicroPlan.of(train_config, info.world_size)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(out_dir / "train_config.json", train_config)
    D.barrier()

    torch.manual_seed(train_config.seed)
    model = build_detector(model_config).train()
    store = data.region_store if model_config.uses_distillation else None
    dataset = DetectionDataset(
        data.images_dir,
        data.annotations,
        category_ids=list(data.category_ids),
        region_store=store,
        region_weights=distill_weights(store, train_config),
        transform=TrainTransform(
            train_config.output_size, tuple(train_config.scale_range), train_config.hflip_prob
        ),
        with_masks=model_config.with_masks,
        skip_labelled_parts=skipped_parts(train_config, model_config),
    )
    batches = StepBatches(dataset, train_config)
    if train_config.init_from:
        report = initialise_from(model, train_config.init_from, tuple(train_config.init_modules))
        if info.is_main:
            print(report.summary(), flush=True)
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
    micro_batches = iter(micro_batch_loader(
        dataset, batches, plan, seed=train_config.seed, rank=info.rank, start=start, end=end,
        workers=workers, device=device,
    ))
    watch = _NonFiniteWatch(device)
    totals: dict[str, torch.Tensor] = {}

    def checkpoint(done: int) -> None:
        watch.check(totals)  # never save weights a non-finite step has touched
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
            optimizer.zero_grad(set_to_none=True)
            for module in frozen_bn:  # frozen parts keep their running statistics
                module.eval()
            if running is not None:
                running.begin()
            totals = {}
            for a, j in enumerate(micro_ids):
                batch = next(micro_batches)
                if (batch.step, batch.micro) != (step, j):
                    raise RuntimeError(f"loader out of order: got {(batch.step, batch.micro)}, want {(step, j)}")
                # RoI sampling continues the RNG stream the batch's augmentation left behind
                torch.set_rng_state(batch.rng_state)
                if device.type == "cuda":
                    torch.cuda.manual_seed_all(micro_seed(train_config.seed, step, j))
                images, targets = _to_device(batch.images, batch.targets, device)
                last = a == plan.per_rank - 1
                sync = contextlib.nullcontext() if (net is model or last) else net.no_sync()
                with sync:
                    with _autocast(train_config.precision, device):
                        losses = net(images, text_embeddings, targets).losses
                    losses = {k: v.float() for k, v in losses.items()}
                    loss = sum(losses.values())
                    watch.add(step, loss)
                    (loss / plan.per_rank if plan.per_rank > 1 else loss).backward()
                for k, v in [*losses.items(), ("loss", loss)]:
                    totals[k] = totals.get(k, 0.0) + v.detach() / plan.per_rank
                if running is not None:
                    running.collect()
            if running is not None:
                running.finish()
            if train_config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, train_config.clip_grad_norm)
            optimizer.step()
            images_seen += train_config.batch_size
            bar.update(1)
            if step % train_config.log_every == 0 or step == train_config.steps - 1:
                watch.check(totals)
                names = sorted(totals)
                values = torch.stack([totals[k] for k in names]).double()
                if info.enabled:
                    values = D.all_reduce_mean_(values)
                mean = dict(zip(names, values.cpu().tolist()))  # the only read-back of losses
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
        watch.check(totals)
    finally:
        micro_batches = None  # ends the loader's workers now, not when a traceback is freed
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
