"""Named (model, training) recipes. `lvis-*` follow the official ViLD configs; `shapeworld-*`
are scaled to train on 2 CPU cores (see README: deviations)."""

from __future__ import annotations

import dataclasses
import math

from vild.errors import VildError
from vild.model import ViLDConfig
from vild.training.config import TrainConfig

_SHAPEWORLD_MODEL = dict(
    backbone="tiny",
    tiny_widths=(32, 64, 96, 128),
    norm="bn",
    fpn_channels=64,
    min_size=128,
    max_size=128,
    anchor_sizes=(8, 16, 32, 64, 128),
    rpn_pre_nms_top_n_train=600,
    rpn_post_nms_top_n_train=300,
    rpn_pre_nms_top_n_test=600,
    rpn_post_nms_top_n_test=300,
    detections_per_image=100,
    pre_nms_topk=3000,
    rpn_batch_size_per_image=128,
    head_conv_dims=(),
    head_fc_dims=(256, 256),
    head_norm=None,
    roi_batch_size_per_image=64,
    mask_head_dims=(32,),
    mask_output_size=7,  # pooled 7x7, predicted 14x14: the mask head dominates CPU inference
    temperature=50.0,
)

_SHAPEWORLD_TRAIN = dict(
    batch_size=8,
    lr=0.04,
    weight_decay=1e-4,
    warmup_steps=50,
    warmup_factor=0.1,
    output_size=128,
    scale_range=(0.7, 1.4),
    checkpoint_every=200,
)

PRESETS: dict[str, tuple[dict, dict]] = {
    # ShapeWorld-OV on CPU: a narrow ResNet-FPN at 128 px, from scratch. 4000 steps (16 epochs
    # of 2000 images, ~20 min on 2 cores) give box APc 48 on the base names; 600 steps gave 1.7
    # (benchmarks/results/shapeworld_diagnostics{,_600steps}.json).
    "shapeworld": (_SHAPEWORLD_MODEL, dict(_SHAPEWORLD_TRAIN, steps=4000)),
    # Fine-tuning a trained ShapeWorld model on new data of the same look (`vild train --init`):
    # a short schedule at a quarter of the from-scratch learning rate, backbone and RPN kept
    # as they are (as the bundled model's heads were trained on its trunk; steps ~3x faster on
    # CPU: 31 against 11 images/s for ViLD-ensemble, 1 thread). benchmarks/results/finetune.md.
    "shapeworld-finetune": (_SHAPEWORLD_MODEL, dict(_SHAPEWORLD_TRAIN, steps=300, lr=0.01, warmup_steps=20,
                                                    freeze=("backbone", "rpn"))),
    # A few steps, for plumbing tests and --quick runs.
    "shapeworld-quick": (_SHAPEWORLD_MODEL, dict(_SHAPEWORLD_TRAIN, steps=12, warmup_steps=4)),
    # The official LVIS recipe (vild-method.md), R50-FPN and R152-FPN at 1024 px: global batch
    # 256 in micro-batches of 8 images (32 GPUs, or 8 GPUs x 4 accumulation steps), sync BN.
    "lvis-r50": (
        dict(backbone="resnet50", min_size=1024, max_size=1024, temperature=100.0, distill_weight=0.5),
        dict(steps=180_000, batch_size=256, lr=0.32, weight_decay=4e-5, warmup_steps=1000,
             warmup_factor=0.01, output_size=1024, scale_range=(0.1, 2.0), clip_grad_norm=None,
             micro_batch_size=8, sync_bn=True, checkpoint_every=5000),
    ),
    "lvis-r152": (
        dict(backbone="resnet152", min_size=1024, max_size=1024, temperature=100.0, distill_weight=1.0),
        dict(steps=180_000, batch_size=256, lr=0.32, weight_decay=4e-5, warmup_steps=1000,
             warmup_factor=0.01, output_size=1024, scale_range=(0.1, 2.0), clip_grad_norm=None,
             micro_batch_size=8, sync_bn=True, checkpoint_every=5000),
    ),
}


def preset(name: str, *, model: dict | None = None, train: dict | None = None) -> tuple[ViLDConfig, TrainConfig]:
    """A named recipe with overrides applied: -> (ViLDConfig, TrainConfig)."""
    if name not in PRESETS:
        raise VildError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    model_kwargs, train_kwargs = PRESETS[name]
    model_kwargs = {**model_kwargs, **(model or {})}
    train_kwargs = {**train_kwargs, **(train or {})}
    try:
        return ViLDConfig(**model_kwargs), TrainConfig(**train_kwargs)
    except (TypeError, ValueError) as e:
        raise VildError(f"bad configuration: {e}") from None


