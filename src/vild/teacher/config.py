"""`TeacherTrainConfig`: the settings of `vild.teacher.train.train_teacher`, and their checks.

Kept free of torch so that `vild --help` can show the real defaults without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vild.errors import VildError


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Settings of `train_teacher`. `steps` (if set) overrides `epochs`."""

    epochs: float = 4.5
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None  # torch CPU threads while training (None: leave torch's setting)
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; slower than fp32 for this small CNN on CPU)
    # augmentation (boxes relative to the image side)
    aug_scale: tuple[float, float] = (0.75, 1.25)
    aug_aspect: float = 0.2  # max |log(aspect)| jitter
    aug_shift: float = 0.1  # max centre shift
    aug_flip: float = 0.5
    aug_brightness: float = 0.08
    aug_contrast: float = 0.15
    # caption-consistent colour decorrelation: drop the colour word from this fraction of
    # captions, and change the hue of images whose caption names no colour (the caption stays
    # true). Without it the model learns colour first and shape very late.
    colour_dropout: float = 0.0
    hue_augment: float = 0.0
    # text augmentation: this fraction of captions gets word2vec-style subsampling of frequent
    # words (template words like "a photo of" mostly dropped, names and attributes kept)
    subsample_captions: float = 0.0
    subsample_threshold: float = 0.01
    # caption-word pretraining of the image tower (vild.teacher.pretrain), then contrastive
    # training with the image trunk locked (LiT) or not
    pretrain_steps: int = 2000
    pretrain_lr: float = 2e-3
    pretrain_loss: str = "softmax"  # "softmax" (Joulin et al.) | "bce"
    pretrain_idf_power: float = 10.0  # softmax targets weighted by idf**power (pretrain.word_targets)
    lock_image_trunk: bool = False
    # weight of the same caption-word loss kept on the image tower during contrastive training
    word_loss_weight: float = 1.0
    eval_every: int = 250  # > 0: log held-out web top-1 (simple prompts, 480 images) every k steps


def check_train_config(config: TeacherTrainConfig) -> None:
    """Raise `VildError` (one line) on a setting training cannot use."""
    if config.batch_size < 2:
        raise VildError(f"--batch-size must be >= 2 (contrastive loss), got {config.batch_size}")
    if config.steps is not None and config.steps < 1:
        raise VildError(f"--steps must be >= 1, got {config.steps}")
    if config.steps is None and not config.epochs > 0:
        raise VildError(f"--epochs must be > 0, got {config.epochs}")
    if not config.lr > 0:
        raise VildError(f"--lr must be > 0, got {config.lr}")
    if config.precision not in ("bf16", "fp32"):
        raise VildError(f"--precision must be bf16 or fp32, got {config.precision!r}")
    if config.threads is not None and config.threads < 1:
        raise VildError(f"--threads must be >= 1, got {config.threads}")
    if config.word_loss_weight < 0 or config.pretrain_idf_power < 0:
        raise VildError(f"word_loss_weight and pretrain_idf_power must be >= 0, got "
                        f"{config.word_loss_weight} and {config.pretrain_idf_power}")
    lo, hi = config.aug_scale
    if not 0 < lo <= hi:
        raise VildError(f"aug_scale must satisfy 0 < lo <= hi, got {config.aug_scale}")
