"""The oracle diagnostic's targets: base objects keep their labels, novel ones are ignored by
the RoI sampler (neither foreground nor background)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from distill_ignore_novel import IGNORED, NovelObjectsIgnored  # noqa: E402
from tests.model.conftest import tiny_config  # noqa: E402
from vild.data.detection import DetectionDataset  # noqa: E402
from vild.model import build_detector  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, world_paths  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vild.data.world import make_world

    out = tmp_path_factory.mktemp("world") / "w"
    make_world(out, num_train=24, num_val=2, num_web=1, num_web_val=1, progress=False, workers=1)
    return out


def test_novel_objects_are_ignored_and_base_labels_kept(world):
    paths = world_paths(world)
    vocab = dataset_vocabulary(paths["val"])
    base_ids = [c for c, is_base in zip(vocab["category_ids"], vocab["base"]) if is_base]
    oracle = NovelObjectsIgnored(paths["train_images"], paths["train_base"], category_ids=base_ids, with_masks=False)
    plain = DetectionDataset(paths["train_images"], paths["train_base"], category_ids=base_ids, with_masks=False)
    heads = build_detector(tiny_config(mode="text")).roi_heads
    ignored = mixed = 0
    for i in range(len(plain)):
        target, base_target = oracle[i][1], plain[i][1]
        is_novel = target["labels"] == IGNORED
        ignored += int(is_novel.sum())
        assert torch.equal(target["labels"][~is_novel], base_target["labels"])
        assert torch.equal(target["boxes"][~is_novel], base_target["boxes"])
        if is_novel.any() and not is_novel.all():  # a proposal on a novel object is neither sampled as foreground nor as background
            mixed += 1
            proposal = target["boxes"][is_novel][:1]
            _, _, labels, _ = heads.sample_rois([proposal], [target])
            assert 0 < len(labels[0]) <= int((~is_novel).sum()) and bool((labels[0] >= 1).all())
    assert ignored > 0 and mixed > 0, "the tiny world should show novel objects beside base ones"
