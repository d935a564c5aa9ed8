"""`vild` as a user runs it, in a separate process: every bad input or flag gives one line and
exit 1, never a traceback; memory stays bounded under a lowered address-space limit."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.robustness.corpus import write_corpus

SRC = str(Path(__file__).resolve().parents[2] / "src")


def vild(*args, tmp_path: Path, address_space: int | None = None, timeout: float = 300):
    """Runs `python -m vild.cli ARGS` -> (exit code, stdout, stderr, peak RSS in bytes)."""
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1",
               VILD_CACHE_DIR=os.environ.get("VILD_CACHE_DIR", str(tmp_path / "cache")))
    env.pop("VILD_DEBUG", None)

    def limit():
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    code = ("import resource, sys; from vild.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nfinally:\n"
            "    print('peak-rss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=timeout, preexec_fn=limit)
    lines = p.stderr.splitlines()
    peak = [int(x.split()[1]) * 1024 for x in lines if x.startswith("peak-rss ")]
    err = "\n".join(x for x in lines if not x.startswith("peak-rss "))
    return p.returncode, p.stdout, err, (peak[0] if peak else None)


def test_detect_through_the_corpus(model_dir, tmp_path):
    cases = write_corpus(tmp_path / "corpus")
    code, out, err, _ = vild("detect", tmp_path / "corpus", "--model", model_dir, "--threshold", 0.1,
                             "--out", tmp_path / "out", "--no-progress", "--threads", 1, tmp_path=tmp_path)
    assert code == 1 and "Traceback" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("vild detect: error:")]
    bad = [c for c in cases if not c.ok]
    # the folder listing skips nothing but the symlink loop and the dangling link, which
    # it cannot tell from files: each bad file is one line naming it, with its reason
    for case in bad:
        mine = [x for x in errors if f"/{case.name}:" in x]
        assert len(mine) == 1 and case.words in mine[0], (case, mine)
    good = sum(c.ok for c in cases)
    assert f"{good} ok, {len(bad)} failed" in out, out


@pytest.mark.parametrize("args, words", [
    (["detect", "--threads", "0"], "--threads must be at least 1"),
    (["detect", "--max-pixels", "0"], "--max-pixels must be at least 1"),
    (["detect", "--device", "bogus"], "unknown device 'bogus'"),
    (["detect", "--device", "cuda:7"], "cuda:7"),
    (["serve", "--port", "99999"], "--port must be in 1..65535"),
    (["serve", "--port", "-1"], "--port must be in 1..65535"),
    (["serve", "--threads", "0"], "--threads must be at least 1"),
    (["serve", "--max-pixels", "0"], "--max-pixels must be at least 1"),
    (["serve", "--max-labels", "0"], "max_labels must be at least 1"),
    (["eval", "--model", "m", "--world", "w", "--threads", "0"], "--threads must be at least 1"),
    (["train-teacher", "w", "--out", "t", "--device", "nonsense"], "unknown device"),
])
def test_bad_flags_are_one_line_before_anything_loads(args, words, tmp_path):
    code, _, err, _ = vild(*args, tmp_path=tmp_path, timeout=120)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and words in lines[0], err


def test_detect_out_is_checked_first(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "taken").write_text("x")
    code, _, err, _ = vild("detect", tmp_path / "a.png", "--model", tmp_path / "no-such-model",
                           "--out", tmp_path / "taken", tmp_path=tmp_path)
    # the --out error comes first, though the model does not exist either
    assert code == 1 and err.count("\n") == 0 and "exists and is not a folder" in err, err


def _smooth_png(path: Path, h: int, w: int) -> Path:
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    img = np.stack([np.broadcast_to(y, (h, w)), np.broadcast_to(x, (h, w)),
                    np.full((h, w), 90, np.float32)], axis=2).astype(np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (220, 30, 30)
    Image.fromarray(img).save(path)
    return path


def test_a_16_megapixel_image_at_threshold_0_fits_in_bounded_memory(model_dir, tmp_path):
    """Without the mask bound this run keeps 100 masks of 4000 x 4000 floats: 6.4 GB in one
    allocation. With it, the masks of one image take at most --max-mask-mb."""
    big = _smooth_png(tmp_path / "big.png", 4000, 4000)
    code, out, err, peak = vild("detect", big, "--model", model_dir, "--threshold", 0, "--no-draw",
                                "--max-mask-mb", 256, "--out", tmp_path / "out", "--no-progress",
                                tmp_path=tmp_path, address_space=6 * 2**30)
    assert code == 0, err
    assert "lowered from 100 to 4" in err  # 4 masks of 64 MB fit in 256 MiB
    print(f"peak RSS {peak / 2**30:.2f} GiB")
    assert peak < 2.0 * 2**30
