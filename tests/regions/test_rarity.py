import pytest
import torch
import torch.nn.functional as F

from vild.errors import VildError
from vild.regions.rarity import density_counts, rarity_weights


class _Store:
    """Image 1: 60 proposals of one look (a frequent category); image 2: 3 scattered looks."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        centre = F.normalize(torch.randn(1, 16, generator=g), dim=-1)
        self.entries = {
            1: F.normalize(centre + 0.01 * torch.randn(60, 16, generator=g), dim=-1),
            2: F.normalize(torch.randn(3, 16, generator=g), dim=-1),
            3: torch.zeros(0, 16),
        }

    @property
    def image_ids(self):
        return list(self.entries)

    def get(self, image_id):
        emb = self.entries.get(image_id)
        return None if emb is None else (torch.zeros(len(emb), 4), torch.ones(len(emb)), emb)


def test_density_counts_count_neighbours_above_threshold():
    x = torch.eye(3)
    ref = torch.stack([torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])])
    assert density_counts(x, ref, 0.5, chunk=2).tolist() == [2.0, 1.0, 0.0]


def test_rare_looks_weigh_more_and_weights_average_one():
    store = _Store()
    w = rarity_weights(store, power=1.0, threshold=0.8)
    assert set(w) == {1, 2} and len(w[1]) == 60 and len(w[2]) == 3
    assert float(w[2].min()) > 10 * float(w[1].max())  # an isolated look against one of 60 alike
    assert torch.cat([w[1], w[2]]).mean().item() == pytest.approx(1.0, rel=1e-5)
    half = rarity_weights(store, power=0.5, threshold=0.8)
    assert float(half[2].min() / half[1].max()) < float(w[2].min() / w[1].max())  # milder
    assert all(torch.equal(a, b) for a, b in zip(w.values(), rarity_weights(store, power=1.0).values()))


def test_power_zero_is_uniform_and_bad_arguments_are_refused():
    w = rarity_weights(_Store(), power=0.0)
    assert torch.equal(torch.cat(list(w.values())), torch.ones(63))
    with pytest.raises(VildError, match="power"):
        rarity_weights(_Store(), power=-1)
    with pytest.raises(VildError, match="threshold"):
        rarity_weights(_Store(), power=1, threshold=1.5)


def test_streamed_weights_equal_the_formula_on_all_proposals_at_once():
    """The store is read image by image; the weights are those of the formula computed on every
    proposal in memory, with the reference drawn from them in store order."""
    store = _Store()
    w = rarity_weights(store, power=0.7, threshold=0.5, reference_size=20, seed=3)
    emb = torch.cat([store.entries[1], store.entries[2]])
    pick = torch.randperm(len(emb), generator=torch.Generator().manual_seed(3))[:20]
    want = (1 + density_counts(emb, emb[pick], 0.5)).pow(-0.7)
    torch.testing.assert_close(torch.cat([w[1], w[2]]), want / want.mean())
