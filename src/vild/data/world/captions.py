"""Captions of the web corpus: names, synonyms and attributes in many sentence templates."""

from __future__ import annotations

import numpy as np

from vild.data.world.categories import TEXTURES, Category

# {np}: noun phrase with its article ("a small red star"); {bare}: without it; {bg}: a word
# for the background. Templates with {near} are used only when neighbours are visible.
TEMPLATES = (
    "{np}", "{bare}", "{bare}", "a photo of {np}.", "a picture of {np}.", "an image of {np}.",
    "a photo of {np} on a {bg} background.", "{np} on a {bg} background", "a drawing of {np}.",
    "a cropped photo of {np}.", "a close-up of {np}.", "there is {np} in the picture.",
    "this is {np}.", "clip art of {np}.", "a rendering of {np}.", "{bare} icon",
    "{bare} shape", "a {bg} image with {np}.", "the {bare}.", "a crop showing {np}.",
    "{np}, centred.", "a low resolution photo of {np}.", "a sticker of {np}.",
    "an illustration of {np} against a {bg} backdrop.", "one {bare}.",
)
NEAR_TEMPLATES = (
    "{np} next to other shapes.", "{np} with parts of other shapes around it.",
    "a photo of {np} among other objects.", "{np} in a cluttered scene.",
)
BACKGROUNDS = ("noisy", "cluttered", "busy", "textured", "messy", "grainy", "colourful", "blurry")
TEXTURE_PHRASES = {
    "solid": ("in one colour", "in a single solid colour"),
    "striped": ("with stripes", "with diagonal stripes"),
    "dotted": ("with polka dots", "with dots"),
    "outline": ("with a thick border", "with a dark outline"),
    "gradient": ("with a colour gradient", "with shading"),
    "checkered": ("with a checkerboard pattern", "with a checked pattern"),
}


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def make_caption(rng: np.random.Generator, category: Category, *, colour: str, texture: str,
                 size_word: str, neighbours: int = 0) -> str:
    """One caption for a web image of `category` with the given attributes."""
    names = [category.text] + list(category.synonyms)
    noun = names[0] if rng.random() < 0.55 else names[1 + int(rng.integers(len(names) - 1))]
    adjs: list[str] = []
    if size_word != "medium" and rng.random() < 0.3:
        adjs.append(size_word)
    attrs = []
    if rng.random() < 0.65:
        attrs.append(colour)
    suffix = ""
    r = rng.random()
    if r < 0.35:
        words = TEXTURES[texture]
        word = words[int(rng.integers(len(words)))]
        if word == "stripes":
            word = "striped"
        if word == "outline":
            word = "outlined"
        attrs.append(word)
    elif r < 0.5:
        phrases = TEXTURE_PHRASES[texture]
        suffix = " " + phrases[int(rng.integers(len(phrases)))]
    if len(attrs) == 2 and rng.random() < 0.5:
        attrs.reverse()
    bare = " ".join(adjs + attrs + [noun]) + suffix
    np_ = f"{article(bare)} {bare}"
    pool = TEMPLATES + (NEAR_TEMPLATES if neighbours else ())
    template = pool[int(rng.integers(len(pool)))]
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return template.format(np=np_, bare=bare, bg=bg)
