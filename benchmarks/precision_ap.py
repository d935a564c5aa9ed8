"""The bundled ShapeWorld-OV model's AP in bf16 (autocast) against fp32, same images, same path
(`vild.evaluation.evaluate_detector` -> `vild.model.predict`). Target: |bf16 - fp32| <= 0.2 AP.

    vild make-world /tmp/w16 --num-train 20 --num-val 100 --num-web 5 --num-web-val 1
    python benchmarks/precision_ap.py --world /tmp/w16 --threads 1

Writes benchmarks/results/precision_ap_<device>.json (AP in percent, ms per image, load average).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.io import save_json  # noqa: E402

MODEL = ROOT / "src" / "vild" / "assets" / "models" / "shapeworld-vild-ensemble"
KEYS = ("AP", "AP50", "APr", "APc", "APf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, help="a ShapeWorld-OV world (its val split is evaluated)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", help="result json (default benchmarks/results/precision_ap_<device>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vild.evaluation.cli import split_vocabulary
    from vild.evaluation.run import evaluate_detector
    from vild.training.checkpoint import load_model

    world = Path(args.world)
    images, annotations = world / "val" / "images", world / "val" / "annotations.json"
    model = load_model(MODEL).to(args.device)
    vocab, text, base_mask, novel_ids = split_vocabulary(MODEL, annotations, None)
    result = {
        "benchmark": "precision_ap", "command": "python benchmarks/precision_ap.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(), "model": "shapeworld-vild-ensemble (bundled)",
        "images": len(list(images.glob("*.png"))), "rows": {},
    }
    for precision in ("fp32", "bf16"):
        metrics = evaluate_detector(model, images, annotations, text.to(args.device), vocab["category_ids"],
                                    base_mask=base_mask, novel_category_ids=novel_ids,
                                    batch_size=args.batch_size, progress=False, precision=precision)
        result["rows"][precision] = {
            "mask": {k: metrics["lvis"]["segm"][k] for k in KEYS},
            "box": {k: metrics["lvis"]["bbox"][k] for k in KEYS},
            "ms_per_image": metrics["timing"]["ms_per_image"],
            "loadavg_1min": round(os.getloadavg()[0], 2),
        }
        print(precision, result["rows"][precision], flush=True)
    rows = result["rows"]
    result["bf16_minus_fp32"] = {
        kind: {k: rows["bf16"][kind][k] - rows["fp32"][kind][k] for k in KEYS} for kind in ("mask", "box")}
    result["target |bf16 - fp32| <= 0.2 AP (mask and box AP)"] = all(
        abs(result["bf16_minus_fp32"][kind]["AP"]) <= 0.2 for kind in ("mask", "box"))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"precision_ap_{args.device.split(':')[0]}.json"
    save_json(out, result)
    print(f"wrote {out}: {result['bf16_minus_fp32']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
