import unicodedata

import pytest

from vild.errors import VocabularyError
from vild.text.prompts import (
    SINGLE_TEMPLATE,
    article,
    format_prompt,
    needs_this_is,
    normalize_name,
    normalize_vocabulary,
    prompts_for,
    resolve_templates,
    templates_key,
    vild_templates,
)


def test_vild_templates_are_the_63_verbatim():
    t = vild_templates()
    assert len(t) == 63
    assert t[0] == "There is {article} {} in the scene."
    assert t[-1] == "a painting of a {}."
    assert all(x.count("{}") == 1 for x in t)


@pytest.mark.parametrize(
    "name,expected",
    [("apple", "an"), ("egg", "an"), ("ice cream", "an"), ("orange", "an"), ("umbrella", "an"),
     ("banana", "a"), ("hat", "a"), ("yoghurt", "a"), ("éclair", "a"), ("1 euro coin", "a")],
)
def test_article(name, expected):
    assert article(name) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("bow_(weapon)", "bow (weapon)"),
        ("Aerosol_Can", "aerosol can"),
        ("bowl/dish", "bowl or dish"),
        ("  Hot   Dog. ", "hot dog"),
        ("st._bernard", "st. bernard"),
        ("TV", "tv"),
        ("Café", "café"),
    ],
)
def test_normalize_name(raw, expected):
    assert normalize_name(raw) == expected


def test_normalize_name_unicode_composition():
    decomposed = unicodedata.normalize("NFD", "café")
    assert decomposed != "café"
    assert normalize_name(decomposed) == normalize_name("café")


@pytest.mark.parametrize("bad", ["", "   ", "_", "...", 3, None])
def test_normalize_name_rejects_empty_and_non_strings(bad):
    with pytest.raises(VocabularyError):
        normalize_name(bad)


def test_this_is_prefix_rule():
    eff = resolve_templates("vild")
    prefixed = [t for t in eff if t.startswith("This is ")]
    assert len(prefixed) == 58  # all but 2 x "There is ..." and 3 x "itap of ..."
    assert "There is {article} {} in the scene." in eff
    assert "itap of my {}." in eff
    assert "This is an embroidered {}." in eff
    assert "This is the plastic {}." in eff
    assert "This is a photo of {article} {}." in eff
    assert needs_this_is("{article} {}.")
    assert not needs_this_is("{} on a table.")
    assert not needs_this_is("another {}.")  # first *word* is tested, not the first letter
    assert not needs_this_is("A photo of {}.")  # case-sensitive, as the official code
    assert resolve_templates("vild", this_is=False) == vild_templates()


def test_prompts_for_a_name():
    prompts = prompts_for("aerosol_can")
    assert len(prompts) == 63
    assert prompts[0] == "There is an aerosol can in the scene."
    assert "This is a photo of an aerosol can." in prompts
    assert "itap of my aerosol can." in prompts
    assert "This is a painting of a aerosol can." in prompts  # verbatim template, no {article}
    assert prompts_for("Bow_(weapon)", "single") == ["This is a photo of a bow (weapon)."]
    assert prompts_for("apple", "single") == ["This is a photo of an apple."]
    assert SINGLE_TEMPLATE in vild_templates()


def test_name_with_braces_is_not_a_format_field():
    assert format_prompt("This is a photo of {article} {}.", "{x} thing") == "This is a photo of a {x} thing."


def test_custom_templates_validated():
    assert resolve_templates(["a {} on a table.", "{} in the wild"]) == (
        "This is a {} on a table.", "{} in the wild")
    for bad in (["no field"], ["{} and {}"], ["{name}"], ["{article} only"], ["{0}"], [""], [],
                ["a {}", "a {}"], ["unclosed {"]):
        with pytest.raises(VocabularyError):
            resolve_templates(bad)
    with pytest.raises(VocabularyError):
        resolve_templates("imagenet")


def test_templates_key_tracks_exact_strings_and_rule():
    k = templates_key(resolve_templates("vild"))
    assert k == templates_key(resolve_templates("vild"))
    assert k != templates_key(resolve_templates("vild", this_is=False))
    assert k != templates_key(resolve_templates("single"))
    assert templates_key(["a {}."]) != templates_key(["a {} ."])


def test_normalize_vocabulary():
    names, syn = normalize_vocabulary(["Circle", ["star", "Pentagram", "STAR"], "bow_(weapon)"])
    assert names == ["Circle", "star", "bow_(weapon)"]
    assert syn == [["circle"], ["star", "pentagram"], ["bow (weapon)"]]


@pytest.mark.parametrize(
    "vocab",
    [[], (), "circle", ["apple", "Apple"], ["hot_dog", "hot dog"], ["a/b", "a or b"],
     [["x", "y"], ["y", "x"]], [[]], ["ok", 5], ["   "]],
)
def test_bad_vocabularies(vocab):
    with pytest.raises(VocabularyError):
        normalize_vocabulary(vocab)


def test_duplicate_error_names_both_entries():
    with pytest.raises(VocabularyError, match=r"'Apple'.*'apple'|'apple'.*'Apple'"):
        normalize_vocabulary(["apple", "pear", "Apple"])
