"""Peak resident memory (and step times) of detection and training, each in a fresh process.

    .venv/bin/python benchmarks/perf_memory.py --threads 2             # full (quiet machine)
    .venv/bin/python benchmarks/perf_memory.py --quick --threads 1     # smaller R50 training image

Children (peak RSS = getrusage(RUSAGE_SELF).ru_maxrss of a process that did only that):
  detect-1024       the lvis-r50 ViLD detector (R50-FPN, random init) on one 1024x1024 image,
                    1,203 categories: the model forward that `vild detect` runs (measured on the
                    model directly; the CLI adds image decoding and drawing).
  train-shapeworld  `train_detector` at the default benchmark size (shapeworld preset: batch 8
                    of 128 px, tiny ResNet-FPN), 4 steps on a generated 16-image world.
  train-r50         one ViLD-ensemble training step of the lvis-r50 model on one image (1024 px,
                    quick: 512 px) with 20 boxes + masks and 300 distillation regions: the
                    training time per image that docs/scaling.md extrapolates from.
Writes benchmarks/results/perf_memory{,_quick}.json (with load averages).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_detect(args) -> dict:
    import torch
    import torch.nn.functional as F

    from vild.model import build_detector
    from vild.training.presets import preset

    cfg, _ = preset("lvis-r50", model=dict(mode="vild", embed_dim=512))
    model = build_detector(cfg).eval()
    text = F.normalize(torch.randn(1203, 512), dim=-1)
    image = torch.rand(3, 1024, 1024)
    after_build = current_rss_mb()
    times = []
    with torch.inference_mode():
        for _ in range(2):
            started = time.perf_counter()
            out = model([image], text)
            times.append(time.perf_counter() - started)
    return {"model_rss_mb": after_build, "forward_s": times, "detections": len(out.detections[0])}


def child_train_shapeworld(args) -> dict:
    import torch
    import torch.nn.functional as F

    from vild.data.world import make_world
    from vild.training.loop import TrainData, train_detector
    from vild.training.presets import preset
    from vild.training.vocabulary import dataset_vocabulary, world_paths

    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        make_world(world, num_train=16, num_val=2, num_web=1, num_web_val=1, progress=False, workers=1)
        paths = world_paths(world)
        vocab = dataset_vocabulary(paths["train_base"])
        ids = tuple(c for c, b in zip(vocab["category_ids"], vocab["base"]) if b)
        model_cfg, train_cfg = preset("shapeworld", model=dict(mode="text", embed_dim=512),
                                      train=dict(steps=4, log_every=1))
        text = F.normalize(torch.randn(len(ids), 512), dim=-1)
        before = current_rss_mb()
        started = time.perf_counter()
        train_detector(model_cfg, train_cfg, TrainData(str(paths["train_images"]), str(paths["train_base"]), ids),
                       text, Path(tmp) / "model", progress=False)
        elapsed = time.perf_counter() - started
    return {"rss_before_training_mb": before, "steps": 4, "batch": train_cfg.batch_size,
            "image_px": train_cfg.output_size, "seconds": elapsed, "s_per_step": elapsed / 4}


def child_train_r50(args) -> dict:
    import torch
    import torch.nn.functional as F

    from vild.model import build_detector
    from vild.training.presets import preset

    size = args.size
    cfg, _ = preset("lvis-r50", model=dict(mode="ensemble", embed_dim=512, min_size=size, max_size=size))
    torch.manual_seed(0)
    model = build_detector(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    text = F.normalize(torch.randn(866, 512), dim=-1)  # LVIS base categories
    g = torch.Generator().manual_seed(0)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = torch.rand(n, 2, generator=g) * size * 0.25 + 16
        return torch.cat([xy, xy + wh], 1)

    gt = boxes(20)
    masks = torch.zeros(20, size, size, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(gt.round().long().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    target = {"boxes": gt, "labels": torch.randint(0, 866, (20,), generator=g), "masks": masks,
              "distill_boxes": boxes(300), "distill_embeddings": F.normalize(torch.randn(300, 512, generator=g), dim=-1)}
    image = torch.rand(3, size, size, generator=g)
    times = []
    for _ in range(args.steps + 1):
        started = time.perf_counter()
        loss = sum(model([image], text, [target]).losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return {"image_px": size, "step_s": times[1:], "warmup_s": times[0],
            "s_per_image": sum(times[1:]) / len(times[1:]), "mode": "ensemble (text + distillation heads)",
            "gt_boxes": 20, "distill_regions": 300}


CHILDREN = {"detect-1024": child_detect, "train-shapeworld": child_train_shapeworld, "train-r50": child_train_r50}


def run_child(kind: str, threads: int, extra: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--threads", str(threads), *extra],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(wall_s=time.perf_counter() - started, loadavg_before=load,
               loadavg_after=[round(x, 2) for x in os.getloadavg()])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--size", type=int, default=1024, help="train-r50 image side")
    parser.add_argument("--steps", type=int, default=2, help="train-r50 timed steps")
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        out = CHILDREN[args.child](args)
        out["peak_rss_mb"] = rss_mb()
        print(json.dumps(out))
        return 0

    from vild.io import save_json

    r50 = ["--size", "512", "--steps", "1"] if args.quick else ["--size", "1024", "--steps", "2"]
    result = {
        "benchmark": "perf_memory", "quick": args.quick,
        "command": "python benchmarks/perf_memory.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "threads": args.threads},
        "note": "detect-1024 measures the detector forward in its own process, not the `vild detect` CLI",
    }
    for kind, extra in (("detect-1024", []), ("train-shapeworld", []), ("train-r50", r50)):
        print(f"[{datetime.datetime.now():%H:%M:%S}] load {os.getloadavg()[0]:.1f}  {kind}", flush=True)
        result[kind] = run_child(kind, args.threads, extra)
        print(json.dumps(result[kind]), flush=True)
    name = "perf_memory_quick.json" if args.quick else "perf_memory.json"
    save_json(ROOT / "benchmarks" / "results" / name, result)
    print(f"wrote benchmarks/results/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
