"""The model registry, the bundled model, and model folders with missing or mismatched files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from tests.inference.conftest import scene
from vild.errors import VildError, WeightsUnavailableError
from vild.inference import Detector
from vild.inference.bundle import bundle_model
from vild.inference.registry import list_models, resolve


def _one_line(e) -> str:
    text = str(e.value)
    assert text and "\n" not in text
    return text


@pytest.fixture
def copy(model_dir, tmp_path):
    """A private copy of the tiny model folder and its teacher (root/model, root/teacher)."""
    root = tmp_path / "copy"
    shutil.copytree(model_dir.parent, root)
    return root / "model"


def test_bundled_model_not_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("VILD_ASSETS_DIR", str(tmp_path / "assets"))
    with pytest.raises(WeightsUnavailableError) as e:
        Detector.from_pretrained()
    msg = _one_line(e)
    assert "bundled model 'shapeworld-vild-ensemble' is not installed" in msg
    rows = {r["name"]: r for r in list_models()}
    assert rows["shapeworld-vild-ensemble"]["default"] and not rows["shapeworld-vild-ensemble"]["available"]


def test_bundle_then_load_by_default(model_dir, tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    Image.fromarray(scene()).save(tmp_path / "example-1.png")
    with pytest.raises(VildError, match="MiB limit"):
        bundle_model(model_dir, model_dir.parent / "teacher", assets=assets, limit_bytes=1000)
    folder = bundle_model(model_dir, model_dir.parent / "teacher", examples=[tmp_path / "example-1.png"],
                          assets=assets)
    assert folder == assets / "models" / "shapeworld-vild-ensemble"
    meta = json.loads((folder / "detector.json").read_text())
    assert meta["teacher"] == "../../teachers/shapeworld-clip"
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert size < 30 * 2**20
    monkeypatch.setenv("VILD_ASSETS_DIR", str(assets))
    det = Detector.from_pretrained()
    assert det.name == "shapeworld-vild-ensemble"
    assert [p.name for p in det.examples] == ["example-1.png"]
    assert det.default_vocabulary == ["circle", "square", "star"]
    assert det.info()["teacher_identity"] == meta["teacher_identity"]
    assert len(det.detect(det.examples[0], threshold=0.0)[0]) > 0
    assert {r["name"]: r for r in list_models()}["shapeworld-vild-ensemble"]["available"]


def test_bundle_in_half_precision(model_dir, tmp_path, monkeypatch, detector):
    from safetensors.torch import load_file

    assets = tmp_path / "assets"
    folder = bundle_model(model_dir, model_dir.parent / "teacher", assets=assets, half=True)
    weights = load_file(str(folder / "model.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    full = sum(p.stat().st_size for p in model_dir.parent.rglob("*.safetensors"))
    half = sum(p.stat().st_size for p in assets.rglob("*.safetensors"))
    assert half < 0.6 * full
    monkeypatch.setenv("VILD_ASSETS_DIR", str(assets))
    det = Detector.from_pretrained()
    assert det.teacher.identity != detector.teacher.identity  # the rounded weights, recorded as such
    img = scene()
    a = det.detect(img, threshold=0.1, method="vild-text")[0]
    b = detector.detect(img, threshold=0.1, method="vild-text")[0]
    assert len(a) > 0 and float(a.scores[0]) == pytest.approx(float(b.scores[0]), abs=1e-2)


@pytest.mark.parametrize("name, preset", [("vild-r50-vitb32", "lvis-r50"), ("vild-r152-vitb32", "lvis-r152")])
def test_real_world_entries_need_weights(name, preset, monkeypatch, copy):
    env = "VILD_MODEL_" + name.upper().replace("-", "_")
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(WeightsUnavailableError) as e:
        Detector.from_pretrained(name)
    msg = _one_line(e)
    assert env in msg and f"--preset {preset}" in msg and "ViT-B-32:openai" in msg
    monkeypatch.setenv(env, str(copy.parent / "nowhere"))
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        Detector.from_pretrained(name)
    monkeypatch.setenv(env, str(copy))  # a folder, but not an R50/R152 ViT-B/32 model
    with pytest.raises(VildError) as e:
        Detector.from_pretrained(name)
    assert "backbone='tiny'" in _one_line(e)
    with pytest.raises(VildError, match="backbone"):
        Detector.from_pretrained(name, weights=str(copy))


def test_real_world_entry_resolves_with_official_teacher(tmp_path):
    folder = tmp_path / "r50"
    folder.mkdir()
    (folder / "model_config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    resolved = resolve("vild-r50-vitb32", weights=str(folder))
    assert resolved.teacher == "ViT-B-32:openai"
    assert resolved.expected == {"backbone": "resnet50", "embed_dim": 512}
    assert resolved.default_vocabulary == "coco"


def test_unknown_names(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="unknown model 'nonsense'"):
        Detector.from_pretrained("nonsense")
    with pytest.raises(WeightsUnavailableError, match="ORG/REPO"):
        Detector.from_pretrained("hf-hub:no-slash")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(WeightsUnavailableError, match="is a file"):
        Detector.from_pretrained(str(tmp_path / "file.txt"))


def _break(copy, kind):
    model = copy
    if kind == "no-weights":
        (model / "model.safetensors").unlink()
        return "model.safetensors missing"
    if kind == "no-config":
        (model / "model_config.json").unlink()
        return "model_config.json missing"
    if kind == "corrupt-weights":
        (model / "model.safetensors").write_bytes(b"\x00" * 100)
        return "not a readable safetensors"
    if kind == "mismatched-weights":
        cfg = json.loads((model / "model_config.json").read_text())
        cfg["fpn_channels"] = 16
        (model / "model_config.json").write_text(json.dumps(cfg))
        return "does not match model_config.json"
    if kind == "bad-config-json":
        (model / "model_config.json").write_text("{not json")
        return "not valid JSON"
    if kind == "bad-config-value":
        cfg = json.loads((model / "model_config.json").read_text())
        cfg["mode"] = "bogus"
        (model / "model_config.json").write_text(json.dumps(cfg))
        return "not a valid model config"
    if kind == "unknown-config-field":
        cfg = json.loads((model / "model_config.json").read_text())
        cfg["colour"] = "blue"
        (model / "model_config.json").write_text(json.dumps(cfg))
        return "unknown ViLDConfig fields"
    if kind == "no-embeddings":
        (model / "text_embeddings.safetensors").unlink()
        return "has vocabulary.json but no text_embeddings.safetensors"
    if kind == "embedding-rows":
        from safetensors.torch import save_file

        save_file({"embeddings": torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)},
                  str(model / "text_embeddings.safetensors"))
        return "rows for 3 names"
    if kind == "embedding-dim":
        from safetensors.torch import save_file

        save_file({"embeddings": torch.randn(3, 8)}, str(model / "text_embeddings.safetensors"))
        return "8-d, the model is 32-d"
    if kind == "bad-vocabulary-json":
        (model / "vocabulary.json").write_text("[1, 2")
        return "vocabulary.json is not valid JSON"
    if kind == "teacher-identity":
        meta = json.loads((model / "detector.json").read_text())
        meta["teacher_identity"] = "0123456789abcdef"
        (model / "detector.json").write_text(json.dumps(meta))
        return "is not the teacher model tiny-ensemble was trained with"
    if kind == "teacher-missing":
        shutil.rmtree(model.parent / "teacher")
        return "does not exist"
    if kind == "teacher-unrecorded":
        (model / "detector.json").unlink()
        vocab = json.loads((model / "vocabulary.json").read_text())
        del vocab["teacher"]
        (model / "vocabulary.json").write_text(json.dumps(vocab))
        return "does not say which teacher"
    if kind == "teacher-stale-path":
        (model / "detector.json").unlink()
        vocab = json.loads((model / "vocabulary.json").read_text())
        vocab["teacher"]["name"] = "runs/old/teacher"
        (model / "vocabulary.json").write_text(json.dumps(vocab))
        return "trained with teacher 'runs/old/teacher', which is not found"
    if kind == "bad-detector-json":
        (model / "detector.json").write_text('{"format": "vild-detector/99"}')
        return "unknown format"
    raise AssertionError(kind)


KINDS = ["no-weights", "no-config", "corrupt-weights", "mismatched-weights", "bad-config-json",
         "bad-config-value", "unknown-config-field", "no-embeddings", "embedding-rows", "embedding-dim",
         "bad-vocabulary-json", "teacher-identity", "teacher-missing", "teacher-unrecorded",
         "teacher-stale-path", "bad-detector-json"]


@pytest.mark.parametrize("kind", KINDS)
def test_broken_model_folders(copy, kind):
    expected = _break(copy, kind)
    with pytest.raises(VildError) as e:
        Detector.from_pretrained(str(copy))
    assert expected in _one_line(e)


def test_teacher_override_and_folder_without_detector_json(copy, model_dir):
    (copy / "detector.json").unlink()  # falls back to vocabulary.json's teacher (absolute path)
    det = Detector.from_pretrained(str(copy))
    assert det.teacher_spec == str((model_dir.parent / "teacher").resolve())
    det2 = Detector.from_pretrained(str(copy), teacher=str(copy.parent / "teacher"))
    assert det2.info()["teacher"] == str(copy.parent / "teacher")
    assert det2.name == "model"


def test_shipped_tower_model_loads_by_name_and_detects():
    """The bundled tower model: its tower is the bundled teacher's own image tower, it finds
    objects in a shipped example, and all shipped assets stay within the package limit."""
    from vild.inference.registry import BUNDLE_LIMIT_BYTES, REGISTRY, TOWER_MODEL, assets_dir, is_installed

    if not is_installed(REGISTRY[TOWER_MODEL]):
        pytest.skip("the bundled tower model is not installed in this checkout")
    det = Detector.from_pretrained(TOWER_MODEL)
    config = det.model.config
    assert (config.mode, config.image_head_input) == ("ensemble", "tower")
    trunk = det.teacher.model.visual.trunk.state_dict()
    for k, v in det.model.tower.trunk.state_dict().items():
        torch.testing.assert_close(v, trunk[k].to(v.dtype), rtol=1e-3, atol=1e-3)
    found = det.detect(det.examples[0], threshold=0.3)[0]
    assert len(found) >= 6, "the bundled tower model finds too little in its own example"
    shipped = sum(p.stat().st_size for p in assets_dir().rglob("*") if p.is_file())
    assert shipped <= BUNDLE_LIMIT_BYTES