def at_teacher_scale(model: dict, logit_scale: float, mode: str, preset_name: str) -> dict:
    """Model overrides with the temperatures of the heads whose embeddings imitate the teacher's
    image embeddings set to the teacher's logit scale, unless `model` gives them: the
    distillation head's (`image_temperature`) and, in mode "vild", the one head's
    (`temperature`), which both losses share. Those embeddings' cosines to the text embeddings
    are on the teacher's scale; the paper's tau = 0.01 is CLIP's own (logit scale 100). ViLD
    on world s7: 13.6 APr at the preset's 50, 17.2 at the teacher's 20.5 (docs/distillation.md
    section 10).

    When ViLD's temperature moves so, its `distill_weight` (unless given) moves with it: the
    cross-entropy's gradient on the embedding scales with the temperature and the L1 term's does
    not, so the preset's weight times (teacher's scale / preset's temperature) keeps the balance
    between the two losses that the preset's weight was chosen at. For CLIP on the LVIS presets
    (100 / 100) that is the paper's weight; on ShapeWorld, 0.5 x 20.5 / 50 = 0.21 (section 11)."""
    out = dict(model)
    out.setdefault("image_temperature", float(logit_scale))
    if mode == "vild" and "temperature" not in out:
        base = preset(preset_name, model=out)[0]
        out["temperature"] = float(logit_scale)
        out.setdefault("distill_weight", base.distill_weight * float(logit_scale) / base.temperature)
    return out


def ensemble_distillation_head(model: dict, mode: str, preset_name: str, embed_dim: int) -> dict:
    """Model overrides with mode "ensemble"'s RoI distillation head left unnormalised
    (`image_head_output="mean"`) and trained with the L2 loss, unless `model` gives the head's
    output, loss or weight (then the dataclass defaults fill the rest) or puts the head on the
    teacher's tower (whose ensemble this did not lift: docs/distillation.md section 23).

    The L2 weight gives the loss the gradient the preset's L1 term has: the L1 gradient on a
    D-dimensional embedding has norm sqrt(D) x w, the L2 one 2 |s - t| x w', equal at |s - t|
    = 1 (a unit teacher embedding against a head that starts at the origin) for w' = w sqrt(D)
    / 2: 4 for ShapeWorld's 0.5 and D = 256. Adopted by the rule written before its second
    world ran (sections 24-25): the ensemble gained 0.65 and 1.60 APr on world s13 remade and
    0.72 and 1.52 on world s7 remade (a third seed there, run afterwards: -0.21). ViLD-image
    keeps the unit head (on the RoI features the L2 loss costs its direction more than the
    length gives, section 24)."""
    out = dict(model)
    given = {"image_head_output", "distill_loss", "distill_weight"} & out.keys()
    if mode != "ensemble" or given:
        return out
    base = preset(preset_name, model=dict(out, mode=mode, embed_dim=embed_dim))[0]
    if base.image_head_input != "roi":
        return out
    out.update(image_head_output="mean", distill_loss="l2",
               distill_weight=base.distill_weight * math.sqrt(embed_dim) / 2)
    return out


def row_recipe(model: dict, logit_scale: float, embed_dim: int, mode: str, preset_name: str) -> dict:
    """Model overrides for training a row of `mode` from `preset_name` with a teacher of this
    logit scale and embedding size: `at_teacher_scale`, then `ensemble_distillation_head`."""
    return ensemble_distillation_head(at_teacher_scale(model, logit_scale, mode, preset_name), mode,
                                      preset_name, embed_dim)


def parse_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """["temperature=50", "steps=100"] -> (model overrides, train overrides), typed by field."""
    model_fields = {f.name: f for f in dataclasses.fields(ViLDConfig)}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    model, train = {}, {}
    for pair in pairs:
        if "=" not in pair:
            raise VildError(f"--set expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        target = model if key in model_fields else train if key in train_fields else None
        if target is None:
            raise VildError(f"--set: unknown setting {key!r}")
        default = (model_fields.get(key) or train_fields[key]).default
        target[key] = _parse_value(raw, default, key)
    return model, train


def _parse_value(raw: str, default, key: str):
    if raw.lower() in ("none", "null"):
        return None
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, tuple):
            items = [x for x in raw.split(",") if x]
            kind = type(default[0]) if default else str
            return tuple(kind(x) for x in items)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float) or default is None:
            try:
                return float(raw)
            except ValueError:
                return raw
        return raw
    except ValueError:
        raise VildError(f"--set {key}: cannot parse {raw!r}") from None
