"""Which stored proposals a training run distils, and with what weight."""

from __future__ import annotations

from pathlib import Path

from vild.errors import VildError
from vild.training.config import TrainConfig


def distill_weights(store, config: TrainConfig) -> dict | None:
    """Per-proposal rarity weights of the region store (None: uniform, the paper's loss)."""
    if store is None or not config.distill_rarity:
        return None
    from vild.regions import RegionStore
    from vild.regions.rarity import rarity_weights

    store = RegionStore(store) if isinstance(store, (str, Path)) else store
    return rarity_weights(store, power=config.distill_rarity, threshold=config.distill_rarity_threshold)


def skipped_parts(config: TrainConfig, model_config) -> tuple[float, float] | None:
    """The IoU range with labelled boxes whose proposals are not distilled (None: all are)."""
    low = config.distill_skip_part_iou
    if low is None:
        return None
    if low >= model_config.roi_fg_iou_thresh:
        raise VildError(f"distill_skip_part_iou {low} must lie below roi_fg_iou_thresh {model_config.roi_fg_iou_thresh}")
    return (low, model_config.roi_fg_iou_thresh)
