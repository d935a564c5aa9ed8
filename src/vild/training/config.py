"""Training configuration (optimiser, schedule, augmentation), saved as JSON with checkpoints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """SGD with linear warm-up and step decay, as the official ViLD recipe (scaled by `steps`).

    decay_at: fractions of `steps` where the learning rate is multiplied by `gamma`
    (the official 162k and 171k of 180k are 0.9 and 0.95).
    repeat_factor_threshold: Repeat Factor Sampling threshold (LVIS: 0.001); None = plain shuffle.
    init_from: a model folder whose matching weights initialise this model (e.g. a shared
    class-agnostic trunk), restricted to the module prefixes in init_modules (empty = all);
    freeze: module prefixes kept fixed ("backbone", "rpn", ...).
    clip_grad_norm: gradients clipped to this total norm (None = off). The official recipe has
    no clipping; from-scratch CPU runs with temperature 100 diverge without it.
    batch_size is the global batch of one optimiser step. micro_batch_size: images per forward
    pass on one process (None = batch_size / number of processes); the global batch is cut
    into batch_size / micro_batch_size micro-batches, dealt to the processes (data parallel)
    and, within a process, accumulated (gradient accumulation). Each micro-batch's loss is
    normalised on its own and the step's gradient is their mean, so a run is the same for any
    number of processes as long as micro_batch_size is fixed.
    sync_bn: BatchNorm statistics over the micro-batches of every process at once (the
    official recipe's sync BN); without it each micro-batch normalises with its own statistics.
    precision: "fp32", or "bf16" (the forward pass under autocast to bfloat16 on CPU and CUDA;
    weights, gradients and the optimiser stay float32).
    distill_rarity: each distilled proposal's loss is weighted by the rarity of its teacher
    embedding, (1 + neighbours with cosine > distill_rarity_threshold) ** -distill_rarity
    (`vild.regions.rarity`; label-free). 0 = the paper's uniform weights.
    distill_skip_part_iou: distilled proposals whose best IoU with a labelled (base) box lies in
    [this, the model's roi_fg_iou_thresh) are not distilled: parts and loose boxes of labelled
    objects, which the classification loss calls background (docs/distillation.md section 27).
    It reads the base labels alone. None = the paper's: every stored proposal. Meant for ViLD's
    one head, where both losses meet on one embedding; the ensemble's head loses with it.
    """

    steps: int = 2000
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_steps: int = 100
    warmup_factor: float = 0.01
    decay_at: tuple[float, ...] = (0.9, 0.95)
    gamma: float = 0.1
    clip_grad_norm: float | None = 1.0
    output_size: int = 1024
    scale_range: tuple[float, float] = (0.1, 2.0)
    hflip_prob: float = 0.5
    repeat_factor_threshold: float | None = None
    init_from: str | None = None
    init_modules: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    micro_batch_size: int | None = None
    sync_bn: bool = False
    checkpoint_every: int = 500
    log_every: int = 20
    seed: int = 0
    precision: str = "fp32"
    distill_rarity: float = 0.0
    distill_rarity_threshold: float = 0.8
    distill_skip_part_iou: float | None = None

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError("steps and batch_size must be positive")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if not all(0 < f <= 1 for f in self.decay_at):
            raise ValueError("decay_at holds fractions of the schedule in (0, 1]")
        if self.micro_batch_size is not None:
            if float(self.micro_batch_size) != int(self.micro_batch_size) or self.micro_batch_size <= 0:
                raise ValueError("micro_batch_size must be a positive integer")
            object.__setattr__(self, "micro_batch_size", int(self.micro_batch_size))
            if self.batch_size % self.micro_batch_size:
                raise ValueError(
                    f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                    f"{self.micro_batch_size}"
                )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.distill_rarity < 0:
            raise ValueError(f"distill_rarity must be >= 0, got {self.distill_rarity}")
        if not -1 < self.distill_rarity_threshold < 1:
            raise ValueError(f"distill_rarity_threshold is a cosine in (-1, 1), got {self.distill_rarity_threshold}")
        if self.distill_skip_part_iou is not None and not 0 <= self.distill_skip_part_iou < 1:
            raise ValueError(f"distill_skip_part_iou is an IoU in [0, 1), got {self.distill_skip_part_iou}")
        if self.checkpoint_every <= 0 or self.log_every <= 0:
            raise ValueError("checkpoint_every and log_every must be positive")


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate at `step` (0-based): linear warm-up, then x gamma at each decay point."""
    lr = config.lr
    for fraction in config.decay_at:
        if step >= int(round(fraction * config.steps)):
            lr *= config.gamma
    if step < config.warmup_steps:
        alpha = step / max(1, config.warmup_steps)
        lr *= config.warmup_factor * (1 - alpha) + alpha
    return lr
