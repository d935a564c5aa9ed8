"""Region-embedding store: full run, fp16 round trip, resume after a kill, corruption, refusal."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from vild.errors import VildError
from vild.regions import RegionStore, embed_regions, select_proposals

DIM = 24


def image_key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


class FakeProposer:
    """Deterministic proposals from the image content: 20 random boxes (some degenerate or
    sticking out of the image) with random scores; image 3 of the list gets none."""

    def __init__(self, empty_keys=(), fail_after: int | None = None):
        self.empty_keys = set(empty_keys)
        self.fail_after = fail_after
        self.seen: list[str] = []

    def __call__(self, images):
        out = []
        for image in images:
            key = image_key(image)
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise RuntimeError("simulated kill (proposer)")
            self.seen.append(key)
            if key in self.empty_keys:
                out.append((torch.zeros(0, 4), torch.zeros(0)))
                continue
            g = torch.Generator().manual_seed(int(key[:8], 16))
            h, w = image.shape[-2:]
            xy = torch.rand(20, 2, generator=g) * torch.tensor([w, h])
            wh = torch.rand(20, 2, generator=g) * torch.tensor([w, h]) * 0.6 + 0.3
            boxes = torch.cat([xy, xy + wh], 1)
            boxes[0] = torch.tensor([-5.0, -5.0, w + 5.0, h + 5.0])  # clipped to the image
            boxes[1] = torch.tensor([2.0, 2.0, 2.2, 9.0])  # degenerate: dropped
            out.append((boxes, torch.rand(20, generator=g)))
        return out


class FakeTeacher:
    """`encode_regions` = a fixed random projection of (box geometry, mean colour of the crop).
    Counts calls and which images were embedded; can raise after `fail_after` images."""

    name = "fake"
    crop_scales = (1.0, 1.5)

    def __init__(self, identity: str = "fake-teacher-1", fail_after: int | None = None):
        self.identity = identity
        self.embed_dim = DIM
        self.fail_after = fail_after
        self.calls = 0
        self.embedded: list[str] = []
        self.proj = torch.randn(7, DIM, generator=torch.Generator().manual_seed(0))

    def raw(self, image, boxes):
        h, w = image.shape[-2:]
        feats = []
        for x1, y1, x2, y2 in boxes.tolist():
            crop = image[:, int(y1):max(int(y2), int(y1) + 1), int(x1):max(int(x2), int(x1) + 1)]
            feats.append(torch.cat([torch.tensor([x1 / w, y1 / h, x2 / w, y2 / h]),
                                    crop.mean((1, 2))]))
        return torch.stack(feats) @ self.proj

    def encode_regions(self, image, boxes):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated kill (teacher)")
        self.calls += 1
        self.embedded.append(image_key(image))
        return F.normalize(self.raw(image, boxes), dim=-1)


def make_items(n: int = 11):
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        h, w = 24 + 3 * (i % 4), 30 + 5 * (i % 3)
        items.append((1000 + 7 * i, torch.rand(3, h, w, generator=g)))
    return items


def shard_digests(path):
    manifest = json.loads((path / "manifest.json").read_text())
    return [(s["file"], s["sha256"], s["image_ids"]) for s in manifest["shards"]]


KW = dict(num_proposals=8, shard_size=4, progress=False)


def test_full_run_round_trip(tmp_path):
    items = make_items()
    empty = {image_key(items[3][1])}
    teacher = FakeTeacher()
    store = embed_regions(items, FakeProposer(empty), teacher, tmp_path / "store",
                          metadata={"rpn": "abc"}, batch_size=3, **KW)
    assert isinstance(store, RegionStore)
    assert store.complete and len(store) == len(items)
    assert store.image_ids == [i for i, _ in items]
    assert teacher.calls == len(items) - 1  # the image without proposals is not embedded
    m = store.manifest
    assert m["teacher"]["identity"] == "fake-teacher-1" and m["embed_dim"] == DIM
    assert m["num_proposals"] == 8 and m["crop_scales"] == [1.0, 1.5]
    assert m["metadata"] == {"rpn": "abc"} and m["complete"] is True
    assert [len(s["image_ids"]) for s in m["shards"]] == [4, 4, 3]
    assert not list((tmp_path / "store").glob("*.part-*")) and not list((tmp_path / "store").glob(".*"))

    max_err = 0.0
    for image_id, image in items:
        assert image_id in store
        boxes, scores, emb = store.get(image_id)
        if image_id == items[3][0]:
            assert boxes.shape == (0, 4) and scores.shape == (0,) and emb.shape == (0, DIM)
            continue
        raw_boxes, raw_scores = FakeProposer()([image])[0]
        eb, es = select_proposals(raw_boxes, raw_scores, tuple(image.shape[-2:]), num_proposals=8)
        assert boxes.shape == (8, 4) and emb.shape == (8, DIM) and emb.dtype == torch.float32
        assert torch.equal(boxes, eb) and torch.equal(scores, es)
        assert bool((scores[:-1] >= scores[1:]).all())
        assert boxes[:, 2].max() <= image.shape[-1] and boxes.min() >= 0
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(8))
        expected = F.normalize(teacher.raw(image, eb), dim=-1)
        max_err = max(max_err, float((emb - expected).abs().max()))
    assert max_err < 2e-3  # float16 storage
    assert 123456 not in store and store.get(123456) is None
    with pytest.raises(KeyError):
        store[123456]

    # storage: float16 embeddings + float32 boxes/scores + small headers
    assert store.storage_bytes() < 10 * 8 * (DIM * 2 + 20) + 3 * 2000

    # an unchanged rerun resumes into a complete store and embeds nothing
    t2 = FakeTeacher()
    embed_regions(items, FakeProposer(empty), t2, tmp_path / "store", metadata={"rpn": "abc"}, **KW)
    assert t2.calls == 0


@pytest.mark.parametrize("kill", ["teacher", "proposer"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, kill):
    items = make_items()
    ref = embed_regions(items, FakeProposer(), FakeTeacher(), tmp_path / "ref", batch_size=1, **KW)

    out = tmp_path / "killed"
    k = 6  # dies in the middle of the second shard
    t1 = FakeTeacher(fail_after=k if kill == "teacher" else None)
    p1 = FakeProposer(fail_after=k if kill == "proposer" else None)
    with pytest.raises(RuntimeError, match="simulated kill"):
        embed_regions(items, p1, t1, out, batch_size=1, **KW)
    partial = RegionStore(out)
    assert not partial.complete and len(partial) == 4  # the first shard is readable
    # a stray temp file of a write that never finished
    (out / ".shard-00002.safetensors.abc.tmp").write_bytes(b"garbage")

    t2 = FakeTeacher()
    store = embed_regions(items, FakeProposer(), t2, out, batch_size=1, **KW)
    assert store.complete
    assert shard_digests(out) == shard_digests(tmp_path / "ref")
    embedded = t1.embedded + t2.embedded
    assert len(embedded) == len(set(embedded)) == len(items)  # nothing embedded twice
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.part-*"))
    for image_id, _ in items:
        for a, b in zip(store.get(image_id), ref.get(image_id)):
            assert torch.equal(a, b)


def test_resume_with_bigger_batches_and_a_torn_checkpoint(tmp_path):
    items = make_items()
    ref = embed_regions(items, FakeProposer(), FakeTeacher(), tmp_path / "ref", batch_size=2, **KW)
    out = tmp_path / "out"
    t1 = FakeTeacher(fail_after=7)
    with pytest.raises(RuntimeError):
        embed_regions(items, FakeProposer(), t1, out, batch_size=2, **KW)
    parts = sorted(out.glob("*.part-*"))
    assert parts  # the second shard has a checkpoint
    parts[-1].write_bytes(parts[-1].read_bytes()[:-10])  # torn: must be ignored and redone
    t2 = FakeTeacher()
    embed_regions(items, FakeProposer(), t2, out, batch_size=3, **KW)
    assert shard_digests(out) == shard_digests(tmp_path / "ref")
    # run 1: shard 0 (4 images) + the checkpointed batch (4, 5) + image 6 of the batch in flight;
    # run 2 redoes the torn checkpoint (4, 5) and everything after it
    assert t1.calls == 7 and t2.calls == len(items) - 4


def test_corrupt_and_missing_shards(tmp_path):
    items = make_items()
    out = tmp_path / "store"
    embed_regions(items, FakeProposer(), FakeTeacher(), out, **KW)
    shard1 = out / "shard-00001.safetensors"
    good = shard1.read_bytes()

    # flipped byte inside the embeddings: size is right, checksum is not
    bad = bytearray(good)
    bad[-5] ^= 0xFF
    shard1.write_bytes(bytes(bad))
    with pytest.raises(VildError, match="shard-00001"):
        RegionStore(out).verify_all()
    with pytest.raises(VildError, match="shard-00001"):
        RegionStore(out, verify=True).get(items[5][0])
    # resuming re-embeds exactly that shard and restores the same bytes
    t = FakeTeacher()
    embed_regions(items, FakeProposer(), t, out, **KW)
    assert t.calls == 4 and shard1.read_bytes() == good

    # truncated: caught without a checksum
    shard1.write_bytes(good[:-100])
    with pytest.raises(VildError, match="shard-00001"):
        RegionStore(out).get(items[4][0])
    assert RegionStore(out).get(items[0][0]) is not None  # other shards still fine

    # garbage of the right size: caught by the header parser
    shard1.write_bytes(b"\x07" * len(good))
    with pytest.raises(VildError, match="shard-00001"):
        RegionStore(out).get(items[4][0])

    shard1.unlink()
    with pytest.raises(VildError, match="shard-00001"):
        RegionStore(out).get(items[4][0])

    with pytest.raises(VildError, match="not a region store"):
        RegionStore(tmp_path)


def test_resume_refuses_a_different_teacher_or_settings(tmp_path):
    items = make_items(5)
    out = tmp_path / "store"
    t1 = FakeTeacher(fail_after=3)
    with pytest.raises(RuntimeError):
        embed_regions(items, FakeProposer(), t1, out, **KW)
    with pytest.raises(VildError, match="teacher"):
        embed_regions(items, FakeProposer(), FakeTeacher(identity="other"), out, **KW)
    with pytest.raises(VildError, match="num_proposals"):
        embed_regions(items, FakeProposer(), FakeTeacher(), out, **{**KW, "num_proposals": 9})
    with pytest.raises(VildError, match="images"):
        embed_regions(items[:4], FakeProposer(), FakeTeacher(), out, **KW)
    with pytest.raises(VildError, match="metadata"):
        embed_regions(items, FakeProposer(), FakeTeacher(), out, metadata={"rpn": "x"}, **KW)
    # resume=False rebuilds from scratch with the new teacher
    t = FakeTeacher(identity="other")
    store = embed_regions(items, FakeProposer(), t, out, resume=False, **KW)
    assert t.calls == 5 and store.teacher_identity == "other" and store.complete


def test_fp16_round_trip_error_is_small(tmp_path):
    g = torch.Generator().manual_seed(0)
    dim = 512
    emb = F.normalize(torch.randn(300, dim, generator=g), dim=-1)

    class T(FakeTeacher):
        def encode_regions(self, image, boxes):
            self.calls += 1
            return emb[: boxes.shape[0]]

    teacher = T()
    teacher.embed_dim = dim

    def proposer(images):
        return [(torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(300, 1) + torch.arange(300)[:, None] * 0.01,
                 torch.linspace(1, 0, 300)) for _ in images]

    store = embed_regions([(1, torch.rand(3, 32, 32))], proposer, teacher, tmp_path / "s",
                          progress=False)
    _, _, back = store.get(1)
    assert back.dtype == torch.float32 and back.shape == (300, dim)
    assert float((back - emb).abs().max()) < 5e-4
    cos = (back * emb).sum(-1)
    assert float(cos.min()) > 1 - 1e-5
    size = store.storage_bytes()
    assert 300 * dim * 2 < size < 300 * dim * 2 + 300 * 20 + 4096  # ~ 2 bytes per dimension


def test_dataset_reads_the_store_and_transforms_move_distill_boxes(tmp_path):
    import numpy as np
    from PIL import Image

    from vild.data.detection import DetectionDataset
    from vild.data.transforms import TrainTransform

    (tmp_path / "img").mkdir()
    images = []
    for i in range(3):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 24, "width": 32})
    ann = {"images": images, "categories": [{"id": 1, "name": "a"}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0,
         "area": 100, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = DetectionDataset(tmp_path / "img", tmp_path / "ann.json")
    teacher = FakeTeacher()
    store = embed_regions(ds, FakeProposer(), teacher, tmp_path / "store", **KW)
    assert len(store) == 3 and teacher.calls == 3
    # items given as (image_id, path): only two images, so the dataset gets P = 0 for the third
    partial = embed_regions([(1, tmp_path / "img" / "0.png"), (2, tmp_path / "img" / "1.png")],
                            FakeProposer(), teacher, tmp_path / "partial", **KW)
    for i in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(partial.get(i), store.get(i)))
    ds3 = DetectionDataset(tmp_path / "img", tmp_path / "ann.json", region_store=partial)
    _, t3 = ds3[2]
    assert t3["distill_boxes"].shape == (0, 4) and t3["distill_embeddings"].shape == (0, DIM)
    ds = DetectionDataset(tmp_path / "img", tmp_path / "ann.json", region_store=tmp_path / "store")
    _, t = ds[0]
    boxes, _, emb = store.get(1)
    assert torch.equal(t["distill_boxes"], boxes) and torch.equal(t["distill_embeddings"], emb)

    ds.transform = TrainTransform(48, scale_range=(1.5, 1.5), hflip_prob=1.0)
    _, tt = ds.__getitem__(0)
    assert tt["distill_boxes"].shape[0] == tt["distill_embeddings"].shape[0] > 0
    # scale 1.5 x (48/32) -> image 54x72 cropped at 48: every kept box lies inside
    assert float(tt["distill_boxes"].max()) <= 48


def test_workers_and_progress_bar(tmp_path, capsys):
    items = make_items(6)
    ref = embed_regions(items, FakeProposer(), FakeTeacher(), tmp_path / "ref", **KW)
    store = embed_regions(items, FakeProposer(), FakeTeacher(), tmp_path / "w", num_workers=2,
                          batch_size=2, **{**KW, "progress": True})
    assert shard_digests(tmp_path / "w") == shard_digests(tmp_path / "ref")
    assert "crops/s" in capsys.readouterr().err
    assert store.image_ids == ref.image_ids


def tiny_teacher():
    from vild.teacher.arch import create_clip
    from vild.teacher.teacher import Teacher

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model, tokenizer, cfg = create_clip(cfg)
    return Teacher(model, tokenizer, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                   model_cfg=cfg, identity="tiny-test-teacher")


def test_with_a_tiny_open_clip_teacher(tmp_path):
    teacher = tiny_teacher()
    items = make_items(5)
    store = embed_regions(items, FakeProposer(), teacher, tmp_path / "s", batch_size=2, **KW)
    assert store.embed_dim == teacher.embed_dim == 16
    assert store.teacher_identity == teacher.identity
    for image_id, image in items:
        boxes, _, emb = store.get(image_id)
        direct = teacher.encode_regions(image, boxes)
        torch.testing.assert_close(emb, direct, atol=2e-3, rtol=0)
