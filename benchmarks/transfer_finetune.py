"""Row (b) of `benchmarks/transfer.py`: the linear classifier finetuned on the alt world, every
other weight of the model frozen, and the model folder it is saved as."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from vild.errors import VildError
from vild.training.checkpoint import MODEL_CONFIG, MODEL_WEIGHTS, save_vocabulary

def finetune_classifier(model, paths: dict, text: torch.Tensor, category_ids: list[int], args,
                        augmentation: dict) -> tuple[torch.Tensor, list[dict]]:
    """Train only a [C, D] classifier matrix (initialised from `text`) on the train split with
    every category labelled; every weight of `model` stays fixed. -> (matrix, loss log)."""
    from vild.data.detection import DetectionDataset, collate
    from vild.data.transforms import TrainTransform
    from vild.training.config import TrainConfig, learning_rate
    from vild.training.loop import StepBatches, micro_seed

    if not model.config.uses_text_loss:
        raise VildError(f"a {model.config.mode!r} model has no text-head classification loss to finetune")
    for p in model.parameters():
        p.requires_grad_(False)
    weight = torch.nn.Parameter(text.detach().clone().float())
    cfg = TrainConfig(
        steps=args.finetune_steps, batch_size=args.finetune_batch_size, lr=args.finetune_lr,
        momentum=0.9, weight_decay=0.0, warmup_steps=min(50, args.finetune_steps // 10),
        warmup_factor=0.1, decay_at=(0.8,), gamma=0.1, clip_grad_norm=1.0, seed=args.seed,
        **augmentation,
    )
    dataset = DetectionDataset(
        paths["train_images"], paths["train_all"], category_ids=category_ids,
        transform=TrainTransform(cfg.output_size, tuple(cfg.scale_range), cfg.hflip_prob),
        with_masks=model.config.with_masks,
    )
    batches = StepBatches(dataset, cfg)
    optimizer = torch.optim.SGD([weight], lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)
    # training-mode proposals and RoI sampling, as in training; BatchNorm keeps its statistics
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    history = []
    from tqdm import tqdm

    for step in tqdm(range(cfg.steps), desc="finetune", disable=not args.progress):
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(micro_seed(cfg.seed, step, 0))
        images, targets = collate([dataset[i] for i in batches.indices(step)])
        classifier = torch.nn.functional.normalize(weight, dim=-1) if args.classifier_norm == "l2" else weight
        loss = model(images, classifier, targets).losses["loss_classifier"]
        if not math.isfinite(loss.item()):
            raise VildError(f"finetuning loss became non-finite at step {step}; lower --finetune-lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([weight], cfg.clip_grad_norm)
        optimizer.step()
        history.append({"step": step, "lr": lr, "loss_classifier": round(loss.item(), 5)})
    model.eval()
    final = weight.detach()
    if args.classifier_norm == "l2":
        final = torch.nn.functional.normalize(final, dim=-1)
    return final, history


def write_finetuned_model(out: Path, model_dir: Path, vocab: dict, weight: torch.Tensor, meta: dict) -> None:
    """A model folder: the source weights unchanged + the alt vocabulary whose text embeddings
    are the finetuned classifier (every category flagged as trained)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in (MODEL_CONFIG, MODEL_WEIGHTS):
        shutil.copy2(model_dir / name, out / name)
    saved = dict(vocab, base=[True] * len(vocab["names"]), finetuned=meta)
    save_vocabulary(out, saved, weight)
