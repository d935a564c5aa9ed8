"""The HTTP API under concurrent requests, through ASGI in one event loop: results kept apart,
the event loop free while the model works, timeouts, back-pressure, streamed uploads, and the
order of queued work."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from vild.service import ServiceConfig, create_app  # noqa: E402
from tests.service.fake import FakeDetector, b64, make_image  # noqa: E402


def _run(coro):
    return asyncio.run(coro)


def asgi_client(app) -> httpx.AsyncClient:
    """A client that calls the app in this event loop, through ASGI, without a server."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_concurrent_requests_get_their_own_results():
    det = FakeDetector(delay=0.01)
    app = create_app(det, ServiceConfig(cache_size=64, max_pending=64))
    colours = ["red", "green", "blue"] * 8

    async def main():
        async with asgi_client(app) as c:
            async def one(i, colour):
                box = (5 + i, 6, 30 + i, 40)
                r = await c.post("/v1/detect", files={"image": ("a.png", make_image(colour, box=box), "image/png")},
                                 data={"vocabulary": "red, green, blue"})
                assert r.status_code == 200, r.text
                top = r.json()["detections"][0]
                return top["label"], top["box"]

            async def via_cache(colour):
                r = await c.post("/v1/images", json={"image": b64(make_image(colour))})
                q = await c.post(f"/v1/images/{r.json()['id']}/query", json={"vocabulary": ["red", "green", "blue"]})
                return q.json()["detections"][0]["label"]

            results = await asyncio.gather(*(one(i, col) for i, col in enumerate(colours)))
            cached = await asyncio.gather(*(via_cache(col) for col in colours))
            return results, cached

    results, cached = _run(main())
    for i, (colour, (label, box)) in enumerate(zip(colours, results)):
        assert label == colour and box == [5.0 + i, 6.0, 30.0 + i, 40.0]
    assert cached == colours
    assert det.max_active == 1  # never re-entered


def test_event_loop_stays_free_while_the_model_works():
    det = FakeDetector(delay=0.5)
    app = create_app(det)

    async def main():
        async with asgi_client(app) as c:
            slow = asyncio.create_task(c.post("/v1/detect", json={"image": b64(make_image())}))
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            t = loop.time()
            h = await c.get("/healthz")
            dt = loop.time() - t
            assert h.json()["pending"] == 1
            r = await slow
            return dt, r.status_code

    dt, status = _run(main())
    assert status == 200 and dt < 0.3


def test_timeout_is_408_and_the_server_recovers():
    det = FakeDetector(delay=0.4)
    app = create_app(det, ServiceConfig(request_timeout_s=0.15))

    async def main():
        async with asgi_client(app) as c:
            rs = await asyncio.gather(*(c.post("/v1/detect", json={"image": b64(make_image())}) for _ in range(3)))
            await asyncio.sleep(0.5)  # the one running finishes; the queued ones never start
            return rs

    rs = _run(main())
    assert [r.status_code for r in rs] == [408, 408, 408]
    assert rs[0].json()["error"] == "timeout" and "0.15 s" in rs[0].json()["detail"]
    assert det.embed_calls == 1  # the two still queued were cancelled before they ran
    det.delay = 0.0
    with TestClient(app) as c:
        assert c.post("/v1/detect", json={"image": b64(make_image())}).status_code == 200


def test_busy_is_503():
    det = FakeDetector(delay=0.3)
    app = create_app(det, ServiceConfig(max_pending=2))

    async def main():
        async with asgi_client(app) as c:
            return await asyncio.gather(*(c.post("/v1/detect", json={"image": b64(make_image())}) for _ in range(4)))

    codes = sorted(r.status_code for r in _run(main()))
    assert codes == [200, 200, 503, 503]


def test_chunked_body_over_the_limit_is_413():
    app = create_app(FakeDetector(), ServiceConfig(max_upload_bytes=1000))

    async def body():
        for _ in range(100):
            yield b"x" * 20_000

    async def main():
        async with asgi_client(app) as c:
            return await c.post("/v1/detect", content=body(), headers={"content-type": "application/json"})

    r = _run(main())
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"


def test_queries_go_before_queued_detector_passes():
    det = FakeDetector()
    app = create_app(det, ServiceConfig())
    done: list[str] = []

    async def main():
        async with asgi_client(app) as c:
            image_id = (await c.post("/v1/images", json={"image": b64(make_image())})).json()["id"]
            det.delay = 0.3

            async def call(name, coro):
                r = await coro
                assert r.status_code in (200, 201), r.text
                done.append(name)

            first = asyncio.create_task(call("upload-1", c.post("/v1/images", json={"image": b64(make_image())})))
            await asyncio.sleep(0.1)  # upload-1 is running
            second = asyncio.create_task(call("upload-2", c.post("/v1/images", json={"image": b64(make_image())})))
            await asyncio.sleep(0.05)  # upload-2 is queued
            query = asyncio.create_task(call("query", c.post(f"/v1/images/{image_id}/query", json={})))
            await asyncio.gather(first, second, query)

    _run(main())
    assert done == ["upload-1", "query", "upload-2"]
