"""Limits that bound one request's work: labels (names x attributes), names that overflow the
text encoder's context, absurdly nested JSON. Each is one clear 4xx line."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vild.service import ServiceConfig, create_app  # noqa: E402
from tests.service.fake import b64  # noqa: E402
from tests.service.test_real_detector import scene  # noqa: E402


@pytest.fixture(scope="module")
def client(real_detector):
    config = ServiceConfig(max_labels=50)
    with TestClient(create_app(real_detector, config), raise_server_exceptions=False) as c:
        yield c


def _one_line_4xx(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    assert "\n" not in body["detail"] and "Traceback" not in r.text and len(r.text) < 600
    return body


def test_labels_are_bounded_by_their_product(client):
    img = b64(scene())
    names = [f"name{i}" for i in range(8)]
    attrs = [f"attr{i}" for i in range(7)]  # 8 x 7 = 56 labels > 50, each list far under its cap
    body = _one_line_4xx(client.post("/v1/detect", json={"image": img, "vocabulary": names, "attributes": attrs}),
                         422, "too_many_labels")
    assert "56" in body["detail"] and "50" in body["detail"]
    r = client.post("/v1/detect", json={"image": img, "vocabulary": names, "attributes": attrs[:6]})
    assert r.status_code == 200, r.text  # 48 labels: fine
    assert len(r.json()["vocabulary"]) == 48  # the labels: every "attribute name" pair


def test_a_name_over_the_text_context_is_422_name_too_long(client):
    img = b64(scene())
    long_name = " ".join(["zq"] * 33)  # 98 characters: under the 100-character cap, over 32 tokens
    body = _one_line_4xx(client.post("/v1/detect", json={"image": img, "vocabulary": ["star", long_name]}),
                         422, "name_too_long")
    assert long_name not in body["detail"] and "(98 characters)" in body["detail"]  # echoed short, once


@pytest.mark.parametrize("path", ["/v1/detect", "/v1/images/abc/query"])
def test_deeply_nested_json_is_400_bad_json(client, path):
    deep = b"[" * 1500 + b"]" * 1500  # 3 KB
    _one_line_4xx(client.post(path, content=deep, headers={"content-type": "application/json"}), 400, "bad_json")
    deep_obj = b'{"image": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"
    _one_line_4xx(client.post(path, content=deep_obj, headers={"content-type": "application/json"}), 400, "bad_json")
    assert client.get("/healthz").status_code == 200
