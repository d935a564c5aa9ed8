"""The LVIS cost model of docs/scaling.md, from measured inputs.

    .venv/bin/python benchmarks/perf_scaling.py            # after perf_inference.py and perf_memory.py
    .venv/bin/python benchmarks/perf_scaling.py --quick    # from their --quick results, 512 px FLOPs

Measures here (single thread; counts do not depend on the machine):
  - bytes per stored region of the region store, for teacher widths 512 / 768 / 1024;
  - FLOPs per crop of the ViT-B/32, ViT-B/16 and ViT-L/14 image towers (torch FlopCounterMode);
  - FLOPs of one ViLD-ensemble training step (forward + backward, R50-FPN at 1024 px) with 0 and
    300 distillation regions per image, to split the step into a fixed part and a per-region part.
Reads (measured on this machine by the other scripts): crops per second through the teacher
(perf_inference.json), training seconds per image (perf_memory.json).
Writes benchmarks/results/perf_scaling{,_quick}.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LVIS_TRAIN_IMAGES = 100_170  # LVIS v1 train (COCO train2017 images)
STEPS, BATCH = 180_000, 256  # the official recipe
PROPOSALS = 300


def store_bytes_per_region(dim: int, proposals: int = PROPOSALS, images: int = 16) -> float:
    from vild.regions import embed_regions

    class Teacher:
        identity, name, embed_dim = "bytes", "fake", dim

        def encode_regions(self, image, boxes):
            return F.normalize(torch.randn(boxes.shape[0], dim), dim=-1)

    def proposer(batch):
        return [(torch.tensor([[0.0, 0.0, 20.0, 20.0]]).repeat(proposals, 1) + torch.arange(proposals)[:, None] * 0.1,
                 torch.linspace(1, 0, proposals)) for _ in batch]

    with tempfile.TemporaryDirectory() as tmp:
        store = embed_regions([(i, torch.rand(3, 32, 32)) for i in range(images)], proposer, Teacher(), tmp,
                              num_proposals=proposals, shard_size=images, batch_size=8, progress=False)
        return store.storage_bytes() / images / proposals


def teacher_flops(arch: str) -> tuple[float, int]:
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    model = open_clip.create_model(arch, pretrained=None).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    # with gradients enabled: under no_grad / inference_mode nn.MultiheadAttention takes a fused
    # fast path whose projections FlopCounterMode does not see (a third of ViT-B/32's FLOPs)
    with FlopCounterMode(display=False) as counter:
        out = model.encode_image(torch.randn(1, 3, size, size))
    return counter.get_total_flops(), int(out.shape[-1])


def training_flops(size: int, distill: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from vild.model import build_detector
    from vild.training.presets import preset

    cfg, _ = preset("lvis-r50", model=dict(mode="ensemble", embed_dim=512, min_size=size, max_size=size))
    torch.manual_seed(0)
    model = build_detector(cfg).train()
    g = torch.Generator().manual_seed(0)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * size * 0.25 + 16], 1)

    gt = boxes(20)
    masks = torch.zeros(20, size, size, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(gt.round().long().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    target = {"boxes": gt, "labels": torch.randint(0, 866, (20,), generator=g), "masks": masks,
              "distill_boxes": boxes(distill),
              "distill_embeddings": F.normalize(torch.randn(distill, 512, generator=g), dim=-1)}
    text = F.normalize(torch.randn(866, 512, generator=g), dim=-1)
    with FlopCounterMode(display=False) as counter:
        sum(model([torch.rand(3, size, size, generator=g)], text, [target]).losses.values()).backward()
    return counter.get_total_flops()


def load_result(name: str, quick: bool) -> dict | None:
    for candidate in ([f"{name}_quick.json"] if quick else [f"{name}.json", f"{name}_quick.json"]):
        path = ROOT / "benchmarks" / "results" / candidate
        if path.is_file():
            data = json.loads(path.read_text())
            data["_file"] = f"benchmarks/results/{candidate}"
            return data
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from vild.io import save_json

    out: dict = {
        "benchmark": "perf_scaling", "quick": args.quick,
        "command": "python benchmarks/perf_scaling.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    out["store_bytes_per_region"] = {str(d): store_bytes_per_region(d) for d in (512, 768, 1024)}
    print("store bytes per region", out["store_bytes_per_region"], flush=True)
    teachers = {}
    for arch in ("ViT-B-32", "ViT-B-16", "ViT-L-14"):
        flops, dim = teacher_flops(arch)
        teachers[arch] = {"gflops_per_crop": flops / 1e9, "embed_dim": dim}
        print(arch, teachers[arch], flush=True)
    out["teachers"] = teachers
    size = 512 if args.quick else 1024
    f0, f300 = training_flops(size, 0), training_flops(size, PROPOSALS)
    out["training_flops"] = {"image_px": size, "gflops_0_regions": f0 / 1e9, "gflops_300_regions": f300 / 1e9,
                             "gflops_per_distill_region": (f300 - f0) / PROPOSALS / 1e9}
    print("training flops", out["training_flops"], flush=True)

    inference, memory = load_result("perf_inference", args.quick), load_result("perf_memory", args.quick)
    inputs: dict = {}
    if inference:
        inputs["crops_per_s"] = inference["region_embedding"]["crops_per_s"]
        inputs["crops_per_s_source"] = inference["_file"]
        inputs["crops_per_s_threads"] = inference["machine"]["torch_threads"]
        inputs["crops_per_s_loadavg"] = inference["region_embedding"]["loadavg"]
        inputs["detector_s_per_image_1203"] = inference["detector"]["vild_1203"]["median_s"]
        inputs["detector_image_px"] = inference["settings"]["image_px"]
    if memory:
        r50 = memory["train-r50"]
        inputs["train_s_per_image"] = r50["s_per_image"]
        inputs["train_image_px"] = r50["image_px"]
        inputs["train_source"] = memory["_file"]
        inputs["train_loadavg"] = r50["loadavg_before"]
        inputs["train_peak_rss_mb"] = r50["peak_rss_mb"]
    out["measured_inputs"] = inputs

    # ---- the cost model
    model: dict = {}
    b32 = teachers["ViT-B-32"]["gflops_per_crop"]
    crops = 2 * PROPOSALS * LVIS_TRAIN_IMAGES
    if "crops_per_s" in inputs:
        rpn_s = inputs.get("detector_s_per_image_1203", 0.0)  # upper bound: the full detector
        embed_h = crops / inputs["crops_per_s"] / 3600
        model["region_embedding"] = {
            "images": LVIS_TRAIN_IMAGES, "proposals_per_image": PROPOSALS, "crops": crops,
            "teacher_device_hours": embed_h,
            "rpn_device_hours_upper_bound": LVIS_TRAIN_IMAGES * rpn_s / 3600 if inputs.get("detector_image_px") == 1024 else None,
            "by_teacher_device_hours": {a: embed_h * t["gflops_per_crop"] / b32 for a, t in teachers.items()},
        }
    if "train_s_per_image" in inputs:
        s = inputs["train_s_per_image"]
        fixed = f0 / f300
        model["training"] = {
            "image_steps": STEPS * BATCH, "s_per_image": s, "image_px_measured": inputs["train_image_px"],
            "note": None if inputs["train_image_px"] == 1024 else "measured at a smaller image than the recipe's 1024 px (quick run): not the LVIS cost",
            "device_hours": STEPS * BATCH * s / 3600,
            "fraction_from_300_distill_regions": 1 - fixed,
            "device_hours_by_distill_regions": {str(p): STEPS * BATCH * s * (fixed + (1 - fixed) * p / PROPOSALS) / 3600
                                                for p in (0, 100, 300, 1000)},
        }
    model["storage"] = {
        d: {"bytes": LVIS_TRAIN_IMAGES * PROPOSALS * out["store_bytes_per_region"][d],
            "GB": LVIS_TRAIN_IMAGES * PROPOSALS * out["store_bytes_per_region"][d] / 1e9}
        for d in out["store_bytes_per_region"]
    }
    out["lvis_cost_model"] = model
    out["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    name = "perf_scaling_quick.json" if args.quick else "perf_scaling.json"
    save_json(ROOT / "benchmarks" / "results" / name, out)
    print(json.dumps(model, indent=1))
    print(f"wrote benchmarks/results/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
