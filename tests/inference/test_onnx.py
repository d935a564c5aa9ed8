"""ONNX export (`vild export`) and `OnnxDetector`: the bundled model exported once, then run by
onnxruntime and by PyTorch with two vocabularies given at run time (no second export); the
same detections as matched sets. Plus the one-line errors of bad files and bad shapes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'vild[export]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'vild[export]')")

from tests.inference.conftest import scene, write_model_folder  # noqa: E402
from vild.cli import main  # noqa: E402
from vild.errors import VildError  # noqa: E402
from vild.inference import Detector, Vocabulary  # noqa: E402
from vild.inference.onnx import OnnxDetector  # noqa: E402

BOX_PX, SCORE = 0.5, 1e-3
NEW_VOCABULARY = ["red heart", "star", "ring", "crescent moon", "tree"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from vild.export.onnx import export_model

    torch.set_num_threads(1)
    path, info, _ = export_model(None, tmp_path_factory.mktemp("onnx") / "bundled.onnx", check=False)
    return path, info


@pytest.fixture(scope="module")
def pair(exported):
    """(PyTorch Detector, OnnxDetector) of the bundled model; the ONNX one shares nothing with
    the first but the files (its teacher loads from the reference the export recorded)."""
    torch.set_num_threads(1)
    return Detector.from_pretrained(), OnnxDetector.load(exported[0], device="cpu", threads=1)


def images():
    """The bundled examples, a wide and a tall image, and one thin enough to be padded."""
    from vild.inference.registry import example_images

    return [*example_images(), scene(96, 160, 1), scene(150, 70, 2), scene(12, 180, 3)]


def matched_pairs(a, b):
    """Pairs (i, j) matching each detection of `a` to one of `b` with the same label, box
    corners within BOX_PX and score within SCORE; asserts that every one of both has a partner."""
    assert len(a) == len(b), f"{len(a)} vs {len(b)} detections"
    free = torch.ones(len(b), dtype=torch.bool)
    pairs = []
    for i in range(len(a)):
        ok = (free & (b.labels == a.labels[i]) & ((b.boxes - a.boxes[i]).abs().amax(dim=1) <= BOX_PX)
              & ((b.scores - a.scores[i]).abs() <= SCORE))
        hits = torch.where(ok)[0]
        assert hits.numel(), f"detection {i} ({a.class_names[a.labels[i]]} {a.scores[i]:.4f} " \
                             f"{a.boxes[i].tolist()}) has no partner"
        free[hits[0]] = False
        pairs.append((i, int(hits[0])))
    return pairs


@pytest.mark.parametrize("vocabulary", [None, NEW_VOCABULARY], ids=["default-24", "new-5"])
def test_onnxruntime_matches_pytorch_for_any_vocabulary(pair, vocabulary):
    torch_det, onnx_det = pair
    ims = images()
    # batch 1, as the graph runs: in a batch, PyTorch pads images to a common size, which moves
    # detections near the padded edges a little
    want = torch_det.detect(ims, vocabulary, threshold=0.05, max_detections=100, batch_size=1)
    got = onnx_det.detect(ims, vocabulary, threshold=0.05, max_detections=100)
    total = 0
    for w, g, im in zip(want, got, ims):
        assert g.image_size == w.image_size and g.class_names == w.class_names
        assert g.masks.shape == w.masks.shape and g.image_embeddings.shape == w.image_embeddings.shape
        for i, j in matched_pairs(w, g):
            assert (w.masks[i] - g.masks[j]).abs().max() < 1e-2
            assert (w.embeddings[i] - g.embeddings[j]).abs().max() < 1e-3
        total += len(w)
    names = torch_det.default_vocabulary if vocabulary is None else vocabulary
    assert want[0].class_names == tuple(names)
    assert total > 10  # the comparison saw detections, not empty lists


def test_an_unnormalised_distillation_head_exports_with_its_length(tmp_path):
    """Mode ensemble's distillation head is unnormalised by default since docs/distillation.md
    section 25: the exported graph gives PyTorch's detections, and its region embeddings keep
    their length."""
    from vild.export.onnx import export_model
    from vild.training.checkpoint import load_model, save_model

    torch.set_num_threads(1)
    folder = write_model_folder(tmp_path, image_head_output="mean")
    model = load_model(folder)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.roi_heads.image_head.projection.weight, std=0.05)  # it starts at zero
    save_model(folder, model)
    path, info, compared = export_model(str(folder), tmp_path / "mean.onnx")  # check=True: raises on a mismatch
    assert info.config.image_head_output == "mean" and compared > 0
    got = OnnxDetector.load(path, device="cpu", threads=1).detect(images()[:2], threshold=0.0, max_detections=20)
    want = Detector.from_pretrained(str(folder)).detect(images()[:2], threshold=0.0, max_detections=20, batch_size=1)
    for w, g in zip(want, got):
        lengths = w.image_embeddings.norm(dim=1)
        assert len(w) and lengths.max() - lengths.min() > 0.1  # not unit vectors
        for i, j in matched_pairs(w, g):
            assert (w.image_embeddings[i] - g.image_embeddings[j]).abs().max() < 1e-3


def test_exemplars_run_through_the_graph_without_re_export(pair):
    """An example image is one more row of the vocabulary input: the graph and PyTorch agree."""
    from vild.inference.exemplars import Exemplar
    from vild.inference.registry import example_images

    torch_det, onnx_det = pair
    example = example_images()[0]
    first = torch_det.detect(example, ["star"], threshold=0.05)[0]
    assert len(first), "the bundled example has no star to take as an exemplar"
    box = tuple(float(v) for v in first.boxes[0])
    exemplars = [Exemplar("like this", example, box)]
    ims = images()[:3]
    want = torch_det.detect(ims, ["circle"], exemplars=exemplars, threshold=0.05, batch_size=1)
    got = onnx_det.detect(ims, ["circle"], exemplars=exemplars, threshold=0.05)
    assert want[0].class_names == got[0].class_names == ("circle", "like this")
    for w, g in zip(want, got):
        matched_pairs(w, g)
    assert any((w.labels == 1).any() for w in want)  # the exemplar's row labels something


def test_export_records_what_detect_needs(exported, pair):
    path, info = exported
    _, onnx_det = pair
    assert info.method == "vild-ensemble" and info.max_detections == 100
    assert onnx_det.default_vocabulary == pair[0].default_vocabulary
    assert onnx_det.exported.teacher.endswith("teachers/shapeworld-clip")
    assert onnx_det.info()["runtime"] == "onnxruntime" and len(onnx_det.examples) == 4
    assert {i.name for i in onnx_det.session.get_inputs()} == {"image", "text_embeddings", "base_mask",
                                                               "score_threshold"}


def test_limits_of_the_graph_are_one_line_errors(pair):
    _, onnx_det = pair
    im = scene(64, 64, 0)
    with pytest.raises(VildError, match="at most 100"):
        onnx_det.detect(im, max_detections=101)
    with pytest.raises(VildError, match="exported with method 'vild-ensemble'"):
        onnx_det.detect(im, method="vild-text")
    with pytest.raises(VildError, match="attributes"):
        onnx_det.detect(im, attributes=["red"])


@pytest.mark.parametrize("shape", [(3, 7), (0, 256), (256,)])
def test_wrong_text_embedding_shape_is_one_line(pair, shape):
    _, onnx_det = pair
    c = shape[0] if len(shape) == 2 else 1
    vocab = Vocabulary(tuple(f"n{i}" for i in range(c)), torch.zeros(shape), torch.zeros(c, dtype=torch.bool))
    with pytest.raises(VildError, match=r"must be \[C, 256\] with C >= 1 for this model") as e:
        onnx_det.detect(scene(64, 64, 0), vocab)
    assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the exporter warns about itself
def test_bad_onnx_files_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(VildError, match="ONNX model not found"):
        OnnxDetector.load(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf" * 10)
    with pytest.raises(VildError, match="is not a readable ONNX model") as e:
        OnnxDetector.load(garbage)
    assert "\n" not in str(e.value)
    foreign = tmp_path / "linear.onnx"  # a valid ONNX file that vild did not write
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(foreign), dynamo=False)
    with pytest.raises(VildError, match="not a vild export"):
        OnnxDetector.load(foreign)

    code = main(["detect", "--no-progress", "--onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "ONNX model not found" in err and "Traceback" not in err


def test_detect_cli_with_onnx_and_new_names(exported, tmp_path, capsys):
    import json

    from PIL import Image

    Image.fromarray(scene(64, 96, 0)).save(tmp_path / "a.png")
    code = main(["detect", "--no-progress", "--no-draw", "--threads", "1", "--onnx", str(exported[0]),
                 "--vocab", "star,ring|circle", "--threshold", "0", "--max-detections", "10",
                 str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["model"]["runtime"] == "onnxruntime"
    assert [c["name"] for c in run["categories"]] == ["star", "ring"]
    assert run["images"][0]["detections"] == 10
    code = main(["detect", "--no-progress", "--onnx", str(exported[0]), "--precision", "bf16",
                 str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])
    assert code == 1 and "--precision bf16 does not apply" in capsys.readouterr().err


def test_export_cli_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    for argv, message in ((["--out", str(tmp_path)], "is a folder"),
                          (["--out", str(tmp_path / "no" / "m.onnx")], "does not exist"),
                          (["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")], "does not exist"),
                          (["--max-detections", "0", "--out", str(tmp_path / "m.onnx")], "must be >= 1")):
        code = main(["export", *argv])
        err = capsys.readouterr().err.strip()
        assert code == 1 and message in err and err.count("\n") == 0, err
    assert not (tmp_path / "m.onnx").exists()
