"""Repeat Factor Sampling and the step-based samplers."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from vild.data.sampling import InfiniteSampler, RepeatFactorSampler, ShuffleSampler, repeat_factors


def hand_made_sets():
    # 10 images: category 1 in all, category 2 in one (f = 0.1), category 3 in two (f = 0.2),
    # image 9 has nothing.
    sets = [{1} for _ in range(9)] + [set()]
    sets[0] = {1, 2}
    sets[1] = {1, 3}
    sets[2] = {3}
    return sets


def test_repeat_factors_hand_made():
    sets = hand_made_sets()
    r = repeat_factors(sets, threshold=0.5)
    # f(1) = 0.9 -> 1 ; f(2) = 0.1 -> sqrt(5) ; f(3) = 0.2 -> sqrt(2.5)
    expected = [math.sqrt(5), math.sqrt(2.5), math.sqrt(2.5)] + [1.0] * 7
    torch.testing.assert_close(r, torch.tensor(expected, dtype=torch.float32))
    assert r.dtype == torch.float32 and r.shape == (10,)
    # LVIS threshold: everything here is frequent enough -> all ones
    assert torch.equal(repeat_factors(sets), torch.ones(10))


def test_repeat_factors_from_annotations_and_dataset(tmp_path):
    sets = hand_made_sets()
    images = [{"id": 100 + i, "file_name": f"{i}.png", "height": 4, "width": 4} for i in range(10)]
    anns, k = [], 0
    for i, s in enumerate(sets):
        for c in sorted(s):
            for _ in range(2):  # two instances of the same category count once
                k += 1
                anns.append({"id": k, "image_id": 100 + i, "category_id": c, "bbox": [0, 0, 2, 2],
                             "iscrowd": 0, "area": 4})
    anns.append({"id": 999, "image_id": 109, "category_id": 2, "bbox": [0, 0, 2, 2],
                 "iscrowd": 1, "area": 4})  # crowd: ignored
    data = {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    expected = repeat_factors(sets, threshold=0.5)
    torch.testing.assert_close(repeat_factors(path, threshold=0.5), expected)
    torch.testing.assert_close(repeat_factors(data, threshold=0.5), expected)

    from vild.data.detection import DetectionDataset

    ds = DetectionDataset(tmp_path, path)
    torch.testing.assert_close(repeat_factors(ds, threshold=0.5), expected)
    # on a category subset only the kept annotations count
    ds2 = DetectionDataset(tmp_path, path, category_ids=[1])
    torch.testing.assert_close(repeat_factors(ds2, threshold=0.5), torch.ones(10))


def test_rfs_sampler_deterministic_and_unbiased():
    factors = torch.tensor([1.0, 2.5, 1.2, 3.0, 1.0])
    s1 = RepeatFactorSampler(factors, seed=7)
    s2 = RepeatFactorSampler(factors, seed=7)
    assert list(s1) == list(s2)
    s1.set_epoch(1)
    assert list(s1) != list(s2) or len(list(s1)) != len(list(s2))
    s2.set_epoch(1)
    assert list(s1) == list(s2)
    assert list(RepeatFactorSampler(factors, seed=8)) != list(RepeatFactorSampler(factors, seed=7))

    counts = torch.zeros(5)
    epochs = 400
    for e in range(epochs):
        s1.set_epoch(e)
        idx = list(s1)
        assert len(s1) == len(idx)
        c = torch.bincount(torch.tensor(idx), minlength=5).float()
        # stochastic rounding: floor(r) or ceil(r) copies
        assert bool((c >= factors.floor()).all() and (c <= factors.ceil()).all())
        counts += c
    torch.testing.assert_close(counts / epochs, factors, atol=0.1, rtol=0)

    ordered = RepeatFactorSampler(factors, seed=0, shuffle=False)
    idx = list(ordered)
    assert idx == sorted(idx)


def test_rfs_sampler_ranks_partition_the_epoch():
    factors = torch.tensor([1.0, 2.5, 1.2, 3.0, 1.0, 1.7, 1.0])
    full = RepeatFactorSampler(factors, seed=3)
    order = full.epoch_indices().tolist()
    parts = [list(RepeatFactorSampler(factors, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    merged = [x for trio in zip(*parts) for x in trio]
    assert merged[: len(order)] == order


def test_shuffle_sampler_is_a_permutation():
    s = ShuffleSampler(20, seed=1)
    a = list(s)
    assert sorted(a) == list(range(20)) and a != list(range(20))
    s.set_epoch(1)
    assert sorted(list(s)) == list(range(20)) and list(s) != a
    assert list(ShuffleSampler(5, seed=0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_infinite_sampler_chains_epochs_and_skips():
    base = ShuffleSampler(6, seed=4)
    epochs = []
    for e in range(4):
        base.set_epoch(e)
        epochs += list(base)
    inf = InfiniteSampler(6, seed=4)
    assert list(itertools.islice(iter(inf), 24)) == epochs
    skipped = InfiniteSampler(6, seed=4, start=9)
    assert list(itertools.islice(iter(skipped), 15)) == epochs[9:]

    rfs = RepeatFactorSampler(torch.tensor([1.0, 2.5, 1.5]), seed=2)
    stream = list(itertools.islice(iter(InfiniteSampler(rfs)), 50))
    expected = []
    for e in range(50):
        rfs.set_epoch(e)
        expected += list(rfs)
        if len(expected) >= 50:
            break
    assert stream == expected[:50]

    loader = torch.utils.data.DataLoader(list(range(6)), sampler=InfiniteSampler(6, seed=0),
                                         batch_size=4)
    batches = list(itertools.islice(iter(loader), 3))
    assert [len(b) for b in batches] == [4, 4, 4]

    with pytest.raises(TypeError):
        InfiniteSampler([1, 2, 3])  # type: ignore[arg-type]
