"""`vild eval` measures what users run: for every scoring method, the detections it writes
equal `Detector.detect(..., threshold=0)` on the same images, to the last RLE count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vild
from vild.cli import main

ASSETS = Path(vild.__file__).parent / "assets"
BUNDLED = ASSETS / "models" / "shapeworld-vild-ensemble"
TEACHER = ASSETS / "teachers" / "shapeworld-clip"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vild.data.world import WorldConfig, make_world

    torch.set_num_threads(1)
    return make_world(tmp_path_factory.mktemp("w") / "world",
                      WorldConfig(seed=0, num_train=1, num_val=3, num_web=1, num_web_val=1),
                      workers=1, progress=False).root


def _eval_results(tmp_path, model, teacher, world, method, *extra) -> list[dict]:
    out = tmp_path / f"results-{method}.json"
    code = main(["eval", "--model", str(model), "--teacher", str(teacher), "--world", str(world),
                 "--method", method, "--results", str(out), "--batch-size", "2", "--threads", "1",
                 "--no-progress", *extra])
    assert code == 0
    return json.loads(out.read_text())


def _detect_results(detector, world, method) -> list[dict]:
    from vild.model.convert import detections_to_coco

    ann = json.loads((Path(world) / "val" / "annotations.json").read_text())
    cats = sorted(ann["categories"], key=lambda c: c["id"])
    vocabulary = [[c["name"], *c.get("synonyms", [])] for c in cats]
    images = ann["images"]
    dets = detector.detect([Path(world) / "val" / "images" / im["file_name"] for im in images],
                           vocabulary, threshold=0.0, max_detections=detector.config.detections_per_image,
                           method=method, batch_size=2)
    results = []
    for im, d in zip(images, dets):
        results += detections_to_coco(d, im["id"], [c["id"] for c in cats])
    return results


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert (g["image_id"], g["category_id"]) == (w["image_id"], w["category_id"])
        assert g["score"] == pytest.approx(w["score"], rel=1e-5, abs=1e-7)
        assert g["bbox"] == pytest.approx(w["bbox"], rel=1e-5, abs=1e-4)
        assert g["segmentation"] == w["segmentation"]


@pytest.mark.parametrize("method", ["vild-text", "vild-image", "vild-ensemble", "clip", "vild-text+clip"])
def test_eval_writes_what_detect_returns_bundled_model(tmp_path, world, method):
    from vild.inference import Detector

    detector = Detector.from_pretrained(str(BUNDLED))
    _assert_same(_eval_results(tmp_path, BUNDLED, TEACHER, world, method),
                 _detect_results(detector, world, method))


def _vild_mode_folder(root: Path) -> Path:
    """The bundled model as a "vild"-mode model (one head): its distillation head dropped."""
    from safetensors.torch import load_file, save_file

    folder = root / "vild-mode"
    folder.mkdir(parents=True)
    for name in ("vocabulary.json", "text_embeddings.safetensors"):
        (folder / name).write_bytes((BUNDLED / name).read_bytes())
    config = json.loads((BUNDLED / "model_config.json").read_text())
    (folder / "model_config.json").write_text(json.dumps({**config, "mode": "vild"}))
    state = load_file(str(BUNDLED / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".image_head." not in k}, str(folder / "model.safetensors"))
    spec = json.loads((BUNDLED / "detector.json").read_text())
    (folder / "detector.json").write_text(json.dumps({**spec, "teacher": str(TEACHER)}))
    return folder


def test_eval_writes_what_detect_returns_vild_mode(tmp_path, world):
    """The one method the bundled ViLD-ensemble lacks: "vild" (one head, both losses)."""
    from vild.inference import Detector

    model = _vild_mode_folder(tmp_path)
    detector = Detector.from_pretrained(str(model))
    _assert_same(_eval_results(tmp_path, model, TEACHER, world, "vild"),
                 _detect_results(detector, world, "vild"))


def test_eval_rejects_a_method_the_model_lacks(tmp_path, world, capsys):
    code = main(["eval", "--model", str(BUNDLED), "--world", str(world), "--method", "vild",
                 "--no-progress", "--teacher", str(TEACHER)])
    assert code == 1
    assert "not available" in capsys.readouterr().err


def test_eval_runs_one_forward_per_batch(world):
    from vild.evaluation.run import predict_split
    from vild.training.checkpoint import load_model, load_vocabulary

    model = load_model(BUNDLED)
    vocab, text = load_vocabulary(BUNDLED)
    calls = []
    hook = model.backbone.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        results, timing = predict_split(model, Path(world) / "val" / "images",
                                        Path(world) / "val" / "annotations.json", text,
                                        vocab["category_ids"], batch_size=2, progress=False)
    finally:
        hook.remove()
    assert calls == [2, 1] and timing["images"] == 3 and results


def test_eval_and_detect_agree_in_bf16(tmp_path, world):
    from vild.inference import Detector

    detector = Detector.from_pretrained(str(BUNDLED), precision="bf16")
    got = _eval_results(tmp_path, BUNDLED, TEACHER, world, "vild-ensemble", "--precision", "bf16")
    _assert_same(got, _detect_results(detector, world, "vild-ensemble"))
    fp32 = _eval_results(tmp_path, BUNDLED, TEACHER, world, "vild-ensemble")
    assert [r["score"] for r in got] != [r["score"] for r in fp32]  # bf16 did run


def test_eval_crop_method_without_teacher_says_so(world, capsys):
    code = main(["eval", "--model", str(BUNDLED), "--world", str(world), "--method", "clip", "--no-progress"])
    assert code == 1
    assert "give --teacher" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", ["vild-ensemble", "vild-text+clip"])
def test_cuda_eval_writes_what_cuda_detect_returns(tmp_path, world, method):
    """`vild eval --device cuda` measures the GPU path users run: the same detections as
    `Detector.detect` on the GPU (same device, same batches: scores to 1e-4, boxes to 0.01 px)."""
    from vild.inference import Detector

    detector = Detector.from_pretrained(str(BUNDLED), device="cuda")
    got = _eval_results(tmp_path, BUNDLED, TEACHER, world, method, "--device", "cuda")
    want = _detect_results(detector, world, method)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert (g["image_id"], g["category_id"]) == (w["image_id"], w["category_id"])
        assert g["score"] == pytest.approx(w["score"], rel=1e-4, abs=1e-6)
        assert g["bbox"] == pytest.approx(w["bbox"], abs=1e-2)
