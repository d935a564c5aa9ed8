"""Detector: loading a folder, every input kind, batching, vocabularies, methods, queries,
attribute expansion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.inference.conftest import VOCAB, scene
from vild.errors import VildError, VocabularyError
from vild.inference import Detector, ImageRegions
from vild.model.outputs import Detections


def _same(a: Detections, b: Detections, *, masks=True):
    assert len(a) == len(b)
    assert torch.allclose(a.boxes, b.boxes, atol=1e-4)
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    assert torch.equal(a.labels, b.labels)
    assert a.class_names == b.class_names
    if masks and len(a):
        assert (a.masks - b.masks).abs().max() < 1e-3


def test_from_pretrained_folder(detector, model_dir):
    assert detector.default_vocabulary == VOCAB["names"]
    assert detector.methods == ("vild-text", "vild-image", "vild-ensemble", "clip", "vild-text+clip")
    assert detector.method == "vild-ensemble"
    info = detector.info()
    assert info["name"] == "tiny-ensemble" and info["mode"] == "ensemble"
    assert info["embed_dim"] == 32 and info["default_vocabulary_size"] == 3
    assert info["teacher_identity"] == detector.teacher.identity
    assert set(info["slow_methods"]) == {"clip", "vild-text+clip"}
    assert "tiny-ensemble" in repr(detector)


def test_every_input_kind_gives_the_same_detections(detector, tmp_path):
    arr = scene()
    Image.fromarray(arr).save(tmp_path / "a.png")
    ref = detector.detect(arr, threshold=0.0)
    assert isinstance(ref, list) and len(ref) == 1 and len(ref[0]) > 0
    d = ref[0]
    assert d.image_size == (64, 64) and d.masks.shape == (len(d), 64, 64)
    assert d.class_names == tuple(VOCAB["names"])
    assert d.embeddings.shape == (len(d), 32) and d.image_embeddings.shape == (len(d), 32)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    for x in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.fromarray(arr), tensor,
              (tmp_path / "a.png").read_bytes()):
        _same(detector.detect(x, threshold=0.0)[0], d)


def test_one_vs_many_images_and_batching(detector):
    a, b = scene(64, 64, 0), scene(48, 80, 1)
    one_a = detector.detect(a, threshold=0.0)[0]
    one_b = detector.detect(b, threshold=0.0)[0]
    many = detector.detect([a, b, a], threshold=0.0, batch_size=2)
    assert len(many) == 3
    assert many[1].image_size == (48, 80)
    for got, want in zip(many, (one_a, one_b, one_a)):
        _same(got, want)
    calls = []
    hook = detector.model.backbone.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        detector.detect([a, b, a, b, a], threshold=0.0, batch_size=3)
    finally:
        hook.remove()
    assert calls == [3, 2]  # one forward pass per batch of images
    stacked = detector.detect(torch.stack([torch.from_numpy(a).permute(2, 0, 1)] * 2), threshold=0.0)
    assert len(stacked) == 2
    with pytest.raises(VildError, match="no images"):
        detector.detect([])


def test_threshold_and_max_detections(detector):
    img = scene()
    all_ = detector.detect(img, threshold=0.0, max_detections=1000)[0]
    top = detector.detect(img, threshold=0.0, max_detections=3)[0]
    assert len(top) == 3
    _same(top, all_.select(torch.arange(3)))
    cut = float(all_.scores[len(all_) // 2])
    above = detector.detect(img, threshold=cut, max_detections=1000)[0]
    assert len(above) > 0 and bool((above.scores > cut).all())
    assert len(detector.detect(img, threshold=0.0, max_detections=0)[0]) == 0
    for bad in (dict(threshold=1.5), dict(threshold=-0.1), dict(max_detections=-1), dict(max_detections=2.5)):
        with pytest.raises(VildError):
            detector.detect(img, **bad)


def test_vocabulary_change_reuses_embeddings_and_never_reloads(model_dir, monkeypatch):
    import vild.inference.detector as detmod
    import vild.teacher.teacher as teachmod
    import vild.text as textmod
    import vild.training.checkpoint as modelmod  # the one model-folder reader builds the model

    calls = {"model": 0, "teacher": 0, "encode": []}  # encode: one list of entries per call
    assert not hasattr(detmod, "build_detector")  # models come only from the folder reader

    orig_build = modelmod.build_detector
    orig_load = teachmod.Teacher.load.__func__
    orig_encode = textmod.build_text_classifier

    def counting_build(cfg):
        calls["model"] += 1
        return orig_build(cfg)

    def counting_load(cls, *a, **k):
        calls["teacher"] += 1
        return orig_load(cls, *a, **k)

    def counting_encode(teacher, vocabulary, **k):
        calls["encode"].append([list(v) for v in vocabulary])
        return orig_encode(teacher, vocabulary, **k)

    monkeypatch.setattr(modelmod, "build_detector", counting_build)
    monkeypatch.setattr(teachmod.Teacher, "load", classmethod(counting_load))
    monkeypatch.setattr(textmod, "build_text_classifier", counting_encode)

    det = Detector.from_pretrained(str(model_dir))
    assert calls["model"] == 1 and calls["teacher"] == 1
    img = scene()
    det.detect(img, threshold=0.0)  # default vocabulary: the saved embeddings, nothing encoded
    assert calls["encode"] == []
    det.detect(img, ["star", "ring"], threshold=0.0)
    assert calls["encode"] == [[["star"], ["ring"]]]
    det.detect(img, ["ring", "hexagon", "star"], threshold=0.0)  # only hexagon is new
    assert calls["encode"][-1] == [["hexagon"]]
    n = len(calls["encode"])
    det.detect(img, ["hexagon", "ring"], threshold=0.0)
    det.query(det.embed(img), ["star", "hexagon"], threshold=0.0)
    assert len(calls["encode"]) == n
    assert calls["model"] == 1 and calls["teacher"] == 1


def test_default_vocabulary_embeddings_equal_a_fresh_encoding(detector):
    saved = detector.encode_vocabulary(None)
    fresh = detector.encode_vocabulary([[n, *s] for n, s in zip(VOCAB["names"], VOCAB["synonyms"])])
    assert torch.allclose(saved.embeddings, fresh.embeddings, atol=1e-5)
    assert saved.base.tolist() == [True, True, False]
    assert saved.category_ids == (1, 2, 3)
    # a user's name counts as base when it is a trained base category or one of its synonyms
    assert detector.encode_vocabulary(["disc", "star", "ring"]).base.tolist() == [True, False, False]


@pytest.mark.parametrize("method", ["vild-text", "vild-image", "vild-ensemble", "clip", "vild-text+clip"])
def test_query_equals_detect(detector, method):
    img = scene(56, 72, 3)
    regions = detector.embed(img, method=method)
    assert isinstance(regions, ImageRegions) and len(regions) > 0
    assert regions.masks.shape[0] == len(regions)
    assert bool((regions.boxes[:, 2] <= 72).all()) and bool((regions.boxes[:, 3] <= 56).all())
    vocab = ["star", "ring", "circle"]
    want = detector.detect(img, vocab, threshold=0.05, method=method)[0]
    got = detector.query(regions, vocab, threshold=0.05)
    assert len(want) > 0
    _same(got, want)
    if method in ("clip", "vild-text+clip"):
        assert len(regions) <= detector.num_crop_regions


def test_query_errors(detector):
    regions = detector.embed(scene())
    with pytest.raises(VildError, match="embed the image with"):
        detector.query(regions, ["star"], method="clip")
    with pytest.raises(VildError, match="ImageRegions"):
        detector.query("not regions", ["star"])


def test_attribute_expansion_matches_hand_computation(detector):
    from vild.model.heads import image_probabilities, text_logits


    img = scene()
    vocab, attrs = ["star", "ring"], ["red", "blue", "green"]
    regions = detector.embed(img, method="vild-ensemble")
    got = detector.query(regions, vocab, attributes=attrs, threshold=0.0, max_detections=1000)
    assert got.class_names == ("red star", "blue star", "green star", "red ring", "blue ring", "green ring")
    assert got.label_names == [got.class_names[i] for i in got.labels.tolist()]
    # by hand: Pr(v | r) = ViLD-ensemble over the vocabulary (novel: text^(1/3) image^(2/3));
    # Pr(a | r) = the same heads' softmax over the attributes alone (no background)
    cfg = detector.config
    v = detector.encode_vocabulary(vocab)
    a = detector.encode_vocabulary(attrs)
    e, ie = regions.embeddings, regions.image_embeddings
    p_text = torch.softmax(text_logits(e, v.embeddings, detector.model.roi_heads.background, cfg.temperature), -1)[:, 1:]
    p_img = image_probabilities(ie, v.embeddings, cfg.image_temperature)
    lam = cfg.ensemble_lambda
    assert not v.base.any()
    p_v = p_text ** (1 - lam) * p_img ** lam
    pa_text = torch.softmax(cfg.temperature * e @ a.embeddings.T, -1)
    pa_img = image_probabilities(ie, a.embeddings, cfg.image_temperature)
    p_a = pa_text ** (1 - lam) * pa_img ** lam
    expected = (p_v[:, :, None] * p_a[:, None, :]).reshape(len(regions), -1)
    # every detection's score is the hand-computed score of some region for its label
    for score, label in zip(got.scores.tolist(), got.labels.tolist()):
        assert float((expected[:, label] - score).abs().min()) < 1e-5
    # and the best (region, label) pair is the top detection
    best = expected.max()
    assert got.scores[0] == pytest.approx(float(best), abs=1e-5)
    assert got.class_names[int(got.labels[0])] == got.class_names[int(expected.max(0).values.argmax())]
    # detect() gives the same
    _same(detector.detect(img, vocab, attributes=attrs, threshold=0.0, max_detections=1000)[0], got)


def test_every_method_runs_and_bad_method_is_refused(detector):
    img = scene()
    for method in detector.methods:
        d = detector.detect(img, ["star", "ring"], threshold=0.0, method=method)[0]
        assert len(d) > 0 and bool((d.scores <= 1.0 + 1e-6).all())
    with pytest.raises(VildError, match="not available"):
        detector.detect(img, method="vild")
    with pytest.raises(VildError, match="not available"):
        detector.detect(img, method="nonsense")


def test_vocabulary_errors(detector):
    img = scene()
    with pytest.raises(VocabularyError, match="empty"):
        detector.detect(img, [])
    with pytest.raises(VocabularyError, match="duplicate"):
        detector.detect(img, ["star", "Star"])
    with pytest.raises(VocabularyError, match="attributes: .*duplicate"):
        detector.detect(img, ["star"], attributes=["red", "red"])
    with pytest.raises(VocabularyError, match="attributes: .*empty"):
        detector.detect(img, ["star"], attributes=[])
    with pytest.raises(VildError, match="unknown vocabulary"):
        detector.detect(img, "no-such-vocabulary")
    for bad in (123, 4.5, object(), b"star"):
        with pytest.raises(VocabularyError, match="must be a list of names"):
            detector.detect(img, vocabulary=bad)
    with pytest.raises(VocabularyError, match="attributes must be a list"):
        detector.detect(img, ["star"], attributes=7)
    assert len(detector.detect(img, vocabulary=("star", "ring"))) == 1  # any collection of names


def test_labels_are_bounded(detector, monkeypatch):
    monkeypatch.setattr(detector, "max_labels", 6)
    img = scene()
    with pytest.raises(VocabularyError, match="2 names x 4 attributes = 8 labels; the limit is 6"):
        detector.detect(img, ["star", "ring"], attributes=["red", "blue", "green", "cyan"])
    with pytest.raises(VocabularyError, match="8 labels"):
        detector.query(detector.embed(img), ["star", "ring"], attributes=["red", "blue", "green", "cyan"])
    d = detector.detect(img, ["star", "ring"], attributes=["red", "blue", "green"], threshold=0.0)[0]
    assert len(d.class_names) == 6


def test_masks_are_bounded_by_max_mask_bytes(detector, monkeypatch, caplog):
    img = scene(120, 160)
    full = detector.detect(img, threshold=0.0, max_detections=50)[0]
    assert len(full) > 3
    monkeypatch.setattr(detector, "max_mask_bytes", 3 * 120 * 160 * 4)
    with caplog.at_level("WARNING", logger="vild.inference"):
        capped = detector.detect(img, threshold=0.0, max_detections=50)[0]
    assert len(capped) == 3 and "lowered from 50 to 3" in caplog.text
    assert torch.equal(capped.labels, full.labels[:3]) and torch.allclose(capped.scores, full.scores[:3])
    q = detector.query(detector.embed(img), threshold=0.0, max_detections=50)
    assert len(q) == 3


def test_bad_devices_are_one_line(model_dir):
    with pytest.raises(VildError, match="unknown device 'bogus'"):
        Detector.from_pretrained(str(model_dir), device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(VildError, match="no CUDA GPU"):
            Detector.from_pretrained(str(model_dir), device="cuda")


def test_named_and_comma_vocabularies(detector):
    img = scene()
    d = detector.detect(img, "star, ring", threshold=0.0)[0]
    assert d.class_names == ("star", "ring")
    v = detector.encode_vocabulary("voc")
    assert len(v) == 20 and v.category_ids == tuple(range(1, 21))


@pytest.mark.parametrize("shape", [(1, 1), (2, 300), (300, 3), (1, 1000)])
def test_tiny_and_elongated_images(detector, shape):
    h, w = shape
    img = np.full((h, w, 3), 128, np.uint8)
    d = detector.detect(img, threshold=0.0)[0]
    assert d.image_size == (h, w)
    if d.masks is not None:
        assert d.masks.shape == (len(d), h, w)
    assert bool((d.boxes[:, 2] <= w + 1e-4).all()) and bool((d.boxes[:, 3] <= h + 1e-4).all())
    q = detector.query(detector.embed(img), None, threshold=0.0)
    _same(q, d)


def test_other_modes(tmp_path):
    from tests.inference.conftest import write_model_folder

    for mode, methods in (("text", ("vild-text", "clip", "vild-text+clip")),
                          ("vild", ("vild", "clip")), ("image", ("vild-image", "clip"))):
        folder = write_model_folder(tmp_path / mode, mode=mode)
        det = Detector.from_pretrained(str(folder))
        assert det.methods == methods and det.method == methods[0]
        img = scene()
        for m in methods:
            d = det.detect(img, threshold=0.0, method=m)[0]
            _same(det.query(det.embed(img, method=m), None, threshold=0.0), d)
        assert det.detect(img, threshold=0.0)[0].image_embeddings is None


def test_bf16_precision_matches_fp32(model_dir, detector):
    """bf16 autocast on the network: the same detections as fp32 within bf16's resolution
    (8 bits of mantissa: scores to ~1e-2; boxes decoded in fp32, to a fraction of a pixel)."""
    bf16 = Detector.from_pretrained(str(model_dir), precision="bf16")
    assert bf16.info()["precision"] == "bf16"
    img = scene()
    want = detector.detect(img, threshold=0.1)[0]
    got = bf16.detect(img, threshold=0.1)[0]
    assert got.boxes.dtype == torch.float32 and got.masks.dtype == torch.float32
    assert len(want) > 0
    assert not torch.equal(got.embeddings, want.embeddings)  # the network did run in bf16
    matched_fraction(got, want, box_tol=0.5, score_tol=0.02, at_least=0.8)
    with pytest.raises(VildError, match="precision"):
        Detector.from_pretrained(str(model_dir), precision="fp16")


def matched_fraction(got: Detections, want: Detections, *, box_tol: float, score_tol: float,
                     at_least: float) -> None:
    """Detections compared as sets: each wanted detection matched to an unused one with the
    same label, every box coordinate within box_tol px and the score within score_tol. Near a
    threshold or an NMS tie a tiny numeric difference may swap a detection, so `at_least` of
    the wanted ones (and of the got ones) must match, not all."""
    used = torch.zeros(len(got), dtype=torch.bool)
    matched = 0
    for i in range(len(want)):
        ok = ((got.labels == want.labels[i]) & ~used
              & ((got.boxes - want.boxes[i]).abs().amax(dim=1) <= box_tol)
              & ((got.scores - want.scores[i]).abs() <= score_tol))
        if ok.any():
            used[int(torch.where(ok)[0][0])] = True
            matched += 1
    assert matched >= at_least * len(want) and matched >= at_least * len(got), (matched, len(want), len(got))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(model_dir, detector):
    """TF32 convolutions and a different summation order: the same detections as a set, boxes
    within 0.05 px of 64 px and scores within 1e-3, not identical coordinates."""
    gpu = Detector.from_pretrained(str(model_dir), device="cuda")
    assert gpu.info()["device"].startswith("cuda")
    img = scene()
    for method in ("vild-ensemble", "vild-text+clip"):
        want = detector.detect(img, ["star", "ring"], attributes=["red", "blue"], threshold=0.05, method=method)[0]
        got = gpu.detect(img, ["star", "ring"], attributes=["red", "blue"], threshold=0.05, method=method)[0]
        assert got.boxes.device.type == "cpu"  # results always come back on the CPU
        assert len(want) > 0
        matched_fraction(got, want, box_tol=0.05, score_tol=1e-3, at_least=0.95)
        q = gpu.query(gpu.embed(img, method=method), ["star", "ring"], attributes=["red", "blue"], threshold=0.05)
        _same(q, got)
