"""The DF-GAN networks: shapes at the boundaries, the sentence embedding's closed form, the
affine fusion's identity start, and the optimizer groups the training loop scales."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pictor.networks.gan import (
    Affine,
    Discriminator,
    GanConfig,
    GanPair,
    Generator,
    sentence_embedding,
)

TINY = GanConfig(generator_channels=[16, 16, 8], discriminator_channels=[8, 16, 16],
                 noise_dim=4, text_dim=6, affine_hidden=8)


def test_sentence_embedding_is_the_normalised_mean_of_real_tokens():
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])   # (1, 3, 2)
    mask = torch.tensor([[True, True, False]])
    want = F.normalize(torch.tensor([[2.0, 2.0]]), dim=-1)
    assert torch.allclose(sentence_embedding(tokens, mask), want)


def test_shapes_and_range():
    torch.manual_seed(0)
    g, d = Generator(TINY), Discriminator(TINY)
    z, s = torch.randn(5, 4), F.normalize(torch.randn(5, 6), dim=-1)
    x = g(z, s)
    assert TINY.image_size == 16 and x.shape == (5, 3, 16, 16)
    assert x.abs().max() <= 1
    assert d(x, s).shape == (5,)


def test_affine_starts_as_the_identity():
    a = Affine(cond_dim=6, channels=3, hidden=4)
    h = torch.randn(2, 3, 5, 5)
    assert torch.equal(a(h, torch.randn(2, 6)), h)


def test_the_text_changes_the_image():
    torch.manual_seed(0)
    g = Generator(TINY)
    for p in g.parameters():  # leave the identity start so the condition acts
        p.data.add_(0.1 * torch.randn_like(p))
    z = torch.randn(1, 4)
    s1, s2 = F.normalize(torch.randn(1, 6), dim=-1), F.normalize(torch.randn(1, 6), dim=-1)
    assert not torch.allclose(g(z, s1), g(z, s2))


def test_optimizer_groups_cover_both_players_once():
    pair = GanPair(TINY, 1.0, 4.0)
    groups = pair.optimizer_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 4.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in pair.parameters())


def test_mismatched_levels_are_a_clear_error():
    with pytest.raises(ValueError, match="as many levels"):
        Discriminator(GanConfig(generator_channels=[8, 8], discriminator_channels=[8, 8, 8]))
