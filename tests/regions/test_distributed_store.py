"""embed_regions with 2 gloo ranks: the same store as one process; a run that dies on one
rank resumes shard by shard (with any number of processes)."""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing as mp

from tests.regions.test_region_store import FakeProposer, FakeTeacher, make_items, shard_digests
from vild.regions import RegionStore, embed_regions

KW = dict(num_proposals=8, shard_size=2, batch_size=1, progress=False)
N = 9  # 5 shards: ranks 0 and 1 take shards 0, 2, 4 and 1, 3


def _worker(rank: int, world: int, init: str, out: str, fail_rank: int, fail_after: int, log: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    teacher = FakeTeacher(fail_after=fail_after if rank == fail_rank else None)
    try:
        store = embed_regions(make_items(N), FakeProposer(), teacher, out, **KW)
        result = {"ok": True, "images": len(store), "complete": store.complete}
    except Exception as e:  # noqa: BLE001 - reported to the test
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        dist.destroy_process_group()
    result["embedded"] = teacher.embedded
    with open(f"{log}.{rank}", "w") as f:
        json.dump(result, f)


def _spawn(tmp_path, out, fail_rank=-1, fail_after=0, name="run"):
    init = f"file://{tmp_path / (name + '.rendezvous')}"
    log = str(tmp_path / name)
    mp.spawn(_worker, args=(2, init, str(out), fail_rank, fail_after, log), nprocs=2, join=True)
    return [json.loads(open(f"{log}.{r}").read()) for r in range(2)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    embed_regions(make_items(N), FakeProposer(), FakeTeacher(), out, **KW)
    return out


def test_two_ranks_write_the_single_process_store(tmp_path, reference):
    out = tmp_path / "two"
    results = _spawn(tmp_path, out)
    assert all(r["ok"] and r["complete"] and r["images"] == N for r in results)
    assert len(results[0]["embedded"]) == 5 and len(results[1]["embedded"]) == 4  # shards 0,2,4 / 1,3
    assert json.loads((out / "manifest.json").read_text()) == json.loads((reference / "manifest.json").read_text())
    for k in range(5):
        name = f"shard-{k:05d}.safetensors"
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


@pytest.mark.parametrize("resume_ranks", [1, 2])
def test_a_rank_failure_resumes_shard_by_shard(tmp_path, reference, resume_ranks):
    out = tmp_path / "store"
    # rank 1 dies after 3 images: it finished shard 1 and half of shard 3; rank 0 finished all
    results = _spawn(tmp_path, out, fail_rank=1, fail_after=3, name="killed")
    assert not results[0]["ok"] and "another rank" in results[0]["error"]
    assert not results[1]["ok"] and "simulated kill" in results[1]["error"]
    partial = json.loads((out / "manifest.json").read_text())
    assert partial["complete"] is False
    before = len(results[0]["embedded"]) + len(results[1]["embedded"])
    assert before == 5 + 3

    if resume_ranks == 1:
        teacher = FakeTeacher()
        store = embed_regions(make_items(N), FakeProposer(), teacher, out, **KW)
        assert store.complete
        again = teacher.embedded
    else:
        again_results = _spawn(tmp_path, out, name="resumed")
        assert all(r["ok"] and r["complete"] for r in again_results)
        again = again_results[0]["embedded"] + again_results[1]["embedded"]
    assert len(again) == N - before  # only the image in flight on rank 1 is embedded again
    assert shard_digests(out) == shard_digests(reference)
    assert not list(out.glob("*.entry.json")) and not list(out.glob("*.part-*")) and not list(out.glob(".*"))
    store = RegionStore(out)
    store.verify_all()
