"""The tower-head rows against the issue-14 targets, per world and seed, as a markdown table.

    python benchmarks/tower_summary.py   # reads benchmarks/results/tower{,-vild}/<world>/shapeworld.json

Ratios are to the same run's ViLD-text row and to CLIP on crops of the same ViLD-text model's
regions (benchmarks/results/teacher_trunk/rows_<world>_seed<S>.json, section 17's runs). The
second table is ViLD's one head on the tower (the "ViLD, tower head" row; section 19), from its
own runs (`--rows text tower-vild --results benchmarks/results/tower-vild/<world>`). The third
is every tower row at the 4x4 grid (section 20), from one run per world that also scores CLIP
on crops (`--rows clip text tower-image tower-vild tower-ensemble --results
benchmarks/results/tower-grid4/<world>`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORLDS = ("default", "s7", "s11", "s13")


def per_seed(folder: str, world: str) -> list[dict]:
    """Each seed's rows of benchmarks/results/<folder>/<world>/shapeworld.json (none if absent)."""
    path = RESULTS / folder / world / "shapeworld.json"
    return [entry["rows"] for entry in json.loads(path.read_text())["per_seed"]] if path.is_file() else []


def rows(world: str) -> list[dict]:
    out = []
    for seed, r in enumerate(per_seed("tower", world)):
        clip_file = RESULTS / "teacher_trunk" / f"rows_{world}_seed{seed}.json"
        clip = json.loads(clip_file.read_text())["rows"]["CLIP on cropped regions"]["APr"] if clip_file.is_file() else None
        text, image, ens = r["ViLD-text"], r["ViLD-image, tower head"], r["ViLD-ensemble, tower head"]
        out.append({"world": world, "seed": seed, "text": text["APr"], "text_AP": text["AP"], "clip": clip,
                    "image": image["APr"], "ensemble": ens["APr"], "ensemble_AP": ens["AP"],
                    "ms": ens["ms_per_image"]})
    return out


def vild_rows(world: str) -> list[dict]:
    return [{"world": world, "seed": seed, "text": r["ViLD-text"]["APr"], "text_AP": r["ViLD-text"]["AP"],
             "vild": r["ViLD, tower head"]["APr"], "vild_AP": r["ViLD, tower head"]["AP"],
             "ms": r["ViLD, tower head"]["ms_per_image"]}
            for seed, r in enumerate(per_seed("tower-vild", world))]


def vild_table() -> list[str]:
    lines = ["| world, seed | ViLD-text APr (AP) | ViLD, tower head APr (AP) | / ViLD-text | ms per image |",
             "|---|---|---|---|---|"]
    for world in WORLDS:
        found = vild_rows(world)
        for r in found:
            lines.append(f"| {r['world']}, {r['seed']} | {r['text']:.1f} ({r['text_AP']:.1f}) | "
                         f"{r['vild']:.1f} ({r['vild_AP']:.1f}) | {r['vild'] / r['text']:.2f}x | {r['ms']:.0f} |")
        if found:
            text, vild = (sum(r[k] for r in found) / len(found) for k in ("text", "vild"))
            lines.append(f"| {world}, mean | {text:.1f} | {vild:.1f} | {vild / text:.2f}x | |")
    return lines


def grid4_table() -> list[str]:
    lines = ["| world, seed | ViLD-text APr (AP) | ViLD-ensemble, tower head APr (AP) | / ViLD-text | "
             "ViLD, tower head APr (AP) | / ViLD-text | ViLD-image, tower head APr | CLIP on crops APr | / CLIP |",
             "|---|---|---|---|---|---|---|---|---|"]
    for world in WORLDS:
        found = per_seed("tower-grid4", world)
        for seed, r in enumerate(found):
            text, ens, vild = r["ViLD-text"], r["ViLD-ensemble, tower head"], r["ViLD, tower head"]
            image, clip = r["ViLD-image, tower head"]["APr"], r["CLIP on cropped regions"]["APr"]
            lines.append(f"| {world}, {seed} | {text['APr']:.1f} ({text['AP']:.1f}) | {ens['APr']:.1f} ({ens['AP']:.1f}) | "
                         f"{ens['APr'] / text['APr']:.2f}x | {vild['APr']:.1f} ({vild['AP']:.1f}) | "
                         f"{vild['APr'] / text['APr']:.2f}x | {image:.1f} | {clip:.1f} | {image / clip:.3f}x |")
        if len(found) > 1:
            mean = {k: sum(r[k]["APr"] for r in found) / len(found) for k in (
                "ViLD-text", "ViLD-ensemble, tower head", "ViLD, tower head", "ViLD-image, tower head",
                "CLIP on cropped regions")}
            text = mean["ViLD-text"]
            lines.append(f"| {world}, mean | {text:.1f} | {mean['ViLD-ensemble, tower head']:.1f} | "
                         f"{mean['ViLD-ensemble, tower head'] / text:.2f}x | {mean['ViLD, tower head']:.1f} | "
                         f"{mean['ViLD, tower head'] / text:.2f}x | {mean['ViLD-image, tower head']:.1f} | "
                         f"{mean['CLIP on cropped regions']:.1f} | "
                         f"{mean['ViLD-image, tower head'] / mean['CLIP on cropped regions']:.3f}x |")
    return lines


def main() -> int:
    lines = ["| world, seed | ViLD-text APr (AP) | ViLD-ensemble, tower head APr (AP) | / ViLD-text | "
             "ViLD-image, tower head APr | CLIP on crops APr | / CLIP | ms per image |",
             "|---|---|---|---|---|---|---|---|"]
    for world in WORLDS:
        for r in rows(world):
            clip = "-" if r["clip"] is None else f"{r['clip']:.1f}"
            over_clip = "-" if r["clip"] is None else f"{r['image'] / r['clip']:.3f}x"
            lines.append(f"| {r['world']}, {r['seed']} | {r['text']:.1f} ({r['text_AP']:.1f}) | "
                         f"{r['ensemble']:.1f} ({r['ensemble_AP']:.1f}) | {r['ensemble'] / r['text']:.2f}x | "
                         f"{r['image']:.1f} | {clip} | {over_clip} | {r['ms']:.0f} |")
    print("\n".join(lines + [""] + vild_table() + [""] + grid4_table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
