"""ShapeWorld-OV: a procedural open-vocabulary detection world with a web image-caption corpus.

    from vild.data.world import make_world, load_world, WorldConfig
    world = make_world("data/world", WorldConfig(seed=0))   # or: vild make-world data/world
    world = load_world("data/world")
    world.val_annotations, world.novel_ids, world.load_web("train").images  # uint8 [N, 3, S, S]

See docs/shapeworld.md for the categories, splits and defaults.
"""

from vild.data.world.build import make_world
from vild.data.world.categories import (
    COLOURS, TEXTURES, Category, CategorySpec, build_categories, load_category_specs, resolve_novel,
)
from vild.data.world.config import WorldConfig, validate_config
from vild.data.world.layout import WebCorpus, World, image_file_name, load_web_corpus, load_world

__all__ = [
    "COLOURS", "TEXTURES", "Category", "CategorySpec", "WebCorpus", "World", "WorldConfig",
    "build_categories", "image_file_name", "load_category_specs", "load_web_corpus", "load_world", "make_world",
    "resolve_novel", "validate_config",
]
