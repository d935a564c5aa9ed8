"""Teacher encoders: shapes, normalisation, ViLD 1x + 1.5x region embeddings, batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vild.teacher.crops import crop_and_resize, expand_boxes


def test_text_and_image_shapes_and_norms(tiny_teacher):
    t = tiny_teacher.encode_text(["a star", "a red circle with stripes"])
    i = tiny_teacher.encode_images(torch.rand(3, 3, 50, 70))
    assert t.shape == (2, 32) and i.shape == (3, 32)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(i.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert tiny_teacher.embed_dim == 32


def test_region_embedding_is_the_normalised_sum_of_both_crops(tiny_teacher):
    image = torch.rand(3, 48, 64)
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [0.0, 0.0, 10.0, 12.0], [50.0, 30.0, 64.0, 48.0]])
    out = tiny_teacher.encode_regions(image, boxes)
    assert out.shape == (3, 32)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)

    norm = tiny_teacher.normalize(image)
    embs = []
    for scale in (1.0, 1.5):
        crops = crop_and_resize(norm, expand_boxes(boxes, scale), 32)
        with torch.no_grad():
            embs.append(F.normalize(tiny_teacher.model.encode_image(crops), dim=-1))
    expected = F.normalize(embs[0] + embs[1], dim=-1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_region_of_the_whole_image_matches_encode_images_at_1x(tiny_teacher):
    image = torch.rand(3, 32, 32)
    crops = tiny_teacher.region_crops(image, torch.tensor([[0.0, 0.0, 32.0, 32.0]]))
    assert crops.shape == (2, 1, 3, 32, 32)
    assert torch.allclose(crops[0, 0], tiny_teacher.preprocess(image[None])[0], atol=1e-5)
    # outside the image the 1.5x crop holds the mean colour: exactly 0 after normalisation
    assert torch.allclose(crops[1, 0, :, :4, :], torch.zeros(3, 4, 32), atol=1e-5)


def test_batch_size_does_not_change_the_result(tiny_teacher):
    image = torch.rand(3, 40, 40)
    boxes = torch.rand(7, 2) * 20
    boxes = torch.cat([boxes, boxes + torch.rand(7, 2) * 20 + 1], dim=1)
    a = tiny_teacher.encode_regions(image, boxes, batch_size=1)
    b = tiny_teacher.encode_regions(image, boxes, batch_size=3)
    c = tiny_teacher.encode_regions(image, boxes, batch_size=100)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_batch_over_images_of_different_sizes(tiny_teacher):
    images = [torch.rand(3, 40, 40), torch.rand(3, 20, 50), torch.rand(3, 30, 30)]
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 40.0, 30.0]]), torch.zeros(0, 4),
             torch.tensor([[5.0, 5.0, 25.0, 25.0]])]
    out = tiny_teacher.encode_regions_batch(images, boxes, batch_size=2)
    assert [o.shape for o in out] == [(2, 32), (0, 32), (1, 32)]
    for img, b, o in zip(images, boxes, out):
        assert torch.allclose(o, tiny_teacher.encode_regions(img, b), atol=1e-5)


def test_degenerate_and_empty_boxes_do_not_crash(tiny_teacher):
    image = torch.rand(3, 20, 20)
    boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0], [12.0, 3.0, 2.0, 9.0], [-30.0, -30.0, -10.0, -10.0]])
    out = tiny_teacher.encode_regions(image, boxes)
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    assert tiny_teacher.encode_regions(image, torch.zeros(0, 4)).shape == (0, 32)


def test_inputs_are_not_modified(tiny_teacher):
    image = torch.rand(3, 20, 20)
    boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0]])
    image0, boxes0 = image.clone(), boxes.clone()
    tiny_teacher.encode_regions(image, boxes)
    assert torch.equal(image, image0) and torch.equal(boxes, boxes0)


@pytest.mark.parametrize("image, boxes, error", [
    (torch.rand(20, 20, 3), torch.zeros(1, 4), ValueError),          # HWC
    ((torch.rand(3, 20, 20) * 255).byte(), torch.zeros(1, 4), ValueError),  # uint8
    (torch.rand(3, 20, 20), torch.zeros(1, 5), ValueError),          # not xyxy
    (torch.rand(3, 20, 20), torch.tensor([[0.0, 0.0, float("inf"), 1.0]]), ValueError),
])
def test_bad_inputs(tiny_teacher, image, boxes, error):
    with pytest.raises(error):
        tiny_teacher.encode_regions(image, boxes)


def test_batch_argument_checks(tiny_teacher):
    with pytest.raises(ValueError):
        tiny_teacher.encode_regions_batch([torch.rand(3, 8, 8)], [])
    with pytest.raises(ValueError):
        tiny_teacher.encode_regions(torch.rand(3, 8, 8), torch.zeros(1, 4), batch_size=0)
