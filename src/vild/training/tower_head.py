"""A distillation head that reads the teacher's own image tower, trained on a region store
(`vild distill-tower`).

Why: a head distilled on a trunk trained on base labels names about half the novel objects
the teacher names; the same loss on the teacher tower's own feature map carries nearly all of
it (docs/distillation.md sections 17-18). The tower is frozen and the head shares nothing with
the rest of the detector, so it trains on its own: `tower_detector` puts a trained detector's
weights and the teacher's tower into one model (mode "ensemble": the detector's text head +
the tower head; mode "image": the tower head alone, boxes and masks still the detector's),
`cache_tower_features` reads the tower once per training image at the region store's
proposals, and `train_tower_head` fits the head to the stored teacher embeddings with the
model's distillation loss. No labels are used: only proposals and their teacher embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from vild.errors import VildError
from vild.model import ViLDDetector, build_detector
from vild.model.losses import distillation_loss
from vild.model.tower_regions import DEFAULT_FACTORS
from vild.training.config import TrainConfig, learning_rate

TOWER_PREFIXES = ("tower.", "roi_heads.image_head.")


@dataclass(frozen=True)
class TowerHeadConfig:
    """How the tower head is read and trained (the recipe of docs/distillation.md section 17:
    AdamW, 2000 steps of 8 images' proposals, warm-up then x0.1 at 90% and 95%)."""

    mode: str = "ensemble"
    factors: tuple[float, ...] = DEFAULT_FACTORS
    box_scales: tuple[float, ...] = (1.0, 1.5)
    grid: int = 2
    fc_dims: tuple[int, ...] = (1024,)
    steps: int = 2000
    images_per_step: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("image", "ensemble"):
            raise ValueError(f"mode must be 'image' or 'ensemble', got {self.mode!r}")
        if self.steps <= 0 or self.images_per_step <= 0 or self.lr <= 0:
            raise ValueError("steps, images_per_step and lr must be positive")

    def record(self) -> dict:
        """As saved in tower_head.json (JSON types: tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def schedule(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.images_per_step, lr=self.lr,
                           warmup_steps=self.warmup_steps, warmup_factor=0.1)


def teacher_tower(teacher) -> tuple[str, torch.nn.Module]:
    """(timm name, trunk) of a teacher whose image tower is a timm model with a feature map."""
    visual = getattr(teacher.model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    name = ((teacher.model_cfg or {}).get("vision_cfg") or {}).get("timm_model_name")
    if trunk is None or not hasattr(trunk, "forward_features") or not name:
        raise VildError(f"teacher {teacher.name} has no timm image tower: a tower-fed head needs one "
                        "whose forward_features gives a feature map (such as the ShapeWorld teacher's CNN)")
    return str(name), trunk


def tower_detector(base: ViLDDetector, teacher, config: TowerHeadConfig) -> ViLDDetector:
    """`base`'s weights and the teacher's tower in a detector whose distillation head reads the
    tower (a fresh head, seeded by config.seed). The image temperature becomes the teacher's."""
    name, trunk = teacher_tower(teacher)
    if base.config.embed_dim != teacher.embed_dim:
        raise VildError(f"the detector's embeddings are {base.config.embed_dim}-d, the teacher's "
                        f"{teacher.embed_dim}-d: use the teacher the detector was trained with")
    cfg = replace(base.config, mode=config.mode, image_head_input="tower", tower_model=name,
                  tower_image_size=int(teacher.image_size), tower_mean=tuple(teacher.mean.flatten().tolist()),
                  tower_std=tuple(teacher.std.flatten().tolist()), tower_factors=tuple(config.factors),
                  tower_box_scales=tuple(config.box_scales), tower_grid=config.grid,
                  tower_fc_dims=tuple(config.fc_dims), image_temperature=float(teacher.logit_scale))
    torch.manual_seed(config.seed)
    model = build_detector(cfg)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(TOWER_PREFIXES)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(TOWER_PREFIXES)]
    if missing or unexpected:
        raise VildError(f"the detector's weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    try:
        model.tower.trunk.load_state_dict(trunk.state_dict())
    except RuntimeError as e:
        raise VildError(f"timm's {name!r} does not match the teacher's tower ({str(e).splitlines()[0]})") from None
    return model.eval()


@torch.no_grad()
def cache_tower_features(model: ViLDDetector, dataset, *, max_images: int | None = None, batch_images: int = 8,
                         progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tower's features (fp16) of every stored proposal of the dataset's images, their
    teacher embeddings and the number per image: -> (features [N, F], targets [N, D], counts
    [images]). `dataset`: a `DetectionDataset` with a region store and no augmentation."""
    if dataset.region_store is None:
        raise VildError("caching tower features needs a dataset with a region store")
    device = next(model.parameters()).device
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    feats, targets, counts = [], [], []
    for start in tqdm(range(0, count, batch_images), disable=not progress, desc="tower features", unit="batch"):
        items = [dataset[i] for i in range(start, min(start + batch_images, count))]
        images = [image.to(device) for image, _ in items]
        boxes = [t["distill_boxes"] for _, t in items]
        feats.append(model.tower_region_features(images, boxes).half().cpu())
        targets += [t["distill_embeddings"].float() for _, t in items]
        counts += [len(b) for b in boxes]
    if not sum(counts):
        raise VildError("the region store holds no proposals of these images (vild embed-regions)")
    return torch.cat(feats), torch.cat(targets), torch.tensor(counts)


def train_tower_head(model: ViLDDetector, feats: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor,
                     config: TowerHeadConfig, *, progress: bool = True) -> list[dict]:
    """Fit `model`'s tower head to the teacher embeddings (its distillation loss and weight),
    in place; each step draws config.images_per_step images. -> loss log every 100 steps."""
    head = model.roi_heads.image_head
    device = next(head.parameters()).device
    schedule = config.schedule()
    starts = torch.cumsum(counts, 0) - counts
    with_rows = torch.where(counts > 0)[0]
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    head.train()
    log = []
    for step in tqdm(range(config.steps), disable=not progress, desc="tower head", unit="step"):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(schedule, step)
        pick = with_rows[torch.randint(len(with_rows), (config.images_per_step,), generator=gen)]
        rows = torch.cat([torch.arange(int(starts[i]), int(starts[i] + counts[i])) for i in pick])
        _, student = head(feats[rows].to(device).float())
        loss = model.config.distill_weight * distillation_loss(student, targets[rows].to(device),
                                                                model.config.distill_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == config.steps - 1:
            log.append({"step": step, "loss_distill": round(float(loss.detach()), 5)})
    head.eval()
    return log


def distill_tower(base_folder, teacher, images, annotations, region_store, out, config: TowerHeadConfig, *,
                  max_images: int | None = None, device: str | torch.device = "cpu",
                  progress: bool = True, feature_cache: dict | None = None) -> "Path":
    """A trained model folder + its teacher + a region store of the training images -> a model
    folder at `out` whose distillation head reads the teacher's tower (its vocabulary is the
    base folder's). tower_head.json records the recipe, the sources and the loss log.
    feature_cache: a dict kept by a caller that trains several heads (seeds) on the same
    store and tower: their cached features are read once."""
    import json
    import shutil
    import time
    from pathlib import Path

    from vild.data.detection import DetectionDataset
    from vild.io import atomic_write_text
    from vild.training.checkpoint import load_model, save_model
    from vild.training.finetune import check_region_store
    from vild.training.model_files import MODEL_WEIGHTS, TEXT_EMBEDDINGS, VOCABULARY

    base_folder, out = Path(base_folder), Path(out)
    if (out / MODEL_WEIGHTS).exists():
        raise VildError(f"{out} already holds a model; give another --out")
    base = load_model(base_folder)
    check_region_store(region_store, teacher, base.config.embed_dim)
    started = time.perf_counter()
    model = tower_detector(base, teacher, config).to(device)
    key = (str(region_store), str(images), teacher.identity, config.factors, config.box_scales, config.grid, max_images)
    if feature_cache is not None and key in feature_cache:
        feats, targets, counts = feature_cache[key]
    else:
        dataset = DetectionDataset(images, annotations, region_store=str(region_store), with_masks=False)
        feats, targets, counts = cache_tower_features(model, dataset, max_images=max_images, progress=progress)
        if feature_cache is not None:
            feature_cache[key] = (feats, targets, counts)
    cached = time.perf_counter()
    log = train_tower_head(model, feats, targets, counts, config, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    for name in (VOCABULARY, TEXT_EMBEDDINGS):
        if (base_folder / name).is_file():
            shutil.copyfile(base_folder / name, out / name)
    record = {"base_model": str(base_folder), "teacher": teacher.name, "teacher_identity": teacher.identity,
              "region_store": str(region_store), "images": int(len(counts)), "proposals": int(counts.sum()),
              "recipe": config.record(),
              "seconds_features": round(cached - started, 1),
              "seconds_training": round(time.perf_counter() - cached, 1), "log": log}
    atomic_write_text(out / "tower_head.json", json.dumps(record, indent=2) + "\n")
    save_model(out, model.cpu())  # weights last: their presence marks a finished folder
    return out
