"""Load test of `vild serve` on loopback: concurrent clients, a bounded number of requests and a
bounded time; requests/s, p50/p95 latency, errors and the server's memory (RSS) over the run.

    .venv/bin/python benchmarks/serve_load.py                       # the bundled model
    .venv/bin/python benchmarks/serve_load.py --model runs/ensemble # a model folder
    .venv/bin/python benchmarks/serve_load.py --model random-shapeworld
        # the ShapeWorld CPU preset with RANDOM weights and a random ShapeWorld CLIP teacher
        # (same compute as the trained model; the detections themselves mean nothing)

The server runs as a separate process (`python -m vild serve`, 1 torch thread), only on
127.0.0.1. The request mix is what the page does, plus one-shot calls: per client, one
POST /v1/images then queries with changing vocabularies (no detector pass) and every tenth
request a POST /v1/detect. The warm-up fills the image cache (more uploads than it holds), so
the memory measured afterwards already includes a full cache: any later growth is a leak.

Writes benchmarks/results/serve_load.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ---------------------------------------------------------------- a random ShapeWorld model
def shapeworld_categories():
    from vild.data.world.categories import build_categories, load_category_specs, resolve_novel

    _, specs = load_category_specs("default")
    return build_categories(specs, resolve_novel(specs, None, 0))


def write_random_shapeworld_model(root: Path) -> Path:
    """The `shapeworld` preset detector (ViLD-ensemble) and the packaged ShapeWorld CLIP
    architecture, both with random weights, as a loadable model folder."""
    import torch

    from vild.model import build_detector
    from vild.teacher import Teacher, create_clip
    from vild.training.checkpoint import save_model, save_vocabulary
    from vild.training.presets import preset
    from vild.training.vocabulary import text_embeddings_for

    torch.manual_seed(0)
    clip, tokenizer, cfg = create_clip()
    teacher = Teacher(clip, tokenizer, image_size=cfg["vision_cfg"]["image_size"], mean=(0.5, 0.5, 0.5),
                      std=(0.25, 0.25, 0.25), model_cfg=cfg, name="random-shapeworld-clip")
    teacher_dir = root / "teacher"
    teacher.save(teacher_dir)
    cats = shapeworld_categories()
    vocab = {
        "names": [c.name for c in cats], "synonyms": [list(c.synonyms) for c in cats],
        "category_ids": [c.id for c in cats], "base": [not c.novel for c in cats],
        "teacher": {"name": str(teacher_dir), "identity": teacher.identity},
    }
    emb = text_embeddings_for(teacher, vocab, cache_dir=str(root / "cache"))
    model_cfg, _ = preset("shapeworld", model=dict(mode="ensemble", embed_dim=cfg["embed_dim"]))
    model = build_detector(model_cfg).eval()
    folder = root / "model"
    save_model(folder, model)
    save_vocabulary(folder, vocab, emb)
    (folder / "detector.json").write_text(json.dumps({
        "format": "vild-detector/1", "name": "random-shapeworld", "teacher": "../teacher",
        "teacher_identity": teacher.identity, "templates": "vild"}))
    return folder


def scene_pngs(n: int, seed: int = 0) -> list[bytes]:
    """n ShapeWorld-OV scenes of 128 px, as PNG bytes."""
    import numpy as np
    from PIL import Image

    from vild.data.world.render import render_scene

    cats = shapeworld_categories()
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img, _ = render_scene(rng, cats, np.ones(len(cats)), height=128, width=128, min_objects=2,
                              max_objects=6, min_size=10.0, max_frac=0.6)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


# ---------------------------------------------------------------- the load
class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.status: dict[str, int] = {}
        self.errors: list[str] = []
        self.server_ms: dict[str, dict[str, list[float]]] = {}

    def add_server_timing(self, kind: str, timing: dict) -> None:
        for k, v in (timing or {}).items():
            self.server_ms.setdefault(kind, {}).setdefault(k, []).append(float(v))

    def add(self, kind: str, seconds: float, status: int | str) -> None:
        self.latency.setdefault(kind, []).append(seconds)
        self.status[str(status)] = self.status.get(str(status), 0) + 1
        if status != 200 and status != 201:
            if len(self.errors) < 20:
                self.errors.append(f"{kind}: {status}")

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.latency.values())

    @property
    def error_count(self) -> int:
        return sum(n for s, n in self.status.items() if s not in ("200", "201"))


async def client(worker: int, c, images: list[bytes], vocabularies: list[list[str]], stats: Stats,
                 budget: dict, deadline: float, rng: random.Random) -> None:
    image_id = None
    step = 0
    while budget["left"] > 0 and time.monotonic() < deadline:
        budget["left"] -= 1
        step += 1
        img = images[(worker + step) % len(images)]
        vocab = vocabularies[rng.randrange(len(vocabularies))]
        t = time.perf_counter()
        try:
            if step % 10 == 0:
                kind = "detect"
                r = await c.post("/v1/detect", files={"image": ("s.png", img, "image/png")},
                                 data={"vocabulary": ", ".join(vocab), "threshold": "0.3"})
            elif image_id is None or step % 5 == 1:
                kind = "images"
                r = await c.post("/v1/images", json={"image": base64.b64encode(img).decode()})
                if r.status_code == 201:
                    image_id = r.json()["id"]
            else:
                kind = "query"
                r = await c.post(f"/v1/images/{image_id}/query",
                                 json={"vocabulary": vocab, "threshold": 0.02, "max_detections": 300})
                if r.status_code == 404:  # evicted by other clients' uploads: the page re-uploads
                    image_id = None
            r.content  # noqa: B018 - the whole body is part of the latency
            stats.add(kind, time.perf_counter() - t, r.status_code)
            if r.status_code in (200, 201):
                stats.add_server_timing(kind, r.json().get("timing_ms"))
        except Exception as e:  # noqa: BLE001
            stats.add("exception", time.perf_counter() - t, type(e).__name__)


async def drive(url: str, n: int, concurrency: int, duration: float, images, vocabularies, seed: int,
                on_progress=None) -> tuple[Stats, float]:
    import httpx

    stats = Stats()
    budget = {"left": n}
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        started = time.perf_counter()
        tasks = [client(i, c, images, vocabularies, stats, budget, deadline, random.Random(seed + i))
                 for i in range(concurrency)]
        if on_progress:
            tasks.append(on_progress(stats, budget, deadline))
        await asyncio.gather(*tasks)
        return stats, time.perf_counter() - started


def summarise(stats: Stats, seconds: float) -> dict:
    all_lat = [v for vs in stats.latency.values() for v in vs]
    return {
        "requests": stats.count,
        "seconds": round(seconds, 2),
        "requests_per_s": round(stats.count / seconds, 2) if seconds else None,
        "p50_ms": round(1000 * percentile(all_lat, 0.5), 1),
        "p95_ms": round(1000 * percentile(all_lat, 0.95), 1),
        "errors": stats.error_count,
        "status_counts": stats.status,
        "first_errors": stats.errors,
        "by_endpoint": {
            k: {"requests": len(v), "p50_ms": round(1000 * percentile(v, 0.5), 1),
                "p95_ms": round(1000 * percentile(v, 0.95), 1)}
            for k, v in sorted(stats.latency.items())
        },
        "server_side_p50_ms": {  # the server's own timing_ms: time on the model thread, not queueing
            kind: {k: round(percentile(v, 0.5), 1) for k, v in parts.items()}
            for kind, parts in sorted(stats.server_ms.items())
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model name or folder (default: the bundled model); "
                   "'random-shapeworld' builds the ShapeWorld preset with random weights")
    p.add_argument("--requests", type=int, default=1000, help="measured requests (after warm-up)")
    p.add_argument("--duration", type=float, default=600.0, help="stop measuring after this many seconds")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--cache-size", type=int, default=16, help="the server's image cache")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_load.json"))
    args = p.parse_args()

    from vild.io import save_json

    work = Path(tempfile.mkdtemp(prefix="vild-serve-load-"))
    model = args.model
    model_note = model or "bundled default"
    if model == "random-shapeworld":
        print("building a random-weight ShapeWorld model (the shapeworld preset; detections are meaningless)")
        model = str(write_random_shapeworld_model(work))
        model_note = "random-shapeworld (shapeworld preset, random weights: compute of the real model, meaningless detections)"
    images = scene_pngs(24, args.seed)
    names = [c.name for c in shapeworld_categories()]
    rng = random.Random(args.seed)
    vocabularies = [names] + [rng.sample(names, k) for k in (3, 5, 8, 12)] + [["red " + n for n in names[:6]]]

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), VILD_CACHE_DIR=str(work / "cache"),
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "vild", "serve", "--port", str(port), "--host", "127.0.0.1",
           "--threads", str(args.threads), "--cache-size", str(args.cache_size), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    log_path = work / "server.log"
    server = subprocess.Popen(cmd, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        t0 = time.monotonic()
        while True:
            if server.poll() is not None:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 300:
                raise SystemExit("the server did not start in 300 s")
            time.sleep(0.25)
        info = httpx.get(url + "/v1/models").json()["models"][0]
        print(f"server up in {time.monotonic() - t0:.1f} s: {info.get('name')} ({info.get('mode')})")

        warm_n = max(3 * args.cache_size, 60)
        warm, warm_s = asyncio.run(drive(url, warm_n, args.concurrency, 600, images, vocabularies, args.seed + 100))
        rss_start = rss_mb(server.pid)
        print(f"warm-up: {warm.count} requests in {warm_s:.1f} s, {warm.error_count} errors; RSS {rss_start:.0f} MB")

        samples: list[tuple[int, float]] = [(0, rss_start)]

        async def progress(stats, budget, deadline):
            next_mark = 100
            while budget["left"] > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                if stats.count >= next_mark:
                    samples.append((stats.count, rss_mb(server.pid)))
                    print(f"  {stats.count} requests, RSS {samples[-1][1]:.0f} MB", flush=True)
                    next_mark += 100

        load_before = os.getloadavg()
        stats, seconds = asyncio.run(drive(url, args.requests, args.concurrency, args.duration, images,
                                           vocabularies, args.seed, on_progress=progress))
        rss_end = rss_mb(server.pid)
        samples.append((stats.count, rss_end))
        health = httpx.get(url + "/healthz").json()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": model_note,
        "model_info": {k: info.get(k) for k in ("name", "mode", "backbone", "input_size", "method")},
        "server": {"threads": args.threads, "cache_size": args.cache_size, "bind": "127.0.0.1"},
        "clients": {"concurrency": args.concurrency, "requests_asked": args.requests,
                    "duration_limit_s": args.duration,
                    "mix": "per client: POST /v1/images, then queries with changing vocabularies "
                           "(threshold 0.02, up to 300 detections with RLE masks); every 10th "
                           "request POST /v1/detect (multipart); 24 ShapeWorld scenes of 128 px"},
        "warmup": {"requests": warm.count, "errors": warm.error_count, "seconds": round(warm_s, 1)},
        **summarise(stats, seconds),
        "memory": {
            "rss_mb_after_warmup": round(rss_start, 1),
            "rss_mb_end": round(rss_end, 1),
            "growth_mb": round(rss_end - rss_start, 1),
            "samples": [[n, round(m, 1)] for n, m in samples],
        },
        "cache_at_end": health.get("cache"),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    save_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("requests", "requests_per_s", "p50_ms", "p95_ms", "errors")}))
    print(f"memory: {rss_start:.0f} MB after warm-up -> {rss_end:.0f} MB after {stats.count} requests")
    print(f"wrote {args.out}")
    return 0 if stats.error_count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
