"""Named vocabularies for `vild detect --vocabulary` and `Detector.detect(vocabulary="...")`.

    shapeworld, shapeworld-alt        ShapeWorld-OV variants (built in: names + synonyms)
    coco, voc                         COCO's 80 and PASCAL VOC's 20 category names (built in)
    lvis:FILE, objects365:FILE,
    coco:FILE, voc:FILE               the categories of a user's annotation json (COCO / LVIS
                                      format; LVIS synonyms are used)
    shapeworld:DIR                    the categories of a generated world (DIR/world.json)
    FILE.json | DIR                   an annotation json or a world folder, format detected

Each resolves to entries (a list of synonym lists, first = display name) and the dataset's
category ids, so that results can be written with the dataset's own ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vild.errors import VildError

COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
COCO_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)
# PASCAL VOC's 20 classes in their official order, written as words for the text encoder.
VOC_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)
JSON_DATASETS = ("lvis", "coco", "objects365", "voc", "shapeworld")


@dataclass(frozen=True)
class NamedVocabulary:
    name: str
    entries: list[list[str]]
    category_ids: list[int]

    @property
    def names(self) -> list[str]:
        return [e[0] for e in self.entries]


def list_vocabularies() -> list[str]:
    from vild.data.world.categories import BUILTIN_VARIANTS

    shapeworld = ["shapeworld"] + [f"shapeworld-{v}" for v in BUILTIN_VARIANTS if v != "default"]
    return shapeworld + ["coco", "voc"] + [f"{d}:FILE" for d in JSON_DATASETS]


def resolve_vocabulary(spec: str) -> NamedVocabulary:
    """A vocabulary name, `DATASET:FILE` or a path -> `NamedVocabulary` (VildError if unknown)."""
    spec = str(spec).strip()
    if not spec:
        raise VildError("empty vocabulary name")
    key = spec.lower()
    if key == "shapeworld" or (key.startswith("shapeworld-") and not Path(spec).expanduser().exists()):
        return _shapeworld_variant(key.split("-", 1)[1] if "-" in key else "default", spec)
    if key == "coco":
        return NamedVocabulary("coco", [[n] for n in COCO_NAMES], list(COCO_IDS))
    if key in ("voc", "pascal-voc", "pascal_voc"):
        return NamedVocabulary("voc", [[n] for n in VOC_NAMES], list(range(1, len(VOC_NAMES) + 1)))
    if key in ("lvis", "objects365", "o365"):
        example = {"lvis": "lvis_v1_val.json"}.get(key, "zhiyuan_objv2_val.json")
        raise VildError(
            f"the {spec} vocabulary is read from its annotation json: use {key}:FILE "
            f"(e.g. {key}:{example})"
        )
    dataset, _, rest = spec.partition(":")
    if rest and dataset.lower() in JSON_DATASETS + ("o365", "pascal-voc"):
        return _from_file(Path(rest).expanduser(), dataset.lower())
    path = Path(spec).expanduser()
    if path.exists():
        return _from_file(path, None)
    raise VildError(
        f"unknown vocabulary {spec!r}: use one of {', '.join(list_vocabularies())}, "
        "a COCO/LVIS annotation json or a ShapeWorld-OV world folder"
    )


def _shapeworld_variant(variant: str, spec: str) -> NamedVocabulary:
    from vild.data.world.categories import BUILTIN_VARIANTS, load_category_specs

    if variant not in BUILTIN_VARIANTS:
        raise VildError(
            f"unknown ShapeWorld-OV variant {spec!r}: use "
            + ", ".join(["shapeworld"] + [f"shapeworld-{v}" for v in BUILTIN_VARIANTS if v != "default"])
        )
    _, specs = load_category_specs(variant)
    entries = [[s.name, *s.synonyms] for s in specs]
    name = "shapeworld" if variant == "default" else f"shapeworld-{variant}"
    return NamedVocabulary(name, entries, list(range(1, len(entries) + 1)))


def _from_file(path: Path, dataset: str | None) -> NamedVocabulary:
    from vild.io import load_json

    if path.is_dir():
        if not (path / "world.json").is_file():
            raise VildError(f"{path} is a folder without world.json (not a ShapeWorld-OV world)")
        path = path / "world.json"
    if not path.is_file():
        raise VildError(f"vocabulary file not found: {path}")
    data = load_json(path)
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not categories:
        raise VildError(f"{path} has no 'categories' list (expected a COCO/LVIS annotation json)")
    try:
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        entries, ids = [], []
        for c in ordered:
            synonyms = c.get("synonyms") or []
            if not isinstance(synonyms, list):
                raise TypeError("'synonyms' is not a list")
            entry = list(dict.fromkeys([str(c["name"]), *map(str, synonyms)]))
            entries.append(entry)
            ids.append(int(c["id"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VildError(f"{path}: malformed category entry ({e})") from None
    return NamedVocabulary(dataset or path.stem, entries, ids)
