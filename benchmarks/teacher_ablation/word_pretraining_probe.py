"""Diagnostic: how fast does the teacher's image tower learn shape under a pretraining target?

    .venv/bin/python benchmarks/teacher_ablation/word_pretraining_probe.py MODE STEPS LR THREADS

MODE: `sup` (category labels: a diagnostic upper bound, never used for the teacher) or `pP`
(caption-word soft targets weighted by idf**P, `vild.teacher.pretrain.word_targets`; p0 is
Joulin et al.'s uniform targets). Trains the image tower of `vild-shapeworld-clip` plus a
linear head for STEPS steps x 128 (cosine schedule) on benchmarks/work/world's web corpus and
prints, every 500 steps, (step, seconds, linear-probe top-1, loss): an L-BFGS linear probe on
6,000 train images' embeddings, scored on the 2,400 held-out web images. The probe uses labels;
it measures the features, not the teacher. Output lines are collected in
benchmarks/results/teacher_ablation.log.
"""
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from vild.teacher.arch import create_clip  # noqa: E402
from vild.teacher.pretrain import caption_vocabulary, word_targets  # noqa: E402
from vild.teacher.augment import augment  # noqa: E402
from vild.teacher.config import TeacherTrainConfig  # noqa: E402
from vild.teacher.corpus import load_categories, load_web_corpus  # noqa: E402

mode, steps, lr, threads = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
world = "benchmarks/work/world"
tr, va, cats = load_web_corpus(world, "train"), load_web_corpus(world, "val"), load_categories(world)
index = {int(c["id"]): i for i, c in enumerate(cats)}
ytr = torch.tensor([index[int(i)] for i in tr.category_ids])
yva = torch.tensor([index[int(i)] for i in va.category_ids])
model, _, _ = create_clip(None)
visual = model.visual
g = torch.Generator().manual_seed(0)
sample = tr.images[:2048].float() / 255
mean, std = sample.mean((0, 2, 3)).view(1, 3, 1, 1), sample.std((0, 2, 3)).view(1, 3, 1, 1)
conf = TeacherTrainConfig()
if mode == "sup":
    targets = F.one_hot(ytr, len(cats)).float()
else:
    targets = word_targets(tr.captions, caption_vocabulary(tr.captions), idf_power=float(mode[1:]))
head = torch.nn.Linear(256, targets.shape[1])
params = list(visual.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
probe_idx = torch.randperm(len(tr), generator=torch.Generator().manual_seed(1))[:6000]


def features(images):
    visual.eval()
    with torch.no_grad():
        out = [F.normalize(visual((images[i:i + 500].float() / 255 - mean) / std), dim=-1)
               for i in range(0, len(images), 500)]
    visual.train()
    return torch.cat(out)


def linear_probe() -> float:
    xtr, xva = features(tr.images[probe_idx]), features(va.images)
    w = torch.zeros(256, len(cats), requires_grad=True)
    b = torch.zeros(len(cats), requires_grad=True)
    lbfgs = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        lbfgs.zero_grad()
        loss = F.cross_entropy(xtr @ w * 10 + b, ytr[probe_idx]) + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    lbfgs.step(closure)
    return ((xva @ w * 10 + b).argmax(1) == yva).float().mean().item()


t0, order, pos = time.perf_counter(), torch.randperm(len(tr), generator=g), 0
for step in range(steps):
    if pos + 128 > len(tr):
        order, pos = torch.randperm(len(tr), generator=g), 0
    idx = order[pos:pos + 128]
    pos += 128
    for group in opt.param_groups:
        group["lr"] = lr * min(1, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
    logits = head(visual(augment(tr.images[idx], conf, g, mean=mean, std=std, out_size=64)))
    loss = -(targets[idx] * F.log_softmax(logits, -1)).sum(-1).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if (step + 1) % 500 == 0 or step == steps - 1:
        elapsed = time.perf_counter() - t0
        print(mode, (step + 1, round(elapsed), round(linear_probe(), 4), round(loss.item(), 3)), flush=True)
        t0 += time.perf_counter() - t0 - elapsed  # the probe's time is not training time
