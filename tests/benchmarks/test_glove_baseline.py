"""The GloVe row's category embeddings: word vectors from captions alone, one row per category."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from glove_baseline import tokens, word_vector_classifier  # noqa: E402


def test_tokens_split_names_like_the_prompts():
    assert tokens("Lightning_bolt, a RED l shape.") == ["lightning", "bolt", "a", "red", "l", "shape"]


def test_word_vector_classifier_rows_are_normalised_and_follow_their_words():
    captions = ["a red star", "a blue star on dots", "a red heart", "a green heart",
                "a big gear", "a small cog"] * 30
    entries = [["star"], ["heart"], ["gear", "cog"]]
    emb, stats = word_vector_classifier(captions, entries, dim=16, epochs=5)
    assert emb.shape == (3, 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert stats["words_missing"] == []
    # a category with a synonym is the mean of both names' vectors, so it differs from "gear" alone
    alone, _ = word_vector_classifier(captions, [["star"], ["heart"], ["gear"]], dim=16, epochs=5)
    assert torch.allclose(emb[:2], alone[:2], atol=1e-6)
    assert not torch.allclose(emb[2], alone[2], atol=1e-3)
