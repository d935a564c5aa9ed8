"""The teacher-tower trunk benchmarks: dense region embeddings and the distilled head."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.teacher_trunk_probe import DenseTeacher, new_head, train_distilled  # noqa: E402
from benchmarks.teacher_trunk_rows import DenseRegionEncoder  # noqa: E402


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
    factors = [1.0, 2.0, 4.0]
    torch.manual_seed(1)
    head = new_head(dense.reader(factors, grid=2).out_dim, dense.teacher.embed_dim).eval()
    for h in (None, head):
        emb = DenseRegionEncoder(dense, factors, h).encode_regions(image, boxes)
        assert emb.shape == (3, dense.teacher.embed_dim)
        assert torch.isfinite(emb).all()
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)


def test_zero_shot_of_a_crop_sized_box_follows_the_teacher_on_that_crop(dense):
    """A 64 px image read whole at x1 is the teacher's own input; the zero-shot reading of its
    full box must be far closer to the teacher's embedding of it than to another image's."""
    images = torch.zeros(2, 3, 64, 64)
    images[0, :, :, :32] = 1  # a white left half
    images[1, 0, 16:48, 16:48] = 1  # a red square
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    encoder = DenseRegionEncoder(dense, [1.0], None)
    ours = torch.cat([encoder.encode_regions(img, box) for img in images])
    teacher = torch.cat([dense.teacher.encode_regions(img, box) for img in images])
    cos = ours @ teacher.T
    assert cos[0, 0] > cos[0, 1] + 0.02 and cos[1, 1] > cos[1, 0] + 0.02  # measured: 0.998 against 0.921


def test_distilled_head_learns_a_linear_target():
    torch.manual_seed(0)
    feats = torch.randn(4000, 32)
    targets = F.normalize(feats[:, :16] @ torch.randn(16, 8), dim=-1)
    image_of = torch.arange(4000) // 50  # 80 images of 50 proposals
    head = train_distilled(feats.half(), targets.half(), image_of, 70, steps=300)
    with torch.no_grad():
        held = image_of >= 70
        cosine = float((head(feats[held]) * targets[held]).sum(1).mean())
    assert cosine > 0.9  # 0.02 untrained
