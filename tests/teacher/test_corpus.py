"""The teacher's world readers go through the world's own `load_world`."""

from __future__ import annotations

import json

import pytest

from vild.errors import VildError
from vild.teacher.corpus import load_categories, world_colour_words


def test_categories_and_colours_come_from_world_json(tiny_world):
    info = json.loads((tiny_world / "world.json").read_text())
    info["colours"] = [{"name": "red", "rgb": [1, 0, 0]}, "teal"]
    (tiny_world / "world.json").write_text(json.dumps(info))
    assert [c["name"] for c in load_categories(tiny_world)] == [c["name"] for c in info["categories"]]
    assert world_colour_words(tiny_world) == ["red", "teal"]


def test_a_web_only_folder_has_no_colour_words_and_no_categories(tiny_world):
    (tiny_world / "world.json").unlink()
    assert world_colour_words(tiny_world) == []
    with pytest.raises(VildError, match="no world.json"):
        load_categories(tiny_world)


def test_a_world_json_without_categories_is_one_clear_error(tiny_world):
    info = json.loads((tiny_world / "world.json").read_text())
    del info["categories"]
    (tiny_world / "world.json").write_text(json.dumps(info))
    with pytest.raises(VildError, match="has no categories list"):
        load_categories(tiny_world)
