"""The HTTP API against a fake detector: endpoints, limits, errors, cache. Concurrent requests
are in `test_app_concurrency.py`."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from vild.service import ServiceConfig, create_app  # noqa: E402
from tests.service.fake import FakeDetector, b64, make_image  # noqa: E402


@pytest.fixture
def detector():
    return FakeDetector()


@pytest.fixture
def client(detector):
    app = create_app(detector, ServiceConfig(cache_size=2))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_health_models_openapi_and_page(client):
    assert client.get("/healthz").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["models"][0]["name"] == "fake"
    assert models["models"][0]["methods"] == ["native", "clip"]
    assert models["models"][0]["default_vocabulary"] == ["red", "green", "blue", "square"]
    assert models["limits"]["cache_size"] == 2
    spec = client.get("/openapi.json").json()
    for path in ("/v1/detect", "/v1/images", "/v1/images/{image_id}/query", "/v1/models", "/healthz"):
        assert path in spec["paths"], path
    content = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="/static/app.js"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_detect_multipart(client):
    r = client.post("/v1/detect", files={"image": ("a.png", make_image("red"), "image/png")},
                    data={"vocabulary": "red square, blue square", "threshold": "0.3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["vocabulary"] == ["red square", "blue square"]
    assert body["image_size"] == [64, 80]
    top = body["detections"][0]
    assert top["label"] == "red square" and top["label_id"] == 0
    assert top["box"] == [10.0, 20.0, 40.0, 50.0]
    assert top["score"] == pytest.approx(0.9)
    rle = dict(top["mask"], counts=top["mask"]["counts"].encode())
    m = mask_utils.decode(rle)
    assert m.shape == (64, 80) and m.sum() == 30 * 30 and m[20:50, 10:40].all()
    assert all(d["score"] >= 0.3 for d in body["detections"])


def test_detect_json_base64_and_data_url(client):
    for image in (b64(make_image("blue")), "data:image/png;base64," + b64(make_image("blue"))):
        r = client.post("/v1/detect", json={"image": image, "vocabulary": ["blue", "red"], "masks": False})
        assert r.status_code == 200, r.text
        dets = r.json()["detections"]
        assert dets[0]["label"] == "blue" and "mask" not in dets[0]


def test_detect_default_vocabulary_and_method(client, detector):
    r = client.post("/v1/detect", json={"image": b64(make_image("green")), "method": "clip"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["vocabulary"] == detector.default_vocabulary and body["method"] == "clip"
    assert body["detections"][0]["label"] == "green"
    r = client.post("/v1/detect", json={"image": b64(make_image("green")), "method": "nope"})
    assert r.status_code == 422 and r.json()["error"] == "bad_method"


def test_jpeg_upload(client):
    r = client.post("/v1/detect", files={"image": ("a.jpg", make_image("red", fmt="JPEG"), "image/jpeg")},
                    data={"vocabulary": "red"})
    assert r.status_code == 200 and r.json()["detections"][0]["label"] == "red"


def test_images_then_queries_do_not_rerun_the_detector(client, detector):
    r = client.post("/v1/images", files={"image": ("a.png", make_image("green"), "image/png")})
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    assert r.json()["image_size"] == [64, 80]
    assert detector.embed_calls == 1
    labels = []
    for vocab in (["green thing", "red thing"], ["a green cube"], "green, blue"):
        q = client.post(f"/v1/images/{image_id}/query", json={"vocabulary": vocab, "threshold": 0.5})
        assert q.status_code == 200, q.text
        labels.append(q.json()["detections"][0]["label"])
    assert labels == ["green thing", "a green cube", "green"]
    assert detector.embed_calls == 1 and detector.query_calls == 3
    # a low threshold returns more candidates for the same region (the page's top categories)
    q = client.post(f"/v1/images/{image_id}/query",
                    json={"vocabulary": ["green", "red", "blue", "cat"], "threshold": 0.0})
    assert len(q.json()["detections"]) == 4
    assert client.delete(f"/v1/images/{image_id}").status_code == 204
    assert client.post(f"/v1/images/{image_id}/query", json={}).status_code == 404


def test_images_json_upload(client):
    r = client.post("/v1/images", json={"image": b64(make_image("red"))})
    assert r.status_code == 201
    q = client.post(f"/v1/images/{r.json()['id']}/query", json={"vocabulary": ["red"]})
    assert q.json()["detections"][0]["label"] == "red"


def test_cache_is_lru_and_bounded(client):
    ids = []
    for colour in ("red", "green", "blue"):
        r = client.post("/v1/images", files={"image": ("a.png", make_image(colour), "image/png")})
        ids.append(r.json()["id"])
    # cache_size=2: the first left; querying the second refreshes it, so the fourth evicts the third
    first = client.post(f"/v1/images/{ids[0]}/query", json={})
    assert first.status_code == 404 and first.json()["error"] == "unknown_image"
    assert client.post(f"/v1/images/{ids[1]}/query", json={}).status_code == 200
    client.post("/v1/images", files={"image": ("a.png", make_image("red"), "image/png")})
    assert client.post(f"/v1/images/{ids[1]}/query", json={}).status_code == 200
    assert client.post(f"/v1/images/{ids[2]}/query", json={}).status_code == 404
    assert client.get("/healthz").json()["cache"]["items"] == 2


def test_unknown_ids_and_paths(client):
    assert client.post("/v1/images/../../etc/passwd/query", json={}).status_code == 404
    r = client.post("/v1/images/" + "x" * 200 + "/query", json={})
    assert r.status_code == 404 and r.json()["error"] == "unknown_image"
    assert client.get("/examples/..%2Fapp.py").status_code == 404
    assert client.get("/static/../app.py").status_code == 404


# ---- limits ----

@pytest.fixture
def strict_client(detector):
    config = ServiceConfig(max_upload_bytes=20_000, max_pixels=100 * 100, max_vocabulary=3,
                           max_name_length=10, max_detections=5)
    with TestClient(create_app(detector, config), raise_server_exceptions=False) as c:
        yield c


def _noise_png(h, w) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_upload_size_limit(strict_client):
    big = _noise_png(90, 90)  # ~24 kB of noise, under the pixel limit
    assert len(big) > 20_000
    r = strict_client.post("/v1/detect", files={"image": ("a.png", big, "image/png")})
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"
    r = strict_client.post("/v1/detect", json={"image": b64(big)})
    assert r.status_code == 413
    # a body over the whole-request limit is refused from its Content-Length
    r = strict_client.post("/v1/detect", content=b"x" * 200_000_0, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_pixel_limit_checked_before_decoding(strict_client):
    buf = io.BytesIO()
    Image.new("L", (1000, 1000)).save(buf, "PNG")  # a small file of 1 M pixels
    assert len(buf.getvalue()) < 20_000
    r = strict_client.post("/v1/detect", files={"image": ("a.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and r.json()["error"] == "too_many_pixels"
    assert "1000x1000" in r.json()["detail"]


def test_vocabulary_limits(strict_client):
    img = b64(make_image("red"))
    r = strict_client.post("/v1/detect", json={"image": img, "vocabulary": ["a", "b", "c", "d"]})
    assert r.status_code == 422 and r.json()["error"] == "vocabulary_too_long"
    r = strict_client.post("/v1/detect", json={"image": img, "vocabulary": "a, b, c, d"})
    assert r.status_code == 422 and r.json()["error"] == "vocabulary_too_long"
    r = strict_client.post("/v1/detect", json={"image": img, "vocabulary": ["x" * 11]})
    assert r.status_code == 422 and r.json()["error"] == "name_too_long"
    r = strict_client.post("/v1/detect", json={"image": img, "attributes": ["x" * 11]})
    assert r.status_code == 422 and r.json()["error"] == "name_too_long"
    r = strict_client.post("/v1/detect", json={"image": img, "vocabulary": " , ,"})
    assert r.status_code == 422 and r.json()["error"] == "bad_vocabulary"
    r = strict_client.post("/v1/detect", json={"image": img, "max_detections": 6})
    assert r.status_code == 422 and r.json()["error"] == "too_many_detections"
    # duplicates and whitespace are folded, not errors
    r = strict_client.post("/v1/detect", json={"image": img, "vocabulary": ["red ", " red", "r  ed"]})
    assert r.status_code == 200 and r.json()["vocabulary"] == ["red", "r ed"]


def test_bad_requests_are_clear_4xx(client):
    cases = [
        (dict(json={"image": "not base64 !!!"}), 422),
        (dict(json={"image": b64(b"GIF89a not really")}), 422),
        (dict(json={"image": "https://example.com/cat.png"}), 422),
        (dict(json={"image": ""}), 422),
        (dict(json={"image": b64(make_image()), "threshold": 2}), 422),
        (dict(json={"image": b64(make_image()), "extra": 1}), 422),
        (dict(json={"image": b64(make_image()), "vocabulary": [1, 2]}), 422),
        (dict(json=[1, 2]), 422),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400),
        (dict(content=b"abc", headers={"content-type": "text/plain"}), 415),
        (dict(files={"file": ("a.png", make_image(), "image/png")}), 422),
        (dict(files={"image": ("a.png", make_image(), "image/png")}, data={"threshold": "high"}), 422),
        (dict(files={"image": ("a.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")}), 422),
    ]
    for kwargs, status in cases:
        r = client.post("/v1/detect", **kwargs)
        assert r.status_code == status, (kwargs.keys(), r.status_code, r.text)
        body = r.json()
        assert set(body) == {"error", "detail"} and body["detail"], body
    # a validation error of the query endpoint has the same shape, and does not echo input
    r = client.post("/v1/images/abc/query", json={"threshold": "x" * 50})
    assert r.status_code == 422 and set(r.json()) == {"error", "detail"} and "x" * 50 not in r.text
    assert client.get("/v1/nothing").json()["error"] == "not_found"


def test_detector_errors_never_leak_a_traceback(client):
    img = b64(make_image())
    r = client.post("/v1/detect", json={"image": img, "vocabulary": ["boom-user"]})
    assert r.status_code == 400 and r.json() == {"error": "bad_request", "detail": "the name boom-user is not allowed"}
    r = client.post("/v1/detect", json={"image": img, "vocabulary": ["boom-internal"]})
    assert r.status_code == 500
    assert r.json() == {"error": "internal", "detail": "internal server error"}
    assert "Traceback" not in r.text and "passwd" not in r.text
    # the server is still fine
    r = client.post("/v1/detect", json={"image": img, "vocabulary": ["red"]})
    assert r.status_code == 200 and r.json()["detections"][0]["label"] == "red"


def test_examples_listing(tmp_path, detector):
    (tmp_path / "one.png").write_bytes(make_image("blue"))
    (tmp_path / "notes.txt").write_text("not an image")
    with TestClient(create_app(detector, examples_dir=tmp_path)) as c:
        assert c.get("/v1/examples").json() == {"examples": ["one.png"]}
        r = c.get("/examples/one.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert c.get("/examples/notes.txt").status_code == 404


def test_serve_is_registered_and_binds_to_loopback():
    from vild.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.func.__module__ == "vild.service.cli"


def test_responses_are_json_serialisable_floats(client):
    r = client.post("/v1/detect", json={"image": b64(make_image()), "threshold": 0.0})
    body = json.loads(r.text)
    assert all(isinstance(v, float) for d in body["detections"] for v in d["box"])


def test_masks_off_and_the_mask_memory_cap(detector):
    # 64 x 80 x 4 bytes = 20 KiB per mask: a 50 KiB budget fits 2
    app = create_app(detector, ServiceConfig(max_mask_bytes=50 * 1024))
    with TestClient(app) as c:
        r = c.post("/v1/detect", json={"image": b64(make_image()), "max_detections": 10})
        assert r.status_code == 200
        assert detector.last_call["max_detections"] == 2
        assert "lowered from 10 to 2" in r.json()["notes"][0]
        image_id = c.post("/v1/images", json={"image": b64(make_image())}).json()["id"]
        q = c.post(f"/v1/images/{image_id}/query", json={"max_detections": 10, "masks": False, "threshold": 0})
        assert detector.last_call == {"masks": False, "max_detections": 10}  # no cap, nothing pasted
        assert "notes" not in q.json() and len(q.json()["detections"]) == 4
        assert all("mask" not in d for d in q.json()["detections"])
        q = c.post(f"/v1/images/{image_id}/query", json={"max_detections": 10, "threshold": 0})
        assert detector.last_call == {"masks": True, "max_detections": 2}
        assert all("mask" in d for d in q.json()["detections"])


def test_decode_image_formats_and_orientation():
    from vild.service.errors import ServiceError
    from vild.service.images import decode_base64, decode_image

    def enc(im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    rgba = Image.new("RGBA", (5, 3), (255, 0, 0, 128))
    t = decode_image(enc(rgba, "PNG"), max_bytes=10**6, max_pixels=100)
    assert t.dtype == torch.uint8 and t.shape == (3, 3, 5) and t[0].max() == 255
    gray = decode_image(enc(Image.new("L", (4, 2), 7), "GIF"), max_bytes=10**6, max_pixels=100)
    assert gray.shape == (3, 2, 4)
    # EXIF orientation 6 (rotate 90): a 4 x 2 stored image is shown 2 x 4
    exif = Image.Exif()
    exif[0x0112] = 6
    rot = decode_image(enc(Image.new("RGB", (4, 2)), "JPEG", exif=exif), max_bytes=10**6, max_pixels=100)
    assert rot.shape == (3, 4, 2)
    for bad in (b"", b"\x89PNG\r\n\x1a\n broken", enc(Image.new("RGB", (4, 4)), "TIFF")):
        with pytest.raises(ServiceError) as e:
            decode_image(bad, max_bytes=10**6, max_pixels=100)
        assert e.value.status == 422
    with pytest.raises(ServiceError) as e:
        decode_base64("data:image/png,notbase64", 100)
    assert e.value.status == 422
    assert decode_base64("data:image/png;base64," + b64(b"abc"), 100) == b"abc"


def test_shared_masks_are_encoded_once_and_equal():
    from vild.service.serialize import encode_masks, encode_masks_shared

    m = torch.zeros(4, 6, 5)
    m[0, 1:3, 1:4] = 1
    m[1] = m[0]                      # same region, another label
    m[2, 2:5, 0:2] = 1
    m[3, 0:1, 0:5] = 1               # same box as 0 but another mask: not shared
    boxes = torch.tensor([[1.0, 1, 4, 3], [1, 1, 4, 3], [0, 2, 2, 5], [1, 1, 4, 3]])
    assert encode_masks_shared(m, boxes) == encode_masks(m)
