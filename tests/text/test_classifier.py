"""build_text_classifier: the ViLD recipe, synonyms, cache behaviour, corruption, bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from vild.errors import VildError, VocabularyError
from vild.text import TextClassifier, build_text_classifier
from vild.text.cache import MAX_SHARDS, EmbeddingCache, default_cache_dir


def _hand_name_embedding(teacher, name_prompts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        feats = teacher.model.encode_text(teacher.tokenizer(name_prompts)).float()
    per_prompt = feats / feats.norm(dim=-1, keepdim=True)
    mean = per_prompt.mean(dim=0)
    return mean / mean.norm()


def _vild_prompts(name_words: str, art: str) -> list[str]:
    """The 63 prompts written out by hand from the template file (independent of prompts.py)."""
    from importlib import resources

    lines = resources.files("vild.text").joinpath("vild_prompt_templates.txt").read_text().splitlines()
    out = []
    for line in lines:
        p = line.replace("{article}", art).replace("{}", name_words)
        if line.startswith(("a ", "an ", "the ")):
            p = "This is " + p
        out.append(p)
    return out


def test_matches_hand_computation_with_synonyms(tiny_teacher, cache_dir):
    clf = build_text_classifier(
        tiny_teacher, ["Apple", ["bow_(weapon)", "Long/Bow"], "egg"], cache_dir=cache_dir
    )
    apple = _hand_name_embedding(tiny_teacher, _vild_prompts("apple", "an"))
    bow = _hand_name_embedding(tiny_teacher, _vild_prompts("bow (weapon)", "a"))
    longbow = _hand_name_embedding(tiny_teacher, _vild_prompts("long or bow", "a"))
    egg = _hand_name_embedding(tiny_teacher, _vild_prompts("egg", "an"))
    syn = (bow + longbow) / 2
    expected = torch.stack([apple, syn / syn.norm(), egg])
    assert clf.names == ["Apple", "bow_(weapon)", "egg"]
    assert clf.synonyms == [["apple"], ["bow (weapon)", "long or bow"], ["egg"]]
    assert clf.embeddings.shape == (3, 16) and clf.embeddings.dtype == torch.float32
    assert torch.allclose(clf.embeddings, expected, atol=1e-5)
    assert torch.allclose(clf.embeddings.norm(dim=1), torch.ones(3), atol=1e-6)
    assert clf.teacher_identity == tiny_teacher.identity
    assert not clf.embeddings.requires_grad


def test_single_template_mode(tiny_teacher):
    clf = build_text_classifier(tiny_teacher, ["apple", "pear"], templates="single", use_cache=False)
    expected = _hand_name_embedding(tiny_teacher, ["This is a photo of an apple."])
    assert torch.allclose(clf.embeddings[0], expected, atol=1e-5)
    custom = build_text_classifier(tiny_teacher, ["apple"], templates=["{} on a table."], use_cache=False)
    assert torch.allclose(custom.embeddings[0], _hand_name_embedding(tiny_teacher, ["apple on a table."]), atol=1e-5)


def test_cache_hit_encodes_only_new_names(tiny_teacher, cache_dir, count_encoded):
    first = build_text_classifier(tiny_teacher, ["circle", "square", ["star", "pentagram"]], cache_dir=cache_dir)
    assert count_encoded["prompts"] == 4 * 63
    count_encoded["prompts"] = 0
    second = build_text_classifier(tiny_teacher, ["Square", "triangle", "star"], cache_dir=cache_dir)
    assert count_encoded["prompts"] == 63  # only "triangle"
    count_encoded["prompts"] = 0
    again = build_text_classifier(tiny_teacher, ["circle", "square", ["star", "pentagram"]], cache_dir=cache_dir)
    assert count_encoded["prompts"] == 0
    assert torch.equal(again.embeddings, first.embeddings)
    fresh = build_text_classifier(tiny_teacher, ["Square", "triangle", "star"], use_cache=False)
    assert torch.allclose(second.embeddings, fresh.embeddings, atol=1e-6)
    assert torch.allclose(second.embeddings[0], first.embeddings[1], atol=0)


def test_cache_is_keyed_by_templates_teacher_and_precision(tiny_teacher, models, cache_dir, count_encoded):
    build_text_classifier(tiny_teacher, ["circle"], cache_dir=cache_dir)
    build_text_classifier(tiny_teacher, ["circle"], templates="single", cache_dir=cache_dir)
    build_text_classifier(tiny_teacher, ["circle"], this_is=False, cache_dir=cache_dir)
    other = models.teacher(models.tiny_clip(seed=11))
    assert other.identity != tiny_teacher.identity
    build_text_classifier(other, ["circle"], cache_dir=cache_dir)
    assert count_encoded["prompts"] == 63 + 1 + 63 + 63
    count_encoded["prompts"] = 0
    build_text_classifier(tiny_teacher, ["circle"], cache_dir=cache_dir, precision="bf16")
    assert count_encoded["prompts"] == 63


def _shards(cache_dir):
    return sorted(cache_dir.rglob("shard-*.safetensors"))


def _corrupt_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_garbage(path):
    path.write_bytes(os.urandom(200))


def _corrupt_flip_value(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x55  # inside the tensor data: only the checksum notices
    path.write_bytes(bytes(data))


def _corrupt_empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_garbage, _corrupt_flip_value, _corrupt_empty])
def test_corrupt_cache_file_is_discarded_and_rebuilt(tiny_teacher, cache_dir, count_encoded, corrupt, caplog):
    vocab = ["circle", "square"]
    good = build_text_classifier(tiny_teacher, vocab, cache_dir=cache_dir)
    (shard,) = _shards(cache_dir)
    corrupt(shard)
    count_encoded["prompts"] = 0
    with caplog.at_level("WARNING", logger="vild.text"):
        rebuilt = build_text_classifier(tiny_teacher, vocab, cache_dir=cache_dir)
    assert count_encoded["prompts"] == 2 * 63
    assert "discarding corrupt" in caplog.text
    assert torch.allclose(rebuilt.embeddings, good.embeddings, atol=1e-6)
    count_encoded["prompts"] = 0
    build_text_classifier(tiny_teacher, vocab, cache_dir=cache_dir)  # the rebuilt cache is good
    assert count_encoded["prompts"] == 0


def _cache_for(teacher, cache_dir):
    from vild.text.classifier import cache_key
    from vild.text.prompts import resolve_templates

    key, _ = cache_key(resolve_templates("vild"), teacher.tokenizer, "fp32")
    return EmbeddingCache(cache_dir, teacher.identity, key, dim=16)


@pytest.mark.parametrize(
    "values,names",
    [
        (torch.full((1, 16), float("nan")), ["circle"]),  # NaN with a valid checksum
        (F.normalize(torch.randn(1, 8), dim=1), ["circle"]),  # wrong dimension
        (torch.randn(1, 16) * 3, ["circle"]),  # not normalised
        (F.normalize(torch.randn(2, 16), dim=1), ["circle", "circle"]),  # repeated name
        (F.normalize(torch.randn(1, 16), dim=1).double(), ["circle"]),  # wrong dtype
    ],
)
def test_well_formed_but_wrong_entries_are_not_trusted(tiny_teacher, cache_dir, count_encoded, values, names):
    cache = _cache_for(tiny_teacher, cache_dir)
    from safetensors.torch import save

    from vild.io import atomic_write_bytes
    from vild.text.cache import FORMAT, _digest

    names_json = json.dumps(names)
    meta = {"format": FORMAT, "names": names_json, "sha256": _digest(names_json, values)}
    atomic_write_bytes(cache.dir / "shard-planted.safetensors", save({"embeddings": values}, metadata=meta))
    clf = build_text_classifier(tiny_teacher, ["circle"], cache_dir=cache_dir)
    assert count_encoded["prompts"] == 63
    assert not (cache.dir / "shard-planted.safetensors").exists()
    assert bool(torch.isfinite(clf.embeddings).all())
    ref = build_text_classifier(tiny_teacher, ["circle"], use_cache=False)
    assert torch.allclose(clf.embeddings, ref.embeddings, atol=1e-6)


def test_partial_writes_are_never_read(tiny_teacher, cache_dir, count_encoded):
    build_text_classifier(tiny_teacher, ["circle"], cache_dir=cache_dir)
    (shard,) = _shards(cache_dir)
    # what a writer killed mid-write leaves: a hidden temp file next to the shards
    (shard.parent / ".shard-deadbeef.safetensors.1234.tmp").write_bytes(shard.read_bytes()[:50])
    count_encoded["prompts"] = 0
    build_text_classifier(tiny_teacher, ["circle"], cache_dir=cache_dir)
    assert count_encoded["prompts"] == 0


def test_many_shards_are_merged(tiny_teacher, cache_dir):
    for i in range(MAX_SHARDS + 2):
        build_text_classifier(tiny_teacher, [f"thing {i}"], templates="single", cache_dir=cache_dir)
    assert len(_shards(cache_dir)) <= MAX_SHARDS
    cache_files = _shards(cache_dir)
    cache = EmbeddingCache(cache_files[0].parent.parent.parent, cache_files[0].parent.parent.name,
                           cache_files[0].parent.name)
    assert set(cache.load()) == {f"thing {i}" for i in range(MAX_SHARDS + 2)}


def test_default_cache_dir_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VILD_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "text"
    monkeypatch.delenv("VILD_CACHE_DIR")
    assert default_cache_dir() == __import__("pathlib").Path.home() / ".cache" / "vild" / "text"


def test_default_cache_location_is_used(tiny_teacher, monkeypatch, tmp_path):
    monkeypatch.setenv("VILD_CACHE_DIR", str(tmp_path))
    build_text_classifier(tiny_teacher, ["circle"], templates="single")
    assert list((tmp_path / "text").rglob("shard-*.safetensors"))


def test_bad_inputs(tiny_teacher, cache_dir):
    with pytest.raises(VocabularyError, match="empty"):
        build_text_classifier(tiny_teacher, [], cache_dir=cache_dir)
    with pytest.raises(VocabularyError, match="duplicate"):
        build_text_classifier(tiny_teacher, ["Hot_Dog", "hot dog"], cache_dir=cache_dir)
    long_name = "very " * 80 + "long thing"
    with pytest.raises(VocabularyError, match=r"category 'ok_name_too'.*too long.*context is 77"):
        build_text_classifier(tiny_teacher, ["fine", ["ok_name_too", long_name]], cache_dir=cache_dir)
    with pytest.raises(VildError, match="precision"):
        build_text_classifier(tiny_teacher, ["fine"], precision="fp16", cache_dir=cache_dir)
    assert not _shards(cache_dir)  # nothing was cached by failed builds


def test_errors_about_huge_names_stay_short(tiny_teacher, cache_dir):
    from vild.errors import NameTooLongError

    huge = "x" * 10_000
    with pytest.raises(NameTooLongError) as e:
        build_text_classifier(tiny_teacher, [huge], cache_dir=cache_dir)
    assert len(str(e.value)) < 300 and "10,000 characters" in str(e.value)
    with pytest.raises(VocabularyError) as e:
        build_text_classifier(tiny_teacher, [huge, huge.upper()], cache_dir=cache_dir)
    assert "duplicate" in str(e.value) and len(str(e.value)) < 300


def test_non_ascii_names_encode(tiny_teacher, cache_dir):
    vocab = ["café", "东京塔", "Ölkanne", "🍎", "naïve_bayes"]
    clf = build_text_classifier(tiny_teacher, vocab, cache_dir=cache_dir)
    assert clf.names == vocab
    assert bool(torch.isfinite(clf.embeddings).all())
    sims = clf.embeddings @ clf.embeddings.T
    assert float((sims - torch.eye(5)).abs().max()) > 1e-4  # distinct rows
    assert float(sims.triu(1).max()) < 1 - 1e-6
    again = build_text_classifier(tiny_teacher, vocab, cache_dir=cache_dir)  # names round-trip the cache
    assert torch.equal(again.embeddings, clf.embeddings)


def test_nan_from_model_is_an_error_and_not_cached(tiny_teacher, cache_dir, monkeypatch):
    from vild.text.encode import TextEncoder

    def nan_encode(self, tokens, **kwargs):
        return torch.full((tokens.shape[0], 16), float("nan"))

    monkeypatch.setattr(TextEncoder, "encode_tokens", nan_encode)
    with pytest.raises(VildError, match="NaN"):
        build_text_classifier(tiny_teacher, ["circle"], cache_dir=cache_dir)
    assert not _shards(cache_dir)


def test_progress_bar_reports_prompts_per_second(tiny_teacher, capsys):
    build_text_classifier(tiny_teacher, ["circle", "square"], use_cache=False, progress=True)
    err = capsys.readouterr().err
    assert "prompt/s" in err and "126/126" in err
    build_text_classifier(tiny_teacher, ["circle", "square"], use_cache=False, progress=False)
    assert capsys.readouterr().err == ""


def test_save_and_load_round_trip(tiny_teacher, tmp_path):
    clf = build_text_classifier(tiny_teacher, ["Apple", ["bow_(weapon)", "bow"], "東京"], use_cache=False)
    path = tmp_path / "clf.safetensors"
    clf.save(path)
    back = TextClassifier.load(path)
    assert torch.equal(back.embeddings, clf.embeddings)
    assert back.names == clf.names and back.synonyms == clf.synonyms
    assert back.teacher_identity == clf.teacher_identity and back.templates_key == clf.templates_key
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(VildError, match="corrupt"):
        TextClassifier.load(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(VildError):
        TextClassifier.load(path)
    with pytest.raises(VildError, match="not found"):
        TextClassifier.load(tmp_path / "missing.safetensors")


def test_text_classifier_validates():
    with pytest.raises(VildError):
        TextClassifier(embeddings=torch.ones(2, 4), names=["a", "b"])  # not normalised
    with pytest.raises(VildError):
        TextClassifier(embeddings=F.normalize(torch.ones(2, 4), dim=1), names=["a"])
    clf = TextClassifier(embeddings=F.normalize(torch.ones(2, 4), dim=1), names=["a", "b"])
    assert len(clf) == 2 and clf.dim == 4
