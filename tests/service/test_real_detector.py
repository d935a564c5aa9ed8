"""The service in front of the real `vild.inference.Detector` (a tiny random model): the JSON
matches the Python API, cached queries match /v1/detect, concurrent clients over a real socket
get exactly their own results."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from vild.service import ServiceConfig, create_app  # noqa: E402
from tests.service.server import running  # noqa: E402


def scene(h=64, w=64, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (h, w, 3)).astype("uint8")
    img[h // 8: h // 2, w // 8: w // 2] = (220, 30, 30)
    img[h // 2: h - h // 8, w // 2: w - w // 8] = (30, 60, 220)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(real_detector):
    with TestClient(create_app(real_detector, ServiceConfig()), raise_server_exceptions=False) as c:
        yield c


def _key(d):
    return (d["label"], tuple(d["box"]), d["score"])


def assert_same(got, want, tol=0.02):
    """Two lists of (label, box, score): equal up to the JSON's rounding, in any order."""
    assert len(got) == len(want), (len(got), len(want))
    left = list(want)
    for label, box, score in got:
        for j, (l2, b2, s2) in enumerate(left):
            if l2 == label and abs(s2 - score) < 1e-4 and np.allclose(box, b2, atol=tol):
                del left[j]
                break
        else:
            raise AssertionError(f"{label} {box} {score} not in {left}")


def test_detect_matches_the_python_api(client, real_detector):
    from vild.inference import load_image

    data = scene(64, 80)
    r = client.post("/v1/detect", files={"image": ("s.png", data, "image/png")},
                    data={"vocabulary": "circle, square, star", "threshold": "0.0", "max_detections": "20"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-ensemble" and body["image_size"] == [64, 80]
    assert body["vocabulary"] == ["circle", "square", "star"]
    dets = body["detections"]
    assert 0 < len(dets) <= 20
    api = real_detector.detect(load_image(data), ["circle", "square", "star"], threshold=0.0, max_detections=20)[0]
    assert len(api) == len(dets)
    want = [(api.class_names[int(l)], b.tolist(), float(s)) for b, s, l in zip(api.boxes, api.scores, api.labels)]
    assert_same([_key(d) for d in dets], want)
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 80 and 0 <= y1 <= y2 <= 64
        assert d["mask"]["size"] == [64, 80]


def test_cached_query_matches_detect_and_attributes(client):
    data = scene(seed=1)
    want = client.post("/v1/detect", json={"image": base64.b64encode(data).decode(),
                                           "vocabulary": ["star", "ring"], "threshold": 0.0}).json()
    r = client.post("/v1/images", files={"image": ("s.png", data, "image/png")})
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    got = client.post(f"/v1/images/{image_id}/query", json={"vocabulary": "star, ring", "threshold": 0.0}).json()
    assert_same([_key(d) for d in got["detections"]], [_key(d) for d in want["detections"]], tol=1e-6)
    q = client.post(f"/v1/images/{image_id}/query",
                    json={"vocabulary": ["star", "ring"], "attributes": ["red", "blue"], "threshold": 0.0})
    assert q.status_code == 200, q.text
    assert q.json()["vocabulary"] == ["red star", "blue star", "red ring", "blue ring"]
    assert {d["label"] for d in q.json()["detections"]} <= set(q.json()["vocabulary"])


def test_clip_method_through_the_cache(client, real_detector):
    if "clip" not in real_detector.methods:
        pytest.skip("this model has no clip method")
    r = client.post("/v1/images", files={"image": ("s.png", scene(), "image/png")}, data={"method": "clip"})
    assert r.status_code == 201, r.text
    q = client.post(f"/v1/images/{r.json()['id']}/query", json={"vocabulary": ["star"], "threshold": 0.0})
    assert q.status_code == 200 and q.json()["method"] == "clip"


def test_models_endpoint(client, real_detector):
    m = client.get("/v1/models").json()["models"][0]
    assert m["name"] == "tiny-ensemble" and m["default_vocabulary"] == real_detector.default_vocabulary
    assert m["methods"] == list(real_detector.methods)


def test_concurrent_clients_over_a_socket_get_their_own_results(real_detector):
    images = [scene(48 + 8 * (i % 3), 64, seed=i) for i in range(6)]
    vocabs = [["circle", "square"], ["star"], ["square", "star", "circle"]]
    app = create_app(real_detector, ServiceConfig(cache_size=16))
    with running(app) as url:
        with httpx.Client(base_url=url, timeout=60) as c:
            expected = []
            for i, img in enumerate(images):
                r = c.post("/v1/detect", files={"image": ("a.png", img, "image/png")},
                           data={"vocabulary": ",".join(vocabs[i % 3]), "threshold": "0.0"})
                expected.append([_key(d) for d in r.json()["detections"]])

        def one(job):
            i = job % len(images)
            with httpx.Client(base_url=url, timeout=60) as c:
                if job % 2:
                    r = c.post("/v1/detect", files={"image": ("a.png", images[i], "image/png")},
                               data={"vocabulary": ",".join(vocabs[i % 3]), "threshold": "0.0"})
                else:
                    up = c.post("/v1/images", json={"image": base64.b64encode(images[i]).decode()})
                    r = c.post(f"/v1/images/{up.json()['id']}/query",
                               json={"vocabulary": vocabs[i % 3], "threshold": 0.0})
                assert r.status_code == 200, r.text
                return i, [_key(d) for d in r.json()["detections"]]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(24)))
    for i, got in results:
        assert_same(got, expected[i], tol=1e-6)


def test_vild_serve_command(real_detector, tmp_path):
    """`vild serve --model FOLDER` as a user runs it: up on 127.0.0.1, page and API answer,
    stops on SIGTERM."""
    import os
    import subprocess
    import sys
    import time

    from tests.service.server import free_port

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", VILD_CACHE_DIR=str(tmp_path / "cache"))
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vild", "serve", "--model", str(real_detector.source), "--port", str(port),
         "--log-level", "warning", "--cache-size", "4"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "vild serve did not start"
            time.sleep(0.2)
        assert "<canvas" in httpx.get(url + "/").text
        assert httpx.get(url + "/v1/models").json()["limits"]["cache_size"] == 4
        r = httpx.post(url + "/v1/detect", files={"image": ("s.png", scene(), "image/png")},
                       data={"vocabulary": "star", "threshold": "0"}, timeout=60)
        assert r.status_code == 200 and r.json()["vocabulary"] == ["star"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = (tmp_path / "serve.log").read_text()
    assert f"http://127.0.0.1:{port}/" in out and "Traceback" not in out
