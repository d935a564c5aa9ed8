"""Inference speed on one device, stage by stage, through vild's one prediction path.

    python benchmarks/perf_inference.py --device cuda                         # the full matrix
    python benchmarks/perf_inference.py --device cpu --threads 1 --size 512 \\
        --batches 1 --repeats 1                                               # a reduced CPU run
    python benchmarks/perf_inference.py --quick                               # plumbing (tests)

Detector: the `lvis-r50` preset (R50-FPN, 4 conv + 1 FC box head, 1,000 proposals, masks),
mode vild, random init (speed does not depend on the values). Matrix: batch {1, 8} x
precision {fp32 (TF32 on CUDA), bf16 autocast} x categories {10, 1,203, 20,000} x detections
{100, 300}; per row the stages (preprocess, backbone_fpn, rpn, box_head, classify, select_nms,
mask_head, finish = pasting + hand-back to the CPU), each timed after a device sync, median of
the repeats after one warm-up. Plus, batch 1, fp32, 1,203 categories, 300 detections:
- ViLD against the same Mask R-CNN with a linear classifier (Linear(1024 -> 1 + C) + softmax);
- torchvision's `maskrcnn_resnet50_fpn`, 1,204 classes, score threshold 0 (reference row);
- post-processing branch by branch (`vild.model.postprocess`: batched vs per image) on the
  same regions, which is how the CPU default was chosen.
Writes benchmarks/results/perf_inference_<device>.json (with the device's name), or --out.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.io import save_json  # noqa: E402
from vild.model import build_detector  # noqa: E402
from vild.model.methods import method_probabilities  # noqa: E402
from vild.model.postprocess import finish_detections, select_detections_batch, with_limits  # noqa: E402
from vild.model.predict import precision_context  # noqa: E402
from vild.training.presets import preset  # noqa: E402

STAGES = ("preprocess", "backbone_fpn", "rpn", "box_head", "classify", "select_nms", "mask_head", "finish")


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] load {os.getloadavg()[0]:.1f}  {msg}", flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def test_images(size: int, count: int) -> list[torch.Tensor]:
    """Structured (not noise) images: smooth gradients and blocks, values in 0..1."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(count):
        image = torch.stack([yy, xx, (yy + xx) / 2])
        for _ in range(12):
            x0, y0 = torch.randint(0, size - size // 6, (2,), generator=g).tolist()
            w, h = torch.randint(size // 16, size // 5, (2,), generator=g).tolist()
            image[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g)
        out.append(image.clamp(0, 1))
    return out


def vild_detector(size: int, device: torch.device, proposals: int = 1000):
    cfg, _ = preset("lvis-r50", model=dict(mode="vild", embed_dim=512, min_size=size, max_size=size,
                                           rpn_pre_nms_top_n_test=max(1000, proposals),
                                           rpn_post_nms_top_n_test=proposals))
    torch.manual_seed(0)
    return build_detector(cfg).eval().to(device)


def conventional_detector(size: int, num_classes: int, device: torch.device, proposals: int):
    """The same Mask R-CNN with a conventional classifier on the box head's features."""
    model = vild_detector(size, device, proposals)
    heads = model.roi_heads
    body = heads.text_head.body

    class FeaturesOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x):
            features = self.body(x)
            return features, features

    heads.text_head = FeaturesOnly()
    heads.cls_score = torch.nn.Linear(heads.box_regressor.in_features, 1 + num_classes).to(device)
    heads.class_probabilities = types.MethodType(
        lambda self, emb, img_emb, text, base: torch.softmax(self.cls_score(emb), dim=-1)[:, 1:], heads)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def stage_times(model, images, text, *, precision: str, detections: int, batched=None) -> dict:
    """One prediction (the steps of `vild.model.predict`), each stage timed after a sync."""
    device = text.device
    cfg = with_limits(model.config, max_detections=detections)
    out = {}

    def timed(name, fn):
        sync(device)
        started = time.perf_counter()
        value = fn()
        sync(device)
        out[name] = time.perf_counter() - started
        return value

    with precision_context(device, precision):
        image_list, _, original = timed("preprocess", lambda: model._preprocess(images, None))
        features = timed("backbone_fpn", lambda: model.backbone(image_list.tensors))
        proposals, scores, _ = timed("rpn", lambda: model._propose(image_list, features, None))
        sizes = image_list.image_sizes
        batch = timed("box_head", lambda: model._region_batch(image_list, features, proposals, scores, original))
    bg = model.roi_heads.background
    probs = timed("classify", lambda: [method_probabilities("vild", cfg, bg, r.embeddings, None, None, text, None)
                                       for r in batch.regions])
    picks = timed("select_nms", lambda: select_detections_batch([r.boxes.float() for r in batch.regions], probs,
                                                                cfg, batched=batched))
    with precision_context(device, precision):
        masks = timed("mask_head", lambda: model.roi_heads.predict_masks(features, [p[0] for p in picks], sizes))
    timed("finish", lambda: [finish_detections(
        b, s, lab, m[:, 0], r.embeddings[i], None, input_size=sz, padded_size=o, image_size=o, batched=batched)
        for (b, s, lab, i), m, r, sz, o in zip(picks, masks, batch.regions, sizes, original)])
    out["total"] = sum(out[s] for s in STAGES)
    return out


def median_stages(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


@torch.inference_mode()
def torchvision_paste_time(model, images, text, detections: int, repeats: int) -> float:
    """torchvision's `paste_masks_in_image` on the masks of one prediction (the paste vild used
    before `vild.model.postprocess`), for comparison with the finish stage of both branches."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    batch = model.regions(images)
    cfg = with_limits(model.config, max_detections=detections)
    bg = model.roi_heads.background
    probs = [method_probabilities("vild", cfg, bg, r.embeddings, None, None, text, None) for r in batch.regions]
    picks = select_detections_batch([r.boxes for r in batch.regions], probs, cfg)
    masks = model.roi_heads.predict_masks(batch.features, [p[0] for p in picks], batch.sizes)[0]
    return time_call(lambda: paste_masks_in_image(masks, picks[0][0], batch.original_sizes[0]), text.device, repeats)


@torch.inference_mode()
def time_call(fn, device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="plumbing: 128 px, small matrix, 1 repeat")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    p.add_argument("--size", type=int, help="image side in px (default 1024, quick 128)")
    p.add_argument("--repeats", type=int, help="timed runs per row (default 15 on CUDA, 3 on CPU, quick 1)")
    p.add_argument("--batches", help="comma-separated batch sizes (default 1,8; quick 1,2)")
    p.add_argument("--precisions", help="comma-separated (default fp32,bf16)")
    p.add_argument("--categories", help="comma-separated (default 10,1203,20000; quick 10,100)")
    p.add_argument("--detections", help="comma-separated (default 100,300; quick 20)")
    p.add_argument("--proposals", type=int, help="RPN proposals kept (default 1000, quick 100)")
    p.add_argument("--no-reference", action="store_true", help="skip torchvision's Mask R-CNN row")
    p.add_argument("--out", help="result json (default benchmarks/results/perf_inference_<device>.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # "fp32" on a GPU means TF32 matmuls/convs
        torch.backends.cudnn.allow_tf32 = True

    def ints(text, default, quick):
        return [int(x) for x in text.split(",")] if text else (quick if args.quick else default)

    size = args.size or (128 if args.quick else 1024)
    proposals = args.proposals or (100 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 15 if device.type == "cuda" else 3)
    batches = ints(args.batches, [1, 8], [1, 2])
    categories = ints(args.categories, [10, 1203, 20_000], [10, 100])
    detections = ints(args.detections, [100, 300], [20])
    precisions = args.precisions.split(",") if args.precisions else ["fp32", "bf16"]
    result: dict = {
        "benchmark": "perf_inference", "quick": args.quick,
        "command": "python benchmarks/perf_inference.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"type": device.type, "name": device_name(device), "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                   "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"image_px": size, "proposals": proposals, "repeats": repeats, "batches": batches, "categories": categories,
                     "detections": detections, "precisions": precisions,
                     "detector": "lvis-r50 preset, mode vild, random init, masks",
                     "fp32_on_cuda": "TF32 allowed"},
        "rows": [],
    }
    # written after every row too, so that a run stopped at a time limit keeps what it measured
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"perf_inference_{device.type}{'_quick' if args.quick else ''}.json")
    result["complete"] = False
    model = vild_detector(size, device, proposals)
    images = [im.to(device) for im in test_images(size, max(batches))]
    texts = {c: F.normalize(torch.randn(c, 512, generator=torch.Generator().manual_seed(c)), dim=-1).to(device)
             for c in categories}
    for batch, precision, c, d in itertools.product(batches, precisions, categories, detections):
        run = lambda: stage_times(model, images[:batch], texts[c], precision=precision, detections=d)  # noqa: E731
        run()  # warm-up
        st = median_stages([run() for _ in range(repeats)])
        row = {"batch": batch, "precision": precision, "categories": c, "detections": d, "stages_s": st,
               "ms_per_image": 1000 * st["total"] / batch, "images_per_s": batch / st["total"],
               "loadavg_1min": round(os.getloadavg()[0], 2)}
        result["rows"].append(row)
        save_json(out, result)
        log(f"batch {batch} {precision} {c} categories {d} detections: {row['ms_per_image']:.1f} ms/image  "
            + " ".join(f"{k} {1000 * v:.1f}" for k, v in st.items() if k != "total"))

    # ---- batch 1, fp32, the middle vocabulary, the most detections
    c_mid, d_max = categories[len(categories) // 2], max(detections)
    one = images[:1]
    with torch.inference_mode():
        model.config = with_limits(model.config, max_detections=d_max)
        conventional = conventional_detector(size, c_mid, device, proposals)
        conventional.config = model.config
        vild_s = time_call(lambda: model(one, texts[c_mid]), device, repeats)
        conv_s = time_call(lambda: conventional(one, texts[c_mid]), device, repeats)
    result["conventional"] = {"categories": c_mid, "detections": d_max, "vild_s": vild_s, "conventional_s": conv_s,
                              "ratio_vild_over_conventional": vild_s / conv_s}
    log(f"ViLD {vild_s:.3f} s vs linear classifier {conv_s:.3f} s: {vild_s / conv_s:.2f}x")
    del conventional
    if not args.no_reference:
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=c_mid + 1,
                                    box_score_thresh=0.0, box_detections_per_img=d_max,
                                    rpn_pre_nms_top_n_test=max(1000, proposals), rpn_post_nms_top_n_test=proposals,
                                    min_size=size, max_size=size).eval().to(device)
        ref_s = time_call(lambda: ref(one), device, repeats)
        result["reference_torchvision"] = {"model": "maskrcnn_resnet50_fpn, random init", "classes": c_mid + 1,
                                           "detections": d_max, "score_thresh": 0.0, "batch": 1,
                                           "precision": "fp32", "seconds": ref_s}
        log(f"torchvision maskrcnn_resnet50_fpn ({c_mid + 1} classes): {ref_s:.3f} s")
        del ref
    branches = {}
    for name, batched in (("batched", True), ("per_image", False)):
        runs = [stage_times(model, one, texts[c_mid], precision="fp32", detections=d_max, batched=batched)
                for _ in range(repeats + 1)][1:]
        st = median_stages(runs)
        branches[name] = {"select_nms_s": st["select_nms"], "finish_s": st["finish"]}
    branches["torchvision_paste_s"] = torchvision_paste_time(model, one, texts[c_mid], d_max, repeats)
    result["postprocess_branches"] = branches
    log(f"post-processing branches: {branches}")

    def row(b, prec, c, d):
        return next((r for r in result["rows"] if (r["batch"], r["precision"], r["categories"], r["detections"])
                     == (b, prec, c, d)), None)

    result["ratios"] = {"vild_over_conventional": vild_s / conv_s}
    lo, hi = row(1, "fp32", min(categories), d_max), row(1, "fp32", max(categories), d_max)
    if lo and hi:
        result["ratios"][f"categories_{max(categories)}_over_{min(categories)}"] = (
            hi["stages_s"]["total"] / lo["stages_s"]["total"])
    gpu = device.type == "cuda" and not args.quick
    b1, b8 = row(1, "fp32", 1203, 300), row(8, "bf16", 1203, 100)
    result["targets"] = {
        "<= 25 ms per image, batch 1, 1203 categories, 300 detections (GPU)":
            (b1["ms_per_image"] <= 25) if gpu and b1 else "not measured",
        ">= 100 images/s, batch 8, bf16, 100 detections (GPU)":
            (b8["images_per_s"] >= 100) if gpu and b8 else "not measured",
        "20000 vs 10 categories <= 1.15x (GPU)":
            (result["ratios"].get("categories_20000_over_10", 99) <= 1.15) if gpu else "not measured",
        "ViLD vs linear classifier <= 1.05x (GPU)": (vild_s / conv_s <= 1.05) if gpu else "not measured",
    }
    result["device"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["complete"] = True
    save_json(out, result)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
