"""`vild detect` end to end: annotated images, one COCO results json, a summary, exit codes,
and one line per bad input while the other images are still processed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.inference.conftest import scene
from tests.data.test_images import huge_png_header
from vild.cli import main


def run(capsys, *argv):
    code = main(["detect", "--no-progress", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def write_bad_and_awkward(folder):
    """Awkward but valid images (kept) and bad files (reported), in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene(64, 64, 0)).save(folder / "a_rgb.png")
    Image.fromarray(scene(40, 90, 1)).save(folder / "b_rgb.jpg")
    Image.fromarray(scene(50, 50, 2)[..., 0]).save(folder / "c_gray.png")
    rgba = np.dstack([scene(48, 48, 3), np.full((48, 48), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "d_rgba.png")
    Image.fromarray((scene(40, 40, 4)[..., 1].astype(np.uint16) * 257)).save(folder / "e_16bit.png")
    Image.fromarray(scene(40, 40, 5)).convert("CMYK").save(folder / "f_cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(scene(30, 60, 6)).save(folder / "g_exif.jpg", exif=exif)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "h_one_pixel.png")
    (folder / "x_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    huge_png_header(folder / "y_huge.png")
    (folder / "z_empty.jpg").write_bytes(b"")
    return 8, ["x_corrupt.png", "y_huge.png", "z_empty.jpg"]


def test_end_to_end_with_bad_inputs(model_dir, tmp_path, capsys):
    n_good, bad = write_bad_and_awkward(tmp_path / "imgs")
    (tmp_path / "empty_dir").mkdir()
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, tmp_path / "imgs", tmp_path / "missing.png", tmp_path / "empty_dir",
                               "--model", model_dir, "--threshold", 0.2, "--out", out, "--batch-size", 3)
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("vild detect: error:")]
    assert len(errors) == len(bad) + 2  # one line per bad item
    for name in bad + ["missing.png", "empty_dir"]:
        assert sum(name in line for line in errors) == 1
    assert "Traceback" not in stderr
    assert f"{n_good + len(bad) + 2} images: {n_good} ok, {len(bad) + 2} failed" in stdout
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == n_good and "g_exif.png" in pngs and "h_one_pixel.png" in pngs
    run_json = json.loads((out / "run.json").read_text())
    images = {Image_path(r["path"]): r for r in run_json["images"]}
    assert images["g_exif.jpg"]["width"] == 30 and images["g_exif.jpg"]["height"] == 60  # upright
    assert "error" in images["y_huge.png"] and "limit" in images["y_huge.png"]["error"]
    assert [c["name"] for c in run_json["categories"]] == ["circle", "square", "star"]
    results = json.loads((out / "results.json").read_text())
    assert isinstance(results, list) and results
    ok_ids = {r["id"] for r in run_json["images"] if "error" not in r}
    assert {r["image_id"] for r in results} <= ok_ids
    assert {r["category_id"] for r in results} <= {1, 2, 3}
    assert all(set(r) >= {"image_id", "category_id", "bbox", "score", "segmentation"} for r in results)
    assert all(r["score"] > 0.2 for r in results)
    with Image.open(out / "a_rgb.png") as im:
        assert im.size == (512, 512)  # 64 px enlarged for legible labels


def Image_path(p: str) -> str:
    return p.replace("\\", "/").rsplit("/", 1)[-1]


def test_all_good_exit_zero_named_vocabulary_and_attributes(model_dir, tmp_path, capsys):
    Image.fromarray(scene()).save(tmp_path / "a.png")
    # (ShapeWorld's names are too long for the tiny test teacher's 16-token context)
    lvis = tmp_path / "lvis.json"
    lvis.write_text(json.dumps({"categories": [{"id": 7, "name": "ring", "synonyms": ["hoop"]},
                                               {"id": 3, "name": "star_(shape)", "synonyms": []}]}))
    code, stdout, _ = run(capsys, tmp_path / "a.png", "--model", model_dir, "--vocabulary", f"lvis:{lvis}",
                          "--threshold", 0.0, "--out", tmp_path / "o1")
    assert code == 0 and "1 image: 1 ok, 0 failed" in stdout
    cats = json.loads((tmp_path / "o1" / "run.json").read_text())["categories"]
    assert cats == [{"id": 3, "name": "star_(shape)"}, {"id": 7, "name": "ring"}]
    results = json.loads((tmp_path / "o1" / "results.json").read_text())
    assert {r["category_id"] for r in results} <= {3, 7} and results
    code, _, _ = run(capsys, tmp_path / "a.png", "--model", model_dir, "--vocabulary", "voc",
                     "--out", tmp_path / "o4")
    assert code == 0
    assert len(json.loads((tmp_path / "o4" / "run.json").read_text())["categories"]) == 20
    code, stdout, _ = run(capsys, tmp_path / "a.png", "--model", model_dir, "--vocab", "star,ring",
                          "--attributes", "red,blue", "--threshold", 0.0, "--out", tmp_path / "o2", "--no-draw")
    assert code == 0
    run_json = json.loads((tmp_path / "o2" / "run.json").read_text())
    assert [c["name"] for c in run_json["categories"]] == ["red star", "blue star", "red ring", "blue ring"]
    names = {r["category_name"] for r in json.loads((tmp_path / "o2" / "results.json").read_text())}
    assert names <= {"red star", "blue star", "red ring", "blue ring"} and names
    assert not list((tmp_path / "o2").glob("*.png"))
    (tmp_path / "v.txt").write_text("# shapes\nstar|pentagram\nring\n")
    code, _, _ = run(capsys, tmp_path / "a.png", "--model", model_dir, "--vocab-file", tmp_path / "v.txt",
                     "--out", tmp_path / "o3", "--method", "clip")
    assert code == 0
    code, _, _ = run(capsys, tmp_path / "a.png", "--model", model_dir, "--out", tmp_path / "o4",
                     "--precision", "bf16", "--no-draw")
    assert code == 0 and json.loads((tmp_path / "o4" / "results.json").read_text())


@pytest.mark.parametrize("args, words", [
    (["--vocab", ","], "--vocab: the vocabulary is empty"),
    (["--vocab", "star,Star"], "duplicate category"),
    (["--attributes", "red,red"], "attributes: duplicate"),
    (["--vocab-file", "/no/such/file.txt"], "vocabulary file not found"),
    (["--vocabulary", "lvis"], "lvis:FILE"),
    (["--method", "vild"], "not available"),
    (["--threshold", "2"], "--threshold must be in 0..1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--max-pixels", "0"], "--max-pixels must be at least 1"),
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--device", "cuda:99"], "cuda:99"),
    (["--max-mask-mb", "0"], "--max-mask-mb must be positive"),
    (["--vocab", "a,b,c", "--attributes", ",".join(f"w{i}" for i in range(8))], "24 labels; the limit is 20"),
])
def test_fatal_errors_are_one_line(model_dir, tmp_path, capsys, monkeypatch, args, words):
    from vild.inference.detector import Detector

    monkeypatch.setattr(Detector, "max_labels", 20)
    Image.fromarray(scene()).save(tmp_path / "a.png")
    code, _, stderr = run(capsys, tmp_path / "a.png", "--model", model_dir, "--out", tmp_path / "o", *args)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vild detect: error:") and words in lines[0]


def test_bad_model_folder_and_no_images(model_dir, tmp_path, capsys, monkeypatch):
    Image.fromarray(scene()).save(tmp_path / "a.png")
    code, _, stderr = run(capsys, tmp_path / "a.png", "--model", tmp_path / "nope")
    assert code == 1 and stderr.count("\n") == 1 and "does not exist" in stderr
    monkeypatch.delenv("VILD_MODEL_VILD_R50_VITB32", raising=False)
    code, _, stderr = run(capsys, tmp_path / "a.png", "--model", "vild-r50-vitb32")
    assert code == 1 and stderr.count("\n") == 1 and "VILD_MODEL_VILD_R50_VITB32" in stderr
    code, _, stderr = run(capsys, "--model", model_dir, "--out", tmp_path / "o")
    assert code == 1 and "no images given" in stderr
    monkeypatch.setenv("VILD_ASSETS_DIR", str(tmp_path / "no-assets"))
    code, _, stderr = run(capsys, tmp_path / "a.png")
    assert code == 1 and "is not installed" in stderr


def test_bundled_model_runs_on_its_examples(model_dir, tmp_path, capsys, monkeypatch):
    from vild.inference.bundle import bundle_model

    for i in range(2):
        Image.fromarray(scene(64, 64, 10 + i)).save(tmp_path / f"example-{i}.png")
    assets = tmp_path / "assets"
    bundle_model(model_dir, model_dir.parent / "teacher", assets=assets,
                 examples=[tmp_path / "example-0.png", tmp_path / "example-1.png"])
    monkeypatch.setenv("VILD_ASSETS_DIR", str(assets))
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run(capsys)
    assert code == 0, stderr
    assert "running on the 2 example images" in stderr and "2 images: 2 ok" in stdout
    assert sorted(p.name for p in (tmp_path / "detections").glob("*.png")) == ["example-0.png", "example-1.png"]
    code, stdout, _ = run(capsys, "--list-models")
    assert code == 0
    assert "shapeworld-vild-ensemble" in stdout and "vild-r50-vitb32" in stdout and "vild-r152-vitb32" in stdout


def test_bad_out_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from vild.inference.detector import Detector

    def never(*a, **k):
        raise AssertionError("the model must not load when --out is unusable")

    monkeypatch.setattr(Detector, "from_pretrained", never)
    Image.fromarray(scene()).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    for out, words in ((tmp_path / "file", "exists and is not a folder"),
                       (tmp_path / "file" / "sub", "cannot create the folder")):
        code, _, stderr = run(capsys, tmp_path / "a.png", "--out", out)
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1 and words in lines[0], stderr


def test_masks_are_bounded_by_max_mask_mb(model_dir, tmp_path, capsys):
    """At threshold 0 a big image would keep 100 full-size masks; --max-mask-mb caps them."""
    Image.fromarray(scene(400, 500, 3)).save(tmp_path / "big.png")
    code, _, _ = run(capsys, tmp_path / "big.png", "--model", model_dir, "--threshold", 0, "--no-draw",
                     "--max-mask-mb", 4, "--out", tmp_path / "o")
    assert code == 0
    per_mask = 400 * 500 * 4
    kept = json.loads((tmp_path / "o" / "run.json").read_text())["images"][0]["detections"]
    assert kept == (4 * 2**20) // per_mask == 5  # 5 masks of 0.8 MB fit in 4 MiB (100 without the cap)


def test_symlink_loop_is_named_as_such(model_dir, tmp_path, capsys):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    code, _, stderr = run(capsys, tmp_path / "a.png", "--model", model_dir, "--out", tmp_path / "o")
    assert code == 1 and "loop of symbolic links" in stderr and "not found" not in stderr
