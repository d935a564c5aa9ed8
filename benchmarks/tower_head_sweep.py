"""Tower-head recipes compared on one world: the tower's features of the region store's
proposals are read once (`vild.training.tower_head`), then one head per variant is trained
and evaluated (ViLD-image and ViLD-ensemble with the tower head, first --val-images val images).

    python benchmarks/tower_head_sweep.py --world W --teacher T --text-model TEXT --store S \\
        --variant steps=2000 --variant steps=4000 --variant fc_dims=1024,1024 \\
        --variant grid=4+rarity=0.5 --variant relational=1 --variant output=mean+loss=l2 --out R.json

A variant that changes how the tower is read (factors, box_scales, grid) reads the features
again; variants that share those settings share one read.

Choose recipes on the world the settings are chosen on (world s7), never on a reported one.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tower_rows import ValWorld, open_results, world_arguments  # noqa: E402
from vild.data.detection import DetectionDataset  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.tower_head import (  # noqa: E402
    TowerHeadConfig, cache_tower_features, tower_detector, train_tower_head)


READING_KEYS = ("factors", "box_scales", "grid")


def parse_variant(text: str) -> dict:
    """"steps=4000+lr=0.002" or "fc_dims=1024,1024" -> TowerHeadConfig overrides."""
    fields = {f.name: f for f in dataclasses.fields(TowerHeadConfig)}
    overrides = {}
    for setting in text.split("+"):
        key, _, value = setting.partition("=")
        if key not in fields or not value:
            raise SystemExit(f"bad variant {setting!r}: KEY=VALUE with KEY one of {sorted(fields)}")
        if key in ("fc_dims", "factors", "box_scales"):
            kind = int if key == "fc_dims" else float
            overrides[key] = tuple(kind(v) for v in value.split(","))
        elif fields[key].type in ("str", str):
            overrides[key] = value
        else:
            overrides[key] = (int if fields[key].type in ("int", int) else float)(value)
    return overrides


@torch.no_grad()
def embedding_norms(model, cache, rows: int = 20000) -> dict:
    """How long an unnormalised ("mean") head's embeddings are on the training proposals (every
    len(cache) // rows-th row): mean and quartiles, over proposals on a labelled base object
    (IoU >= the foreground threshold) and over the rest (background, parts, novel objects)."""
    pick = torch.arange(0, len(cache.labels), max(1, len(cache.labels) // rows))
    norms = model.roi_heads.tower_embeddings(cache.features[pick].float()).norm(dim=1)
    labelled = cache.labels[pick] > 0
    out = {}
    for name, chosen in (("labelled base", labelled), ("the rest", ~labelled)):
        values = norms[chosen]
        quartiles = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75])).tolist() if len(values) else []
        out[name] = {"proposals": int(chosen.sum()), "mean": round(float(values.mean()), 4) if len(values) else None,
                     "quartiles": [round(q, 4) for q in quartiles]}
    return out


def main() -> int:
    p = world_arguments(__doc__.split("\n")[0])
    p.add_argument("--text-model", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--variant", action="append", default=[], help="KEY=VALUE of TowerHeadConfig (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    val = ValWorld(args.world, args.teacher, args.val_images)
    base = load_model(args.text_model)
    result = open_results(args.out)
    train = DetectionDataset(val.paths["train_images"], val.paths["train_base"], region_store=str(args.store),
                             with_masks=False)
    cached_reading, cache = None, None  # one read held at a time: a 4x4 grid's features take GBs
    for text_variant in args.variant or ["steps=2000"]:
        config = TowerHeadConfig(seed=args.seed, **parse_variant(text_variant))
        model = tower_detector(base, val.teacher, config)
        reading = tuple(getattr(config, key) for key in READING_KEYS)
        if reading != cached_reading:
            cache = None
            started = time.perf_counter()
            cached_reading, cache = reading, cache_tower_features(model, train, progress=False)
            result.setdefault("seconds_features_by_reading", {})[repr(reading)] = round(
                time.perf_counter() - started, 1)
        started = time.perf_counter()
        log = train_tower_head(model, cache, config, weights=cache.rarity_weights(args.store, config.rarity),
                               progress=False)
        row = {"recipe": config.record(), "seconds_training": round(time.perf_counter() - started, 1),
               "last_loss": log[-1]["loss_distill"], "last_relational": log[-1].get("loss_relational")}
        if config.output == "mean":
            row["embedding_norm"] = embedding_norms(model, cache)
        for method in ("vild-image", "vild-ensemble"):
            row[method] = val.evaluate(model, method)
        result["rows"][text_variant] = row
        print(f"{text_variant}: ViLD-image APr {row['vild-image']['APr']:.2f}, "
              f"ensemble APr {row['vild-ensemble']['APr']:.2f}", flush=True)
        save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
