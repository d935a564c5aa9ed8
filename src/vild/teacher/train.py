"""Training the ShapeWorld-OV teacher: a small CLIP, contrastive on the web image-caption corpus.

The teacher sees only `OUT/web/train.npz` images and `OUT/web/train_captions.json` captions,
never a detection annotation. Model, tokenizer and loss are open_clip's own
(`vild-shapeworld-clip` config, `SimpleTokenizer`, `open_clip.loss.ClipLoss`); the result is
an open_clip folder (`open_clip_config.json` + `open_clip_model.safetensors`) that
`Teacher.load(folder)` and `open_clip.create_model_and_transforms("local-dir:" + folder)` load.

The pieces: the corpus (`vild.teacher.corpus`), image and caption augmentation
(`vild.teacher.augment`, `vild.teacher.captions`), the batches (`vild.teacher.batches`),
caption-word pretraining (`vild.teacher.pretrain`) and the zero-shot checks
(`vild.teacher.zero_shot`); this module holds the loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vild.data.loading import default_workers, resolve_workers
from vild.errors import VildError
from vild.teacher.augment import augment
from vild.teacher.captions import strip_words, subsample_words, word_frequencies
from vild.teacher.config import TeacherTrainConfig, check_train_config
from vild.teacher.corpus import load_web_corpus, world_colour_words
from vild.teacher.zero_shot import held_out_probe, probe_accuracy, simple_prompt_top1


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name or "positional_embedding" in name or "class_embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, config: TeacherTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def train_teacher(
    world_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TeacherTrainConfig = TeacherTrainConfig(),
    *,
    model_cfg: dict | None = None,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    workers: int | None = None,
) -> dict:
    """Train the teacher on `world_dir`'s web corpus and save it to `out_dir`; returns a summary.

    model_cfg: open_clip model config (None -> the packaged `vild-shapeworld-clip`).
    workers: 1 draws the contrastive batches in a worker process ahead of the model, 0 here
    (None: 0 on a machine of <= 2 cores, else 1); the teacher is the same either way.
    The output folder appears only when training has finished (atomic write).
    """
    check_train_config(config)
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        return _train(world_dir, out_dir, config, model_cfg=model_cfg, device=device,
                      progress=progress, log=log,
                      workers=min(1, default_workers(device)) if workers is None else resolve_workers(workers))
    finally:
        torch.set_num_threads(previous_threads)


def _train(world_dir, out_dir, config: TeacherTrainConfig, *, model_cfg, device, progress, log,
           workers) -> dict:
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm

    from vild.teacher.arch import create_clip
    from vild.teacher.batches import ContrastiveBatches, batch_stream
    from vild.teacher.folder import save_teacher_folder
    from vild.teacher.pretrain import adamw
    from vild.teacher.teacher import Teacher
    from vild.text.tower import encode_text_trimmed, inspect_text_tower

    torch.manual_seed(config.seed)
    world_dir = Path(world_dir).expanduser()
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise VildError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "open_clip_config.json").is_file():
        raise VildError(f"--out {out_dir} exists and is not a teacher folder; refusing to overwrite it")

    corpus = load_web_corpus(world_dir, "train")
    n = len(corpus)
    model, tokenizer, cfg = create_clip(model_cfg, device=device)
    image_size = int(cfg["vision_cfg"]["image_size"])
    context_length = int(cfg["text_cfg"].get("context_length", 77))

    # normalisation statistics of this corpus (stored with the weights)
    gen = torch.Generator().manual_seed(config.seed)
    sample = corpus.images[torch.randperm(n, generator=gen)[:2048]].float().div_(255.0)
    mean_t = sample.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    std_t = sample.std(dim=(0, 2, 3)).clamp(min=1e-3).view(1, 3, 1, 1)
    mean = tuple(round(float(v), 4) for v in mean_t.flatten())
    std = tuple(round(float(v), 4) for v in std_t.flatten())
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    tokens = tokenizer(corpus.captions)  # [N, ctx]
    colour_words = world_colour_words(world_dir) if (config.colour_dropout > 0 or config.hue_augment > 0) else []
    stripped = [strip_words(c, colour_words) for c in corpus.captions]
    names_colour = torch.tensor([changed for _, changed in stripped])  # caption names a colour
    tokens_plain = tokenizer([c for c, _ in stripped]) if config.colour_dropout > 0 else tokens
    freq = word_frequencies(corpus.captions) if config.subsample_captions > 0 else {}
    text_rng = np.random.default_rng(config.seed)
    wide = tokenizer(corpus.captions[: min(n, 4096)], context_length=context_length + 1)
    truncated = int((wide[:, -1] != 0).sum())
    if truncated and log:
        log(f"warning: {truncated} of the first {wide.shape[0]} captions exceed {context_length} tokens (truncated)")

    steps_per_epoch = max(1, n // config.batch_size)
    total = int(config.steps) if config.steps else max(1, round(config.epochs * steps_per_epoch))
    batch = min(config.batch_size, n)

    # channels-last convolutions are ~1.3x faster on CPU; the weights are saved contiguous
    model.visual.to(memory_format=torch.channels_last)

    def augmented(imgs: torch.Tensor, hue_mask: torch.Tensor | None = None) -> torch.Tensor:
        return augment(imgs, config, gen, mean=mean_t, std=std_t, out_size=image_size, hue_mask=hue_mask)

    def image_batch(imgs: torch.Tensor, hue_mask: torch.Tensor | None = None) -> torch.Tensor:
        return augmented(imgs, hue_mask).to(device).contiguous(memory_format=torch.channels_last)

    pretrain_summary = None
    pretrain_start = time.perf_counter()
    word_head = word_targets_all = None
    if config.word_loss_weight > 0:
        from vild.teacher.pretrain import caption_vocabulary, word_targets

        vocabulary = caption_vocabulary(corpus.captions)
        word_targets_all = word_targets(corpus.captions, vocabulary, idf_power=config.pretrain_idf_power)
        embed_dim = int(cfg["embed_dim"])
        word_head = torch.nn.Linear(embed_dim, len(vocabulary)).to(device)
    if config.pretrain_steps > 0:
        from vild.teacher.pretrain import pretrain_image_tower

        pretrain_summary = pretrain_image_tower(
            model.visual, corpus.images, corpus.captions, steps=config.pretrain_steps,
            batch_size=batch, lr=config.pretrain_lr, weight_decay=config.weight_decay,
            warmup_steps=config.warmup_steps,
            make_batch=lambda imgs, g: image_batch(imgs),
            generator=gen, loss=config.pretrain_loss, idf_power=config.pretrain_idf_power,
            head=word_head, targets=word_targets_all,
            device=device, progress=progress, log=log)
        pretrain_summary["seconds"] = round(time.perf_counter() - pretrain_start, 1)
    trunk = getattr(model.visual, "trunk", None) if config.lock_image_trunk else None
    if config.lock_image_trunk and trunk is None:
        raise VildError("lock_image_trunk needs a timm image tower (vision_cfg.timm_model_name)")
    if trunk is not None:
        trunk.requires_grad_(False)

    def set_train() -> None:
        model.train()
        if trunk is not None:
            trunk.eval()  # locked: BatchNorm statistics stay those of pretraining

    # captions are ~10 of 32 tokens: run the text tower only up to each batch's longest caption
    text_tower, why = inspect_text_tower(model)
    if text_tower is None and log:
        log(f"note: text tower runs on the full context ({why})")
    set_train()
    groups = _param_groups(model, config.weight_decay)
    if word_head is not None:
        word_head.train()
        groups.append({"params": list(word_head.parameters()), "weight_decay": config.weight_decay})
    opt = adamw(groups, device, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    use_amp = config.precision == "bf16"
    dev_type = torch.device(device).type
    max_logit = math.log(100.0)

    if log:
        n_params = sum(p.numel() for p in model.parameters())
        log(f"training teacher on {n} web pairs of {world_dir}: {n_params / 1e6:.2f} M params, "
            f"{total} steps x {batch} ({total * batch / n:.1f} epochs), {config.precision}, "
            f"{torch.get_num_threads()} threads")
    curve: list[dict] = []
    probe = held_out_probe(world_dir, n_images=480) if config.eval_every > 0 else None
    losses: list[float] = []  # contrastive part only, comparable with and without the word loss
    word_losses: list = []  # device tensors until the end
    ema = None
    start = time.perf_counter()
    batches = batch_stream(ContrastiveBatches(
        images=corpus.images, captions=corpus.captions, tokens=tokens, tokens_plain=tokens_plain,
        stripped=stripped, names_colour=names_colour, tokenizer=tokenizer, config=config, generator=gen,
        subsample=lambda c: subsample_words(c, freq, config.subsample_threshold, text_rng),
        augment=augmented, batch=batch, total=total,
    ), workers=workers, device=device)
    pending: list[torch.Tensor] = []  # losses not yet read back: one host sync per log interval
    failed = torch.zeros((), dtype=torch.bool, device=device)
    bar = tqdm(total=total, desc="train-teacher", unit="step", disable=not progress, mininterval=1.0,
               dynamic_ncols=True)
    try:
        for step in range(total):
            idx, x, t = next(batches)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            t = t.to(device, non_blocking=True)
            lr = _lr_at(step, total, config)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=use_amp):
                image_embeddings = model.encode_image(x).float()
                text_features = F.normalize(encode_text_trimmed(model, t, text_tower), dim=-1)
            image_features = F.normalize(image_embeddings, dim=-1)
            contrastive = loss_fn(image_features, text_features, model.logit_scale.exp().float())
            loss = contrastive
            if word_head is not None:
                target = word_targets_all[idx].to(device)
                word_loss = F.cross_entropy(word_head(image_embeddings), target)  # probability targets
                loss = contrastive + config.word_loss_weight * word_loss
                word_losses.append(word_loss.detach())
            failed |= ~torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_logit)
            pending.append(contrastive.detach())
            bar.update(1)
            evaluate = probe is not None and ((step + 1) % config.eval_every == 0 or step == total - 1)
            if step % 5 == 0 or step == total - 1 or evaluate:
                if bool(failed):
                    raise VildError(f"teacher training diverged by step {step} (loss "
                                    f"{float(loss.detach())}); lower --lr (now {config.lr})")
                for value in torch.stack(pending).tolist():
                    losses.append(value)
                    ema = value if ema is None else 0.95 * ema + 0.05 * value
                pending.clear()
                bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}", refresh=False)
            if evaluate:
                acc = probe_accuracy(model, tokenizer, probe, image_size, mean, std)
                curve.append({"step": step + 1, "seconds": round(time.perf_counter() - start, 1),
                              "loss": round(ema, 4), "val_top1": round(acc, 4)})
                set_train()
                if log:
                    bar.write(f"step {step + 1}: loss {ema:.3f}, held-out top-1 {100 * acc:.1f}% "
                              f"({time.perf_counter() - start:.0f} s)")
    finally:
        batches = None  # ends the loader's worker now
        bar.close()
    word_losses = torch.stack(word_losses).tolist() if word_losses else []
    train_seconds = time.perf_counter() - pretrain_start  # word pretraining included
    model.visual.to(memory_format=torch.contiguous_format)
    model.eval()

    preprocess_cfg = {"size": image_size, "mean": list(mean), "std": list(std),
                      "interpolation": "bilinear", "resize_mode": "squash"}
    teacher = Teacher(model, tokenizer, image_size=image_size, mean=mean, std=std,
                      model_cfg=cfg, preprocess_cfg=preprocess_cfg, name=str(out_dir))
    summary: dict = {
        "world": str(world_dir),
        "train_pairs": n,
        "steps": total,
        "batch_size": batch,
        "epochs": round(total * batch / n, 3),
        "train_seconds": round(train_seconds, 1),
        "loss_first": round(float(np.mean(losses[:10])), 4),
        "loss_last": round(float(np.mean(losses[-10:])), 4),
        "word_loss_last": round(float(np.mean(word_losses[-10:])), 4) if word_losses else None,
        "logit_scale": round(float(model.logit_scale.exp()), 2),
        "config": _jsonable(dataclasses.asdict(config)),
        "arch": cfg,
        "torch_threads": torch.get_num_threads(),
    }
    if curve:
        summary["curve"] = curve
    if pretrain_summary is not None:
        summary["word_pretraining"] = pretrain_summary
    # quick held-out check with simple prompts (the benchmark uses the 63 ViLD prompts)
    val_path = world_dir / "web" / "val.npz"
    if val_path.is_file() and (world_dir / "world.json").is_file():
        try:
            summary["val_top1_simple_prompts"] = simple_prompt_top1(teacher, world_dir)
        except VildError as e:
            summary["val_top1_simple_prompts"] = None
            if log:
                log(f"warning: skipped held-out check: {e}")
    summary["identity"] = teacher.identity
    save_teacher_folder(model, out_dir, model_cfg=cfg, preprocess_cfg=preprocess_cfg, info=summary)
    if log:
        msg = f"wrote teacher to {out_dir} in {train_seconds:.0f} s of training (loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}"
        if summary.get("val_top1_simple_prompts") is not None:
            msg += f", held-out web top-1 {100 * summary['val_top1_simple_prompts']:.1f}% with simple prompts"
        log(msg + ")")
    return summary


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
