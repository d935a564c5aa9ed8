"""Exemplars through the HTTP API (`vild.service.exemplars`): a box in a cached image (by id) or
in an image sent along, for /v1/detect (JSON and multipart) and cached queries; the refusals;
and, with the real detector, the same detections as `Detector.detect(exemplars=...)`."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vild.service import ServiceConfig, create_app  # noqa: E402
from tests.service.fake import FakeDetector, b64, make_image  # noqa: E402

RED_AT = (10, 20, 40, 50)  # make_image's default box


@pytest.fixture
def detector():
    return FakeDetector()


@pytest.fixture
def client(detector):
    with TestClient(create_app(detector, ServiceConfig(cache_size=2, max_exemplars=3)),
                    raise_server_exceptions=False) as c:
        yield c


def upload(client, data: bytes) -> str:
    r = client.post("/v1/images", files={"image": ("i.png", data, "image/png")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def labels(body: dict) -> list[str]:
    return sorted(d["label"] for d in body["detections"])


def test_an_exemplar_from_one_cached_image_finds_its_kind_in_another(client, detector):
    red = upload(client, make_image("red"))
    other = upload(client, make_image("green", box=(5, 5, 30, 30)))
    ask = {"vocabulary": ["square"], "threshold": 0.3}
    assert labels(client.post(f"/v1/images/{other}/query", json=ask).json()) == ["square"]
    ex_green = {"name": "my thing", "image_id": other, "box": [0, 0, 35, 35]}
    r = client.post(f"/v1/images/{other}/query", json={**ask, "exemplars": [ex_green]})
    assert r.status_code == 200, r.text
    assert r.json()["vocabulary"] == ["square", "my thing"] and labels(r.json()) == ["my thing", "square"]
    # a red example does not label the green blob; it labels the red one
    ex_red = {"name": "my thing", "image_id": red, "box": list(RED_AT)}
    assert labels(client.post(f"/v1/images/{other}/query", json={**ask, "exemplars": [ex_red]}).json()) == ["square"]
    assert labels(client.post(f"/v1/images/{red}/query", json={**ask, "exemplars": [ex_red]}).json()) == [
        "my thing", "square"]
    # the detector got the cached pixels of the exemplar's image and its box
    got = detector.last_call["exemplars"]
    assert len(got) == 1 and got[0].name == "my thing" and got[0].box == tuple(map(float, RED_AT))
    assert got[0].image.dtype == torch.uint8 and tuple(got[0].image.shape) == (3, 64, 80)
    assert detector.embed_calls == 2  # exemplars ran no detector pass


def test_exemplar_sent_along_and_multipart_detect(client, detector):
    ex = {"name": "thing", "image": b64(make_image("blue", box=(0, 0, 20, 20))), "box": [0, 0, 20, 20]}
    target = make_image("blue", box=(30, 30, 60, 60))
    r = client.post("/v1/detect", json={"image": b64(target), "vocabulary": "square", "exemplars": [ex]})
    assert r.status_code == 200, r.text
    assert labels(r.json()) == ["square", "thing"]
    r = client.post("/v1/detect", files={"image": ("t.png", target, "image/png")},
                    data={"vocabulary": "square", "exemplars": json.dumps([ex])})
    assert r.status_code == 200, r.text
    assert labels(r.json()) == ["square", "thing"]
    # an empty vocabulary beside exemplars: the exemplars alone; no box: the whole image
    whole = {"name": "thing", "image": b64(make_image("blue", size=(20, 20), box=(0, 0, 20, 20)))}
    r = client.post("/v1/detect", json={"image": b64(target), "vocabulary": [], "exemplars": [whole]})
    assert r.status_code == 200, r.text
    assert r.json()["vocabulary"] == ["thing"] and labels(r.json()) == ["thing"]
    assert detector.last_call["exemplars"][0].box is None


@pytest.mark.parametrize("exemplar, status, code, words", [
    ({"name": "x", "image_id": "nope", "box": [0, 0, 5, 5]}, 404, "unknown_exemplar_image", "send the image itself"),
    ({"name": "x", "box": [0, 0, 5, 5]}, 422, "bad_exemplar", "exactly one"),
    ({"name": "x", "image_id": "ID", "image": "AAAA"}, 422, "bad_exemplar", "exactly one"),
    ({"name": "x", "image_id": "ID", "box": [0, 0, 81, 5]}, 422, "bad_exemplar", "outside the 80x64 image"),
    ({"name": "x", "image_id": "ID", "box": [5, 5, 5, 9]}, 422, "bad_exemplar", "is empty"),
    ({"name": "x", "image_id": "ID", "box": [0, 0, 5]}, 422, "invalid_request", "exemplars.0.box"),
    ({"name": "   ", "image_id": "ID"}, 422, "bad_exemplar", "empty name"),
    ({"name": "x" * 101, "image_id": "ID"}, 422, "name_too_long", "the limit is 100"),
    ({"name": "x", "image": "not base64 at all!"}, 422, "bad_image", ""),
    ({"name": "x", "image_id": "ID", "colour": "red"}, 422, "invalid_request", "exemplars.0.colour"),
])
def test_exemplar_refusals(client, exemplar, status, code, words):
    image_id = upload(client, make_image("red"))
    exemplar = {k: (image_id if v == "ID" else v) for k, v in exemplar.items()}
    r = client.post(f"/v1/images/{image_id}/query", json={"exemplars": [exemplar]})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and words in body["detail"] and "\n" not in body["detail"]


def test_too_many_exemplars_and_a_bad_form_field(client):
    image_id = upload(client, make_image("red"))
    ex = {"name": "x", "image_id": image_id}
    r = client.post(f"/v1/images/{image_id}/query", json={"exemplars": [ex] * 4})
    assert r.status_code == 422 and r.json()["error"] == "too_many_exemplars" and "limit is 3" in r.json()["detail"]
    r = client.post("/v1/detect", files={"image": ("t.png", make_image("red"), "image/png")},
                    data={"exemplars": "[{not json"})
    assert r.status_code == 422 and r.json()["error"] == "bad_exemplar"


def test_an_exemplar_image_that_left_the_cache_is_a_404_of_its_own(client):
    first = upload(client, make_image("red"))
    upload(client, make_image("green"))
    third = upload(client, make_image("blue"))  # cache_size=2: the first left
    r = client.post(f"/v1/images/{third}/query", json={"exemplars": [{"name": "x", "image_id": first}]})
    assert r.status_code == 404 and r.json()["error"] == "unknown_exemplar_image"
    r = client.post(f"/v1/images/{first}/query", json={})
    assert r.status_code == 404 and r.json()["error"] == "unknown_image"  # the queried image's own


def test_the_cache_counts_the_kept_pixels(client):
    upload(client, make_image("red"))
    stats = client.get("/healthz").json()["cache"]
    assert stats["bytes"] >= 3 * 64 * 80  # the uint8 pixels, beside the regions


def test_exemplars_through_the_service_match_the_python_api(real_detector):
    """The real detector: a cached query with an exemplar gives `Detector.detect(exemplars=)`'s
    detections for the same image, box and vocabulary."""
    from tests.service.test_real_detector import _key, assert_same, scene
    from vild.inference import Exemplar, load_image

    data = scene(seed=3)
    with TestClient(create_app(real_detector, ServiceConfig()), raise_server_exceptions=False) as client:
        image_id = upload(client, data)
        ex = {"name": "thing", "image_id": image_id, "box": [8, 8, 32, 32]}
        r = client.post(f"/v1/images/{image_id}/query",
                        json={"vocabulary": ["circle", "star"], "exemplars": [ex], "threshold": 0.0})
        assert r.status_code == 200, r.text
        body = r.json()
    image = load_image(data)
    api = real_detector.detect(image, ["circle", "star"], exemplars=[Exemplar("thing", image, (8, 8, 32, 32))],
                               threshold=0.0, max_detections=100)[0]
    assert body["vocabulary"] == ["circle", "star", "thing"] == list(api.class_names)
    assert "thing" in {d["label"] for d in body["detections"]}
    want = [(api.class_names[int(l)], b.tolist(), float(s)) for b, s, l in zip(api.boxes, api.scores, api.labels)]
    assert_same([_key(d) for d in body["detections"]], want)  # boxes rounded to 0.01 px in the JSON
