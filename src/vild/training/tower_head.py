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
model's distillation loss. Modes "image" and "ensemble" use no labels: only proposals and
their teacher embeddings. Mode "vild" makes the tower head ViLD's one head (docs/distillation.md
section 19): it also takes the text loss, a cross-entropy against the base categories' text
embeddings and the background, each stored proposal labelled by the base box it overlaps
(IoU >= the config's roi_fg_iou_thresh) or background, as the detector's RoI sampling labels
them; the regions' embeddings are then its own and the RoI head only refines boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from vild.errors import VildError
from vild.model import ViLDDetector, build_detector
from vild.model.config import DISTILL_LOSSES, check_image_head_output
from vild.model.heads import text_logits
from vild.model.losses import classification_loss, distillation_loss, relational_distillation_loss
from vild.model.tower_maps import OPEN_CLIP_TOWER, open_clip_map, open_clip_tower_spec
from vild.model.tower_regions import DEFAULT_FACTORS
from vild.training.config import TrainConfig, learning_rate

TOWER_PREFIXES = ("tower.", "roi_heads.image_head.")
TOWER_MODES = ("image", "vild", "ensemble")


@dataclass(frozen=True)
class TowerHeadConfig:
    """How the tower head is read and trained (the recipe of docs/distillation.md section 17:
    AdamW, 2000 steps of 8 images' proposals, warm-up then x0.1 at 90% and 95%)."""

    mode: str = "ensemble"
    factors: tuple[float, ...] = DEFAULT_FACTORS
    box_scales: tuple[float, ...] = (1.0, 1.5)
    grid: int = 4  # chosen on world s7 over section 17's 2 (docs/distillation.md section 20)
    fc_dims: tuple[int, ...] = (1024,)
    steps: int = 2000
    images_per_step: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0
    rarity: float = 0.0  # power of the label-free rarity weights (`vild.regions.rarity`); 0: uniform
    relational: float = 0.0  # weight of `relational_distillation_loss` beside the L1 term; 0: none
    output: str = "unit"  # the head's embedding (`ViLDConfig.image_head_output`): "unit" or "mean"
    loss: str = "l1"  # the distillation loss (`ViLDConfig.distill_loss`); "mean" wants "l2"

    def __post_init__(self) -> None:
        if self.mode not in TOWER_MODES:
            raise ValueError(f"mode must be one of {TOWER_MODES}, got {self.mode!r}")
        if self.steps <= 0 or self.images_per_step <= 0 or self.lr <= 0:
            raise ValueError("steps, images_per_step and lr must be positive")
        if self.rarity < 0:
            raise ValueError(f"rarity is a power >= 0, got {self.rarity}")
        if self.relational < 0:
            raise ValueError(f"relational is a loss weight >= 0, got {self.relational}")
        check_image_head_output(self.output, self.mode, "output")
        if self.loss not in DISTILL_LOSSES:
            raise ValueError(f"loss must be 'l1' or 'l2', got {self.loss!r}")

    def record(self) -> dict:
        """As saved in tower_head.json (JSON types: tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def schedule(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.images_per_step, lr=self.lr,
                           warmup_steps=self.warmup_steps, warmup_factor=0.1)


def teacher_tower(teacher) -> tuple[str, str, torch.nn.Module]:
    """(tower_model, tower_vision_cfg, trunk) of a teacher's image tower: a timm model with a
    feature map (the ShapeWorld teacher's CNN), or an open_clip CLIP ResNet or ViT, wrapped to
    give one (`vild.model.tower_maps`)."""
    visual = getattr(teacher.model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    cfg = teacher.model_cfg or {}
    name = (cfg.get("vision_cfg") or {}).get("timm_model_name")
    if trunk is not None and hasattr(trunk, "forward_features") and name:
        return str(name), "", trunk
    if visual is not None and trunk is None and "vision_cfg" in cfg and "embed_dim" in cfg:
        try:
            return OPEN_CLIP_TOWER, open_clip_tower_spec(cfg, visual), open_clip_map(visual)
        except ValueError as e:
            raise VildError(f"teacher {teacher.name}: {e}") from None
    raise VildError(f"teacher {teacher.name} has no image tower with a feature map: a tower-fed head needs a "
                    "timm tower with forward_features (such as the ShapeWorld teacher's CNN), a CLIP ResNet "
                    "or a ViT")


def tower_detector(base: ViLDDetector, teacher, config: TowerHeadConfig) -> ViLDDetector:
    """`base`'s weights and the teacher's tower in a detector whose distillation head reads the
    tower (a fresh head, seeded by config.seed). The image temperature becomes the teacher's; in
    mode "vild" the one head's temperature too, and its distillation weight moves with it as
    `vild.training.presets.at_teacher_scale` moves ViLD's (docs/distillation.md section 11)."""
    name, vision_cfg, trunk = teacher_tower(teacher)
    if base.config.embed_dim != teacher.embed_dim:
        raise VildError(f"the detector's embeddings are {base.config.embed_dim}-d, the teacher's "
                        f"{teacher.embed_dim}-d: use the teacher the detector was trained with")
    cfg = replace(base.config, mode=config.mode, image_head_input="tower", tower_model=name,
                  tower_vision_cfg=vision_cfg, tower_image_size=int(teacher.image_size),
                  tower_mean=tuple(teacher.mean.flatten().tolist()),
                  tower_std=tuple(teacher.std.flatten().tolist()), tower_factors=tuple(config.factors),
                  tower_box_scales=tuple(config.box_scales), tower_grid=config.grid,
                  tower_fc_dims=tuple(config.fc_dims), image_head_output=config.output,
                  distill_loss=config.loss, image_temperature=float(teacher.logit_scale))
    if config.mode == "vild":
        scale = float(teacher.logit_scale)
        cfg = replace(cfg, temperature=scale, distill_weight=base.config.distill_weight * scale / base.config.temperature)
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
        raise VildError(f"the tower {name!r} does not match the teacher's ({str(e).splitlines()[0]})") from None
    return model.eval()


@dataclass(frozen=True)
class TowerFeatures:
    """The tower's features of a region store's proposals, read once (`cache_tower_features`).

    features [N, F] fp16, targets [N, D] the teacher embeddings, counts [images] proposals per
    image (rows in image order), labels [N] 0 = background or k + 1 = the dataset's label k,
    image_ids [images] the images' ids."""

    features: torch.Tensor
    targets: torch.Tensor
    counts: torch.Tensor
    labels: torch.Tensor
    image_ids: tuple[int, ...] = ()

    def rarity_weights(self, store, power: float) -> torch.Tensor | None:
        """[N] label-free rarity weights of the rows (`vild.regions.rarity`, computed on the
        whole store as `vild train` computes them), or None for power 0 (uniform)."""
        if not power:
            return None
        from vild.regions import RegionStore
        from vild.regions.rarity import rarity_weights

        store = RegionStore(store) if not hasattr(store, "image_ids") else store
        weights = rarity_weights(store, power=power)
        return torch.cat([weights.get(i, torch.ones(int(n))) for i, n in zip(self.image_ids, self.counts)])


def proposal_labels(proposals: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                    fg_iou: float) -> torch.Tensor:
    """[P] labels of proposals [P, 4]: 1 + the label of the box [G, 4] they overlap most when
    IoU >= fg_iou, else 0 (background), as the detector's RoI sampling labels them."""
    from torchvision.ops import box_iou

    out = torch.zeros(len(proposals), dtype=torch.int64)
    if len(proposals) and len(boxes):
        iou, best = box_iou(proposals.float(), boxes.float()).max(1)
        hit = iou >= fg_iou
        out[hit] = labels.to(torch.int64)[best[hit]] + 1
    return out


@torch.no_grad()
def cache_tower_features(model: ViLDDetector, dataset, *, max_images: int | None = None, batch_images: int = 8,
                         progress: bool = True) -> TowerFeatures:
    """The tower's features of every stored proposal of the dataset's images, with their
    teacher embeddings and labels. `dataset`: a `DetectionDataset` with a region store and no
    augmentation."""
    if dataset.region_store is None:
        raise VildError("caching tower features needs a dataset with a region store")
    device = next(model.parameters()).device
    fg_iou = model.config.roi_fg_iou_thresh
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    feats, targets, counts, labels, ids = [], [], [], [], []
    for start in tqdm(range(0, count, batch_images), disable=not progress, desc="tower features", unit="batch"):
        items = [dataset[i] for i in range(start, min(start + batch_images, count))]
        images = [image.to(device) for image, _ in items]
        boxes = [t["distill_boxes"] for _, t in items]
        feats.append(model.tower_region_features(images, boxes).half().cpu())
        targets += [t["distill_embeddings"].float() for _, t in items]
        labels += [proposal_labels(t["distill_boxes"], t["boxes"], t["labels"], fg_iou) for _, t in items]
        counts += [len(b) for b in boxes]
        ids += [int(t["image_id"]) for _, t in items]
    if not sum(counts):
        raise VildError("the region store holds no proposals of these images (vild embed-regions)")
    return TowerFeatures(torch.cat(feats), torch.cat(targets), torch.tensor(counts), torch.cat(labels), tuple(ids))


def train_tower_head(model: ViLDDetector, cache: TowerFeatures, config: TowerHeadConfig, *,
                     text_embeddings: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                     progress: bool = True) -> list[dict]:
    """Fit `model`'s tower head to the teacher embeddings (its distillation loss and weight,
    each row's term scaled by `weights` [N] when given: `TowerFeatures.rarity_weights`), in
    place; each step draws config.images_per_step images. In mode "vild" the head also takes
    the text loss against `text_embeddings` [C, D] (the categories of the cache's labels) and
    the background, which trains with it. -> loss log every 100 steps."""
    head = model.roi_heads.image_head
    with_text = model.config.tower_scores_text
    if with_text and (text_embeddings is None or text_embeddings.shape[0] < int(cache.labels.max())):
        raise VildError("ViLD's one head on the tower needs the text embeddings of every labelled category")
    if with_text and not bool((cache.labels > 0).any()):
        raise VildError("no stored proposal overlaps a labelled box: the text loss would learn the background "
                        "alone (embed the regions with a trained detector's proposals)")
    device = next(head.parameters()).device
    schedule = config.schedule()
    counts = cache.counts
    starts = torch.cumsum(counts, 0) - counts
    with_rows = torch.where(counts > 0)[0]
    gen = torch.Generator().manual_seed(config.seed)
    params = list(head.parameters()) + ([model.roi_heads.background] if with_text else [])
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if with_text:
        text_embeddings = text_embeddings.float().to(device)
    head.train()
    log = []
    for step in tqdm(range(config.steps), disable=not progress, desc="tower head", unit="step"):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(schedule, step)
        pick = with_rows[torch.randint(len(with_rows), (config.images_per_step,), generator=gen)]
        rows = torch.cat([torch.arange(int(starts[i]), int(starts[i] + counts[i])) for i in pick])
        _, student = head(cache.features[rows].to(device).float())
        targets = cache.targets[rows].to(device)
        losses = {"loss_distill": model.config.distill_weight * distillation_loss(
            student, targets, model.config.distill_loss, None if weights is None else weights[rows].to(device))}
        if config.relational:
            losses["loss_relational"] = config.relational * relational_distillation_loss(
                student, targets, model.config.image_temperature)
        if with_text:
            logits = text_logits(student, text_embeddings, model.roi_heads.background, model.config.temperature)
            losses["loss_classifier"] = classification_loss(logits, cache.labels[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if step % 100 == 0 or step == config.steps - 1:
            log.append({"step": step, **{k: round(float(v.detach()), 5) for k, v in losses.items()}})
    head.eval()
    return log


def distill_tower(base_folder, teacher, images, annotations, region_store, out, config: TowerHeadConfig, *,
                  max_images: int | None = None, device: str | torch.device = "cpu",
                  progress: bool = True, feature_cache: dict | None = None) -> "Path":
    """A trained model folder + its teacher + a region store of the training images -> a model
    folder at `out` whose distillation head reads the teacher's tower (its vocabulary is the
    base folder's). tower_head.json records the recipe, the sources and the loss log.
    feature_cache: a dict kept by a caller that trains several heads (seeds) on the same
    store and tower: their cached features are read once. In mode "vild" the categories that
    `annotations` labels are the text loss's classes, embedded as the base folder's vocabulary
    embeds them (or, when it has none, by the teacher as `vild train` embeds them)."""
    import json
    import shutil
    import time
    from pathlib import Path

    from vild.data.detection import DetectionDataset
    from vild.io import atomic_write_text
    from vild.training.checkpoint import load_model, load_vocabulary, save_model
    from vild.training.finetune import check_region_store
    from vild.training.model_files import MODEL_WEIGHTS, TEXT_EMBEDDINGS, VOCABULARY
    from vild.training.vocabulary import dataset_vocabulary, labelled_category_ids, subset, text_embeddings_for

    base_folder, out = Path(base_folder), Path(out)
    if (out / MODEL_WEIGHTS).exists():
        raise VildError(f"{out} already holds a model; give another --out")
    base = load_model(base_folder)
    check_region_store(region_store, teacher, base.config.embed_dim)
    vocabulary, all_text = load_vocabulary(base_folder, base.config.embed_dim, required=False)
    if vocabulary is None and config.mode == "vild":
        vocabulary = dataset_vocabulary(annotations)
        all_text = text_embeddings_for(teacher, vocabulary)
    category_ids = labelled_category_ids(annotations, vocabulary) if vocabulary is not None else None
    started = time.perf_counter()
    model = tower_detector(base, teacher, config).to(device)
    key = (str(region_store), str(images), str(annotations), tuple(category_ids or ()), teacher.identity,
           config.factors, config.box_scales, config.grid, max_images)
    if feature_cache is not None and key in feature_cache:
        cache = feature_cache[key]
    else:
        dataset = DetectionDataset(images, annotations, category_ids=category_ids, region_store=str(region_store),
                                   with_masks=False)
        cache = cache_tower_features(model, dataset, max_images=max_images, progress=progress)
        if feature_cache is not None:
            feature_cache[key] = cache
    cached = time.perf_counter()
    text = all_text[subset(vocabulary, category_ids)] if config.mode == "vild" else None
    log = train_tower_head(model, cache, config, text_embeddings=text,
                           weights=cache.rarity_weights(region_store, config.rarity), progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    for name in (VOCABULARY, TEXT_EMBEDDINGS):
        if (base_folder / name).is_file():
            shutil.copyfile(base_folder / name, out / name)
    record = {"base_model": str(base_folder), "teacher": teacher.name, "teacher_identity": teacher.identity,
              "region_store": str(region_store), "images": int(len(cache.counts)),
              "proposals": int(cache.counts.sum()), "labelled_proposals": int((cache.labels > 0).sum()),
              "recipe": config.record(),
              "seconds_features": round(cached - started, 1),
              "seconds_training": round(time.perf_counter() - cached, 1), "log": log}
    atomic_write_text(out / "tower_head.json", json.dumps(record, indent=2) + "\n")
    save_model(out, model.cpu())  # weights last: their presence marks a finished folder
    return out
