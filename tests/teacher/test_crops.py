"""Crop geometry: 1.5x boxes, roi_align crops, border fill, degenerate boxes."""

from __future__ import annotations

import pytest
import torch

from vild.teacher import crop_and_resize, expand_boxes, region_boxes


def test_expand_boxes_keeps_centres_and_scales_sizes():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]])
    before = boxes.clone()
    out = expand_boxes(boxes, 1.5)
    assert torch.equal(boxes, before)  # pure
    assert out is not boxes
    assert torch.allclose(out, torch.tensor([[5.0, 10.0, 35.0, 70.0], [-1.0, -0.5, 5.0, 2.5]]))
    assert torch.allclose((out[:, :2] + out[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)
    assert torch.allclose(expand_boxes(boxes, 1.0), boxes)


def test_expand_boxes_at_the_border_is_not_clipped():
    out = expand_boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), 1.5)
    assert torch.allclose(out, torch.tensor([[-2.5, -2.5, 12.5, 12.5]]))


def test_degenerate_boxes_get_a_minimum_size():
    boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0], [8.0, 3.0, 2.0, 9.0]])  # zero-size, inverted
    out = expand_boxes(boxes, 1.5, min_size=1.0)
    wh = out[:, 2:] - out[:, :2]
    assert torch.all(wh >= 1.0 - 1e-6)
    assert torch.allclose(out[0], torch.tensor([4.5, 4.5, 5.5, 5.5]))
    assert region_boxes(boxes).shape == (2, 2, 4)


def test_expand_boxes_rejects_bad_input():
    with pytest.raises(ValueError):
        expand_boxes(torch.zeros(3, 3))
    with pytest.raises(ValueError):
        expand_boxes(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError):
        expand_boxes(torch.zeros(1, 4), 0.0)
    assert expand_boxes(torch.zeros(0, 4)).shape == (0, 4)
    assert expand_boxes(torch.tensor([[0, 0, 4, 4]])).dtype == torch.float32  # ints are accepted


def test_full_image_box_reproduces_the_image():
    image = torch.rand(3, 16, 16)
    crop = crop_and_resize(image, torch.tensor([[0.0, 0.0, 16.0, 16.0]]), 16)
    assert crop.shape == (1, 3, 16, 16)
    assert torch.allclose(crop[0], image, atol=1e-5)


def test_crop_picks_the_right_pixels_and_downsamples_by_averaging():
    image = torch.zeros(3, 8, 8)
    image[:, 2:4, 4:8] = 1.0  # a 2 x 4 block
    crop = crop_and_resize(image, torch.tensor([[4.0, 2.0, 8.0, 4.0]]), (2, 4))
    assert torch.allclose(crop, torch.ones(1, 3, 2, 4), atol=1e-5)
    shifted = crop_and_resize(image, torch.tensor([[3.0, 2.0, 7.0, 4.0]]), (2, 4))
    assert torch.allclose(shifted[0, 0], torch.tensor([[0.0, 1, 1, 1], [0, 1, 1, 1]]), atol=1e-5)
    checker = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2
    small = crop_and_resize(checker.float().expand(3, 8, 8), torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 2)
    assert torch.allclose(small, torch.full((1, 3, 2, 2), 0.5), atol=1e-5)  # antialiased


def test_outside_the_image_is_filled():
    image = torch.ones(3, 10, 10)
    box = torch.tensor([[-10.0, 0.0, 10.0, 10.0]])  # left half outside
    crop = crop_and_resize(image, box, 20, fill=(0.2, 0.4, 0.6))[0]
    left, right = crop[:, :, :9], crop[:, :, 11:]
    assert torch.allclose(left, torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand_as(left), atol=1e-5)
    assert torch.allclose(right, torch.ones_like(right))


def test_one_point_five_crop_geometry_at_the_image_corner():
    """A box in the top-left corner: its 1.5x crop is 1/6 fill on the top and left."""
    image = torch.ones(3, 40, 40)
    crops = crop_and_resize(image, region_boxes(torch.tensor([[0.0, 0.0, 12.0, 12.0]])).reshape(-1, 4), 30,
                            fill=0.0)
    one, wide = crops[0], crops[1]
    assert torch.allclose(one, torch.ones_like(one))
    # 1.5x box = [-3, -3, 15, 15]: 3 of 18 px (1/6 = 5 of 30 output px) lie outside, top and left
    assert torch.allclose(wide[:, :4, :], torch.zeros_like(wide[:, :4, :]), atol=1e-5)
    assert torch.allclose(wide[:, :, :4], torch.zeros_like(wide[:, :, :4]), atol=1e-5)
    assert torch.allclose(wide[:, 6:, 6:], torch.ones_like(wide[:, 6:, 6:]), atol=1e-5)


def test_batched_images_and_empty_boxes():
    images = torch.rand(2, 3, 12, 12)
    boxes = [torch.tensor([[0.0, 0.0, 6.0, 6.0]]), torch.tensor([[6.0, 6.0, 12.0, 12.0], [0.0, 0.0, 12.0, 12.0]])]
    crops = crop_and_resize(images, boxes, 6)
    assert crops.shape == (3, 3, 6, 6)
    assert torch.allclose(crops[1], images[1, :, 6:, 6:], atol=1e-5)
    assert crop_and_resize(images[0], torch.zeros(0, 4), 6).shape == (0, 3, 6, 6)
    with pytest.raises(ValueError):
        crop_and_resize(images, torch.zeros(1, 4), 6)  # a batch needs one box tensor per image
    with pytest.raises(ValueError):
        crop_and_resize(torch.rand(12, 12), torch.zeros(1, 4), 6)


def test_zero_size_box_crop_is_finite():
    image = torch.rand(3, 10, 10)
    crops = crop_and_resize(image, region_boxes(torch.tensor([[3.0, 3.0, 3.0, 3.0]])).reshape(-1, 4), 8)
    assert torch.isfinite(crops).all()
