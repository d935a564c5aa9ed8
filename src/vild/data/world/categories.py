"""Categories, colours and textures of ShapeWorld-OV, as data.

A world's category set comes from a *variant*: a built-in name (`variants/<name>.json` in this
package: "default", "alt") or a path to a JSON file of the same form:

    {"name": "...", "categories": [
        {"name": "star", "synonyms": ["pentagram"], "group": "f" | "c" | "r",
         "shape": {"type": "star", "points": 5}, "def": "...",
         "rotation": 180, "flip": false, "base_rotation": 0},   # last three optional
        ...]}

(a bare list of category objects is accepted too). `group` is the designed LVIS frequency
group; rare ("r") categories are the default novel ones. `shape.type` is a key of
`vild.data.world.shapes.SHAPES`, the other `shape` keys are that builder's parameters.

Colours, sizes and textures are attributes that vary independently of the category.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from vild.errors import VildError
from vild.data.world.shapes import SHAPES, unit_shape

GROUPS = ("f", "c", "r")

# name -> RGB. Saturated or very dark/light, so objects stand out from the muted backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (35, 165, 60),
    "cyan": (30, 195, 215),
    "blue": (30, 75, 215),
    "purple": (130, 45, 180),
    "pink": (240, 110, 180),
    "brown": (125, 75, 35),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}

# texture -> words a caption may use for it
TEXTURES: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain", "filled"),
    "striped": ("striped", "stripy", "stripes"),
    "dotted": ("dotted", "polka-dot", "spotted"),
    "outline": ("outlined", "bordered", "outline"),
    "gradient": ("gradient", "shaded", "fading"),
    "checkered": ("checkered", "checked", "chequered"),
}

BUILTIN_VARIANTS = ("default", "alt")


@dataclass(frozen=True)
class CategorySpec:
    """One category as designed in a variant file (before the novel split is applied)."""

    name: str
    synonyms: tuple[str, ...]
    group: str
    shape: str
    params: dict = field(default_factory=dict, hash=False, compare=False)
    definition: str = ""
    rotation: float = 180.0
    flip: bool = False
    base_rotation: float = 0.0


@dataclass(frozen=True)
class Category:
    """A category of a generated world: LVIS id (1..C), final frequency group, novel flag."""

    id: int
    name: str
    synonyms: tuple[str, ...]
    frequency: str  # "f" | "c" | "r"
    novel: bool
    shape: str
    params: dict = field(default_factory=dict, hash=False, compare=False)
    definition: str = ""
    rotation: float = 180.0
    flip: bool = False
    base_rotation: float = 0.0
    designed_group: str = "c"

    @property
    def text(self) -> str:
        """The name as words ("lightning_bolt" -> "lightning bolt")."""
        return self.name.replace("_", " ")

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "synonyms": list(self.synonyms),
            "frequency": self.frequency,
            "novel": self.novel,
            "def": self.definition,
            "shape": {"type": self.shape, **self.params},
        }


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def load_category_specs(variant: str | Path = "default") -> tuple[str, list[CategorySpec]]:
    """A built-in variant name or a JSON file -> (variant name, validated category specs)."""
    variant_str = str(variant)
    if variant_str in BUILTIN_VARIANTS:
        text = resources.files("vild.data.world").joinpath(f"variants/{variant_str}.json").read_text("utf-8")
        source = f"built-in variant {variant_str!r}"
    else:
        path = Path(variant_str)
        if not path.is_file():
            raise VildError(
                f"--categories {variant_str!r} is neither a built-in variant "
                f"({', '.join(BUILTIN_VARIANTS)}) nor an existing JSON file"
            )
        text = path.read_text("utf-8")
        source = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise VildError(f"{source} is not valid JSON: {e}") from None
    if isinstance(data, list):
        data = {"name": Path(variant_str).stem, "categories": data}
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise VildError(f"{source}: expected a list of categories or {{'categories': [...]}}")
    specs = [_parse_spec(entry, source, i) for i, entry in enumerate(data["categories"])]
    _check_specs(specs, source)
    return str(data.get("name", variant_str)), specs


def _parse_spec(entry, source: str, index: int) -> CategorySpec:
    where = f"{source}: category #{index + 1}"
    if not isinstance(entry, dict):
        raise VildError(f"{where} is not an object")
    allowed = {"name", "synonyms", "group", "shape", "def", "rotation", "flip", "base_rotation"}
    unknown = set(entry) - allowed
    if unknown:
        raise VildError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise VildError(f"{where}: 'name' must be a non-empty string")
    synonyms = entry.get("synonyms")
    if not isinstance(synonyms, list) or not synonyms or not all(isinstance(s, str) and s.strip() for s in synonyms):
        raise VildError(f"{where} ({name}): 'synonyms' must be a non-empty list of strings")
    group = entry.get("group", "c")
    if group not in GROUPS:
        raise VildError(f"{where} ({name}): 'group' must be one of {GROUPS}, got {group!r}")
    shape = entry.get("shape")
    if isinstance(shape, str):
        shape = {"type": shape}
    if not isinstance(shape, dict) or shape.get("type") not in SHAPES:
        raise VildError(f"{where} ({name}): 'shape.type' must be one of {sorted(SHAPES)}")
    params = {k: v for k, v in shape.items() if k != "type"}
    try:
        unit_shape(shape["type"], params)
    except TypeError as e:
        raise VildError(f"{where} ({name}): bad shape parameters {params}: {e}") from None
    default = SHAPES[shape["type"]]
    return CategorySpec(
        name=name.strip(),
        synonyms=tuple(s.strip() for s in synonyms),
        group=group,
        shape=shape["type"],
        params=params,
        definition=str(entry.get("def", f"a {name} shape")),
        rotation=float(entry.get("rotation", default.rotation)),
        flip=bool(entry.get("flip", default.flip)),
        base_rotation=float(entry.get("base_rotation", 0.0)),
    )


def _check_specs(specs: list[CategorySpec], source: str) -> None:
    if len(specs) < 2:
        raise VildError(f"{source}: a world needs at least 2 categories, got {len(specs)}")
    seen: dict[str, str] = {}
    for spec in specs:
        for word in (spec.name, *spec.synonyms):
            key = _norm(word)
            if key in seen and seen[key] != spec.name:
                raise VildError(f"{source}: {word!r} names both {seen[key]!r} and {spec.name!r}")
            seen[key] = spec.name
        if _norm(spec.name) in {_norm(s) for s in spec.synonyms}:
            raise VildError(f"{source}: category {spec.name!r} lists its own name as a synonym")


def resolve_novel(specs: list[CategorySpec], novel, seed: int) -> list[str]:
    """The novel (rare) category names.

    novel: None -> the designed rare ("r") categories; an int k -> k categories drawn
    deterministically from `seed`; a list / comma-separated string of names (or synonyms).
    """
    names = [s.name for s in specs]
    if novel is None:
        return [s.name for s in specs if s.group == "r"]
    if isinstance(novel, str):
        text = novel.strip()
        if re.fullmatch(r"-?\d+", text):
            novel = int(text)
        else:
            novel = [t for t in text.split(",") if t.strip()]
    if isinstance(novel, (int, np.integer)) and not isinstance(novel, bool):
        k = int(novel)
        if k < 0:
            raise VildError(f"--novel must be >= 0, got {k}")
        if k >= len(specs):
            raise VildError(
                f"--novel {k}: asks for {k} novel categories but the world has only {len(specs)} "
                f"(at least one must stay base)"
            )
        rng = np.random.default_rng([int(seed), 0, 7])
        picked = set(rng.permutation(len(specs))[:k].tolist())
        return [n for i, n in enumerate(names) if i in picked]
    lookup: dict[str, str] = {}
    for spec in specs:
        lookup[_norm(spec.name)] = spec.name
        for s in spec.synonyms:
            lookup.setdefault(_norm(s), spec.name)
    chosen: list[str] = []
    for word in novel:
        key = _norm(str(word))
        if key not in lookup:
            raise VildError(f"--novel: unknown category {str(word).strip()!r}; known: {', '.join(names)}")
        if lookup[key] not in chosen:
            chosen.append(lookup[key])
    if len(chosen) >= len(specs):
        raise VildError(f"--novel names all {len(specs)} categories; at least one must stay base")
    return [n for n in names if n in chosen]  # in category order


def build_categories(specs: list[CategorySpec], novel_names: list[str]) -> list[Category]:
    """Final categories with ids 1..C. Novel -> "r"; a base category keeps "f" if designed
    frequent, otherwise it is "c" (so a designed-rare category made base becomes common)."""
    novel_set = set(novel_names)
    out = []
    for i, s in enumerate(specs):
        novel = s.name in novel_set
        freq = "r" if novel else ("f" if s.group == "f" else "c")
        out.append(Category(
            id=i + 1, name=s.name, synonyms=s.synonyms, frequency=freq, novel=novel, shape=s.shape,
            params=dict(s.params), definition=s.definition, rotation=s.rotation, flip=s.flip,
            base_rotation=s.base_rotation, designed_group=s.group,
        ))
    return out


def colours_json() -> list[dict]:
    return [{"name": n, "rgb": list(rgb)} for n, rgb in COLOURS.items()]


def textures_json() -> list[dict]:
    return [{"name": n, "words": list(w)} for n, w in TEXTURES.items()]
