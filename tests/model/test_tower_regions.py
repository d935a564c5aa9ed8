"""Region features read from a frozen tower's feature map: scale choice, batching, freezing."""

import pytest
import torch

from vild.model.tower_regions import TowerRegionFeatures, nearest_scale


def test_nearest_scale_brings_each_box_nearest_the_crop_size():
    factors = torch.tensor([1.0, 2.0, 4.0, 6.0])
    sizes = torch.tensor([10.0, 16.0, 32.0, 64.0, 100.0, 0.0])
    # 10 px x 6 = 60; 16 x 4 = 64; 32 x 2 = 64; 64 x 1; 100 x 1 is nearest 64; 0 px counts as 1 px
    assert nearest_scale(sizes, factors, 64).tolist() == [3, 2, 1, 0, 0, 3]


@pytest.fixture(scope="module")
def tower():
    from vild.teacher.cnn import ShapeWorldCNN

    torch.manual_seed(0)
    trunk = ShapeWorldCNN(widths=(8, 8, 16, 16))  # stride 16: a 4x4 map on a 64 px crop
    return TowerRegionFeatures(trunk, crop_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                               factors=(1.0, 2.0, 4.0))


def test_shapes_and_map_geometry(tower):
    assert (tower.map_size, tower.stride, tower.channels) == (4, 16.0, 16)
    assert tower.out_dim == 2 * 16 * 2 * 2
    images = torch.rand(2, 3, 48, 64)
    boxes = [torch.tensor([[2.0, 2.0, 20.0, 30.0], [40.0, 30.0, 70.0, 60.0]]), torch.zeros(0, 4)]
    out = tower(images, boxes)
    assert out.shape == (2, tower.out_dim) and torch.isfinite(out).all()
    assert tower(images, [torch.zeros(0, 4), torch.zeros(0, 4)]).shape == (0, tower.out_dim)


def test_each_box_gets_what_it_gets_alone_in_any_batch(tower):
    """Boxes of different sizes (read at different upsamplings) and images batched together
    give every box exactly the features it gets alone."""
    images = torch.rand(2, 3, 64, 64)
    a = torch.tensor([[8.0, 8.0, 20.0, 20.0], [0.0, 0.0, 60.0, 60.0]])
    b = torch.tensor([[30.0, 10.0, 62.0, 40.0]])
    together = tower(images, [a, b])
    alone = torch.cat([tower(images[:1], [a[:1]]), tower(images[:1], [a[1:]]), tower(images[1:], [b])])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_features_depend_on_the_image_under_the_box(tower):
    images = torch.rand(1, 3, 64, 64)
    box = [torch.tensor([[0.0, 0.0, 24.0, 24.0]])]
    changed = images.clone()
    changed[..., :24, :24] = 1 - changed[..., :24, :24]
    assert not torch.allclose(tower(images, box), tower(changed, box))


def test_the_tower_stays_frozen_in_train_mode(tower):
    tower.train()
    assert not tower.trunk.training
    assert not any(p.requires_grad for p in tower.parameters())
    tower.eval()


def test_bad_input_is_refused(tower):
    with pytest.raises(ValueError, match="B box tensors"):
        tower(torch.rand(2, 3, 32, 32), [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="positive"):
        TowerRegionFeatures(tower.trunk, crop_size=64, mean=(0, 0, 0), std=(1, 1, 1), factors=(0.0,))
