"""The teacher-tower trunk probe: scale choice, dense region embeddings, the distilled head."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.teacher_trunk_probe import DenseTeacher, nearest_scale, per_box_pooled, train_distilled  # noqa: E402
from benchmarks.teacher_trunk_rows import DenseRegionEncoder  # noqa: E402


def test_nearest_scale_brings_each_box_nearest_the_crop_size():
    factors = torch.tensor([1.0, 2.0, 4.0, 6.0])
    sizes = torch.tensor([10.0, 16.0, 32.0, 64.0, 100.0, 0.0])
    # 10 px x 6 = 60; 16 x 4 = 64; 32 x 2 = 64; 64 x 1; 100 x 1 is nearest 64; 0 px counts as 1 px
    assert nearest_scale(sizes, factors, 64).tolist() == [3, 2, 1, 0, 0, 3]


@pytest.fixture(scope="module")
def dense():
    from vild.teacher import Teacher, create_clip

    torch.manual_seed(0)
    model, tokenizer, cfg = create_clip()  # the ShapeWorld CNN tower, random weights
    teacher = Teacher(model.eval(), tokenizer, image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      model_cfg=cfg, name="random-cnn")
    return DenseTeacher(teacher)


def test_dense_embeddings_are_unit_vectors_for_boxes_inside_and_across_the_border(dense):
    assert dense.map_size * dense.stride == 64
    image = torch.rand(3, 96, 128)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0], [100.0, 70.0, 140.0, 110.0], [5.0, 5.0, 5.0, 5.0]])
    factors = torch.tensor([1.0, 2.0, 4.0])
    for head in (None, _head(dense)):
        emb = DenseRegionEncoder(dense, factors, head).encode_regions(image, boxes)
        assert emb.shape == (3, dense.teacher.embed_dim)
        assert torch.isfinite(emb).all()
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)


def test_a_box_is_read_at_its_own_scale_only(dense):
    """Pooling two boxes together gives each the features it gets alone (per-box scale choice)."""
    image = torch.rand(3, 64, 64)
    small, large = torch.tensor([[8.0, 8.0, 20.0, 20.0]]), torch.tensor([[0.0, 0.0, 60.0, 60.0]])
    factors = torch.tensor([1.0, 4.0])
    both = per_box_pooled(dense, image, torch.cat([small, large]), factors)
    alone = torch.cat([per_box_pooled(dense, image, small, factors), per_box_pooled(dense, image, large, factors)])
    torch.testing.assert_close(both, alone)
    assert both.shape == (2, 2 * dense.trunk.num_features * 4)


def test_distilled_head_learns_a_linear_target():
    torch.manual_seed(0)
    feats = torch.randn(4000, 32)
    targets = F.normalize(feats[:, :16] @ torch.randn(16, 8), dim=-1)
    image_of = torch.arange(4000) // 50  # 80 images of 50 proposals
    head = train_distilled(feats.half(), targets.half(), image_of, 70, steps=300)
    with torch.no_grad():
        held = image_of >= 70
        cosine = float((head(feats[held]) * targets[held]).sum(1).mean())
    assert cosine > 0.9


def _head(dense):
    from benchmarks.teacher_trunk_probe import Head

    torch.manual_seed(1)
    return Head(2 * dense.trunk.num_features * 4, dense.teacher.embed_dim).eval()
