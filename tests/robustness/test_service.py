"""`vild serve` (the bundled model, its own process, under a lowered address-space limit)
through the corpus and hostile requests: every answer a result or one 4xx JSON line, and the
server's peak RSS under 1.5 GB through all of it."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from tests.robustness.corpus import file_cases, write_corpus  # noqa: E402
from tests.robustness.test_cli import SRC, _smooth_png  # noqa: E402
from tests.service.fake import b64  # noqa: E402
from tests.service.server import free_port  # noqa: E402

RSS_LIMIT = int(1.5 * 2**30)
ADDRESS_SPACE = 6 * 2**30


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the server's peak RSS (Linux)")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1",
               VILD_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    log = tmp_path_factory.mktemp("log") / "serve.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from vild.cli import main; sys.exit(main(sys.argv[1:]))",
             "serve", "--port", str(port), "--threads", "1", "--log-level", "warning"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=limit)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"vild serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, proc, log
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _one_line_4xx(r: httpx.Response, what) -> None:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "detail"}, (what, body)
    assert "\n" not in body["detail"] and len(r.text) < 600 and "Traceback" not in r.text, (what, r.text[:300])


def test_corpus_uploads(server, tmp_path):
    url, proc, log = server
    folder = tmp_path / "corpus"
    cases = file_cases(write_corpus(folder))
    with httpx.Client(base_url=url, timeout=120) as c:
        for case in cases:
            data = (folder / case.name).read_bytes()
            r = c.post("/v1/detect", files={"image": (case.name, data, "application/octet-stream")},
                       data={"threshold": "0.2"})
            if case.serve_ok:
                assert r.status_code == 200, (case, r.text[:300])
                assert r.json()["image_size"][0] >= 1
            else:
                _one_line_4xx(r, case)
    assert proc.poll() is None
    assert _peak_rss(proc.pid) < RSS_LIMIT, f"{_peak_rss(proc.pid) / 2**30:.2f} GiB"


def test_hostile_requests(server, tmp_path):
    url, proc, log = server
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(buf, "PNG")
    img = b64(buf.getvalue())
    names = [f"n{i}" for i in range(2000)]
    hostile = [
        ("4 M labels", dict(json={"image": img, "vocabulary": names, "attributes": [f"a{i}" for i in range(2000)]})),
        ("1 M labels", dict(json={"image": img, "vocabulary": names[:1000], "attributes": names[1000:]})),
        ("deep JSON", dict(content=b"[" * 1500 + b"]" * 1500, headers={"content-type": "application/json"})),
        ("deep object", dict(content=b'{"image": ' + b'{"a":' * 20000 + b"1" + b"}" * 20001,
                             headers={"content-type": "application/json"})),
        ("10k name", dict(json={"image": img, "vocabulary": ["x" * 10_000]})),
        ("token overflow", dict(json={"image": img, "vocabulary": [" ".join(["zq"] * 33)]})),
        ("number vocabulary", dict(json={"image": img, "vocabulary": 123})),
        ("nested vocabulary", dict(json={"image": img, "vocabulary": [["a", ["b"]]]})),
        ("NaN threshold", dict(content=b'{"image": "%s", "threshold": NaN}' % img.encode(),
                               headers={"content-type": "application/json"})),
        ("huge max_detections", dict(json={"image": img, "max_detections": 10**12})),
        ("bomb", dict(json={"image": b64((Path(__file__).parent / "corpus.py").read_bytes())})),
    ]
    with httpx.Client(base_url=url, timeout=120) as c:
        for what, kwargs in hostile:
            _one_line_4xx(c.post("/v1/detect", **kwargs), what)
        # a 16-megapixel image at threshold 0 with masks: a bounded answer, not an allocation of GBs
        big = _smooth_png(tmp_path / "big.png", 4096, 4096).read_bytes()
        r = c.post("/v1/detect", files={"image": ("big.png", big, "image/png")},
                   data={"threshold": "0", "max_detections": "1000"})
        assert r.status_code == 200, r.text[:300]
        assert any("max_detections lowered" in n for n in r.json().get("notes", []))
        assert c.get("/healthz").status_code == 200
    peak = _peak_rss(proc.pid)
    print(f"vild serve peak RSS {peak / 2**30:.2f} GiB")
    assert peak < RSS_LIMIT, f"{peak / 2**30:.2f} GiB"
