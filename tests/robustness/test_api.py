"""`load_image` and `Detector.detect` through the corpus: a result, or one `VildError` line."""

from __future__ import annotations

import pytest

from tests.robustness.corpus import write_corpus
from vild.errors import VildError
from vild.inference import load_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_corpus(folder)


def test_load_image_through_the_corpus(corpus):
    folder, cases = corpus
    for case in cases:
        if case.ok:
            t = load_image(folder / case.name)
            assert t.ndim == 3 and t.shape[0] == 3 and 0 <= float(t.min()) and float(t.max()) <= 1, case
        else:
            with pytest.raises(VildError) as e:
                load_image(folder / case.name)
            line = str(e.value)
            assert case.words in line and "\n" not in line and len(line) < 400, (case, line)


def test_detector_through_the_corpus(corpus, detector):
    folder, cases = corpus
    for case in cases:
        if case.ok:
            d = detector.detect(folder / case.name, threshold=0.0)[0]
            assert d.masks.shape[1:] == d.image_size, case
        else:
            with pytest.raises(VildError, match=case.words):
                detector.detect(folder / case.name)


@pytest.mark.parametrize("vocabulary, words", [
    (123, "must be a list of names"),
    ([1, 2], "must be a name or a list of synonyms"),
    ([], "empty"),
    (["x" * 10_000], "10,000 characters"),
    ([" ".join(["zq"] * 40)], "too long"),
    (["star", "Star"], "duplicate"),
])
def test_detector_vocabulary_errors_are_short(detector, corpus, vocabulary, words):
    folder, _ = corpus
    with pytest.raises(VildError) as e:
        detector.detect(folder / "rgb.png", vocabulary=vocabulary)
    assert words in str(e.value) and len(str(e.value)) < 400
