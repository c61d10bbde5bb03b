"""Building blocks against closed forms and naive reference implementations."""

from __future__ import annotations

import math

import pytest
import torch

from pictor.networks.layers import (
    CrossAttention,
    ResBlock,
    SelfAttention,
    TransformerBlock,
    attention,
    position_features,
    timestep_embedding,
)


def naive_attention(q, k, v, key_mask=None):
    """softmax(Q K^T / sqrt(d)) V with masked keys set to -inf (Vaswani et al. 2017, Eq. 1)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, N, L)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_timestep_embedding_matches_closed_form():
    t = torch.tensor([0.0, 1.5, 17.0, 999.0])
    dim, max_period = 8, 10000.0
    emb = timestep_embedding(t, dim, max_period)
    assert emb.shape == (4, dim)
    half = dim // 2
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            w = max_period ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.cos(tb * w), abs=1e-5)
            assert emb[b, half + i].item() == pytest.approx(math.sin(tb * w), abs=1e-5)


def test_timestep_embedding_matches_diffusers():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([0.0, 0.5, 250.0, 999.0])
    ref = embeddings.get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 64), ref)


def test_timestep_embedding_odd_dim_pads_zero_and_rejects_2d():
    emb = timestep_embedding(torch.tensor([3.0]), 7)
    assert emb.shape == (1, 7) and emb[0, -1].item() == 0.0
    with pytest.raises(ValueError, match=r"\(B,\)"):
        timestep_embedding(torch.zeros(2, 1), 8)


def test_attention_equals_naive_softmax_with_mask():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 5, 8, generator=g)
    k = torch.randn(3, 2, 7, 8, generator=g)
    v = torch.randn(3, 2, 7, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, 0]],
                        dtype=torch.bool)
    torch.testing.assert_close(attention(q, k, v, mask), naive_attention(q, k, v, mask))
    torch.testing.assert_close(attention(q, k, v), naive_attention(q, k, v))


def test_attention_row_without_keys_gives_zeros_not_nan():
    q, k, v = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4)
    mask = torch.tensor([[True] * 5, [False] * 5])
    out = attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[0], naive_attention(q, k, v, mask)[0])


def test_self_attention_matches_naive_multihead():
    torch.manual_seed(0)
    layer = SelfAttention(16, num_heads=4)
    x = torch.randn(2, 6, 16)
    q, k, v = (x @ w.T + b for w, b in zip(layer.qkv.weight.chunk(3), layer.qkv.bias.chunk(3),
                                              strict=True))
    split = lambda a: a.view(2, 6, 4, 4).transpose(1, 2)
    ref = naive_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(2, 6, 16)
    torch.testing.assert_close(layer(x), layer.out(ref))


def test_cross_attention_ignores_padding_tokens():
    """Appending masked tokens with arbitrary values must not change the output."""
    torch.manual_seed(0)
    layer = CrossAttention(16, context_dim=12, num_heads=2)
    x = torch.randn(2, 9, 16)
    context = torch.randn(2, 4, 12)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    padded = torch.cat([context, 100 * torch.randn(2, 3, 12)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    short = layer(x[1:], context[1:, :2])  # the second row without its padding at all
    torch.testing.assert_close(layer(x, padded, padded_mask), layer(x, context, mask))
    torch.testing.assert_close(layer(x, context, mask)[1:], short)


def test_zero_init_blocks_start_as_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 4, 4)
    res = ResBlock(32, 32, emb_dim=8, zero_init=True)
    torch.testing.assert_close(res(x, torch.randn(2, 8)), x)
    block = TransformerBlock(32, context_dim=12, num_heads=2, zero_init=True)
    torch.testing.assert_close(block(x, torch.randn(2, 5, 12)), x)


def test_resblock_film_scale_shift():
    """The block computes x + conv2(silu(norm2(h) * (1 + scale) + shift)), h = conv1(silu(norm1(x)))
    and [scale, shift] = emb_proj(silu(emb)) (Dhariwal & Nichol 2021, Sec. 3)."""
    torch.manual_seed(0)
    block = ResBlock(4, 4, emb_dim=3)
    emb = torch.randn(2, 3)
    x = torch.randn(2, 4, 5, 5)
    h = block.norm2(block.conv1(torch.nn.functional.silu(block.norm1(x))))
    scale, shift = block.emb_proj(torch.nn.functional.silu(emb)).chunk(2, dim=1)
    h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    expected = x + block.conv2(torch.nn.functional.silu(h))
    torch.testing.assert_close(block(x, emb), expected)
    with pytest.raises(ValueError, match="embedding"):
        block(x)


def test_position_features_closed_form():
    """Pixel centres at u = (2j + 1) / W - 1; features [sin, cos](pi 2^k u), then the same of v."""
    f = position_features(2, 4, 2)  # H=2, W=4, F=2 -> (8, 8)
    assert f.shape == (8, 8)
    u = torch.tensor([-0.75, -0.25, 0.25, 0.75])
    v = torch.tensor([-0.5, 0.5])
    n = 1 * 4 + 2  # row 1, column 2
    expected = [math.sin(math.pi * u[2]), math.sin(2 * math.pi * u[2]),
                math.cos(math.pi * u[2]), math.cos(2 * math.pi * u[2]),
                math.sin(math.pi * v[1]), math.sin(2 * math.pi * v[1]),
                math.cos(math.pi * v[1]), math.cos(2 * math.pi * v[1])]
    torch.testing.assert_close(f[n], torch.tensor(expected, dtype=torch.float32))
    # a pixel's features depend on where it is, not on the resolution: the centre of the left
    # half of a 2-wide row is the centre of columns 0-1 of a 4-wide one
    torch.testing.assert_close(position_features(1, 2, 1)[0, 0],
                               torch.tensor(math.sin(-math.pi / 2)))
    with pytest.raises(ValueError, match="num_frequencies"):
        position_features(2, 2, 0)


def test_position_embedding_starts_at_zero_and_breaks_translation_symmetry():
    torch.manual_seed(0)
    block = TransformerBlock(16, context_dim=None, num_heads=2, zero_init=True,
                             position_frequencies=3)
    x = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(block(x), x)  # zero-initialised like the residual branches
    # without it, self-attention is permutation-equivariant: a constant map stays constant
    block_plain = TransformerBlock(16, context_dim=None, num_heads=2)
    torch.nn.init.normal_(block.pos.weight)
    block.load_state_dict(block_plain.state_dict() | {"pos.weight": block.pos.weight,
                                                     "pos.bias": block.pos.bias})
    flat = torch.randn(1, 16, 1, 1).expand(1, 16, 4, 4)
    plain_out = block_plain(flat)
    assert torch.allclose(plain_out, plain_out[..., :1, :1].expand_as(plain_out), atol=1e-5)
    out = block(flat)
    assert not torch.allclose(out[..., 0, 0], out[..., 3, 3], atol=1e-3)


def test_text_adapter_mixes_real_tokens_only():
    from pictor.networks.layers import TextAdapter

    torch.manual_seed(0)
    adapter = TextAdapter(16, num_layers=2, num_heads=2)
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    torch.testing.assert_close(adapter(x, mask), x)  # zero-initialised residual branches
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.1)
    out = adapter(x, mask)
    assert not torch.allclose(out, x)
    changed = x.clone()
    changed[0, 4:] = 50.0  # padding: the real tokens' outputs do not move
    torch.testing.assert_close(adapter(changed, mask)[0, :4], out[0, :4])
    changed = x.clone()
    changed[0, 3] = torch.randn(16)  # a real token: every real token's output moves
    assert not torch.allclose(adapter(changed, mask)[0, 0], out[0, 0])


def test_text_adapter_token_positions_make_it_see_word_order():
    from pictor.networks.layers import TextAdapter

    torch.manual_seed(0)
    blind = TextAdapter(16, num_layers=2, num_heads=2)
    ordered = TextAdapter(16, num_layers=2, num_heads=2, max_tokens=8)
    ordered.load_state_dict(blind.state_dict(), strict=False)
    x = torch.randn(1, 6, 16)
    # zero-initialised table: the same function as the order-blind adapter
    torch.testing.assert_close(ordered(x), blind(x))
    for p in blind.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ordered.load_state_dict(blind.state_dict(), strict=False)
    torch.nn.init.normal_(ordered.position, std=0.5)
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    # without positions, self-attention is permutation-equivariant: swapping two words only
    # swaps their outputs, so "A left of B" and "B left of A" read the same to each object
    torch.testing.assert_close(blind(x[:, perm]), blind(x)[:, perm])
    # with them, a word's output depends on where it stands
    assert not torch.allclose(ordered(x[:, perm]), ordered(x)[:, perm], atol=1e-3)
    with pytest.raises(ValueError, match="token positions"):
        ordered(torch.randn(1, 9, 16))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_pointwise_conv_is_a_1x1_convolution_with_or_without_autograd(dtype, tol):
    from pictor.networks.layers import PointwiseConv2d

    torch.manual_seed(0)
    conv = PointwiseConv2d(12, 8).to(dtype)
    assert isinstance(conv, torch.nn.Conv2d) and conv.weight.shape == (8, 12, 1, 1)
    x = torch.randn(3, 12, 5, 4, dtype=dtype)
    want = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double())
    with torch.no_grad():  # the matmul
        torch.testing.assert_close(conv(x).double(), want, rtol=tol, atol=tol)
    out = conv(x)  # the convolution, with gradients
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    out.sum().backward()
    assert conv.weight.grad is not None and conv.bias.grad is not None


@pytest.mark.parametrize("stride,bias", [(1, True), (2, True), (1, False)])
def test_conv_runs_bit_identical_to_f_conv2d_with_its_weights_packed_once(stride, bias):
    """layers.Conv2d in bfloat16 without autograd runs oneDNN's prepacked convolution where the
    build has it: the same bits as F.conv2d at every batch, eager and traced, the weights packed
    once and packed again after they change in place; with autograd it is nn.Conv2d."""
    from pictor.networks.layers import Conv2d, _conv_prepack_available

    torch.manual_seed(0)
    conv = Conv2d(16, 24, 3, stride=stride, padding=1, bias=bias).to(torch.bfloat16)
    f = torch.nn.functional.conv2d

    def reference(x):
        return f(x, conv.weight, conv.bias, stride, 1)

    with torch.no_grad():
        for batch in (1, 2, 5):
            x = torch.randn(batch, 16, 8, 8).to(torch.bfloat16)
            assert torch.equal(conv(x), reference(x))
        packed = conv.__dict__.get("_packed_entry")
        assert (packed is not None) == _conv_prepack_available()
        traced = torch.jit.trace(conv, (x,), check_trace=False)
        assert torch.equal(traced(x), reference(x))
        conv.weight.mul_(-2)  # an in-place update (an optimizer step) repacks
        assert torch.equal(conv(x), reference(x))
        assert conv.__dict__.get("_packed_entry") is not packed or packed is None
    x = torch.randn(2, 16, 8, 8, dtype=torch.bfloat16)
    out = conv(x)  # autograd: nn.Conv2d
    assert torch.equal(out, reference(x))
    out.float().sum().backward()
    assert conv.weight.grad is not None


def test_linear_is_bit_identical_to_f_linear_eager_traced_and_with_autograd():
    """layers.Linear in bfloat16 without autograd calls oneDNN's matmul directly (where the
    build has it): the same bits as F.linear for 2-D and 3-D inputs, eagerly and in a trace."""
    from pictor.networks.layers import Linear

    torch.manual_seed(0)
    lin = Linear(24, 40).to(torch.bfloat16)
    f = torch.nn.functional.linear
    with torch.no_grad():
        for shape in ((7, 24), (2, 33, 24), (1, 256, 24)):
            x = torch.randn(shape).to(torch.bfloat16)
            assert torch.equal(lin(x), f(x, lin.weight, lin.bias))
            traced = torch.jit.trace(lin, (x,), check_trace=False)
            assert torch.equal(traced(x), f(x, lin.weight, lin.bias))
        x_t = torch.randn(24, 5).to(torch.bfloat16).t()  # not contiguous: F.linear's path
        assert torch.equal(lin(x_t), f(x_t, lin.weight, lin.bias))
    x = torch.randn(3, 24, dtype=torch.bfloat16)
    out = lin(x)
    assert torch.equal(out, f(x, lin.weight, lin.bias))
    out.float().sum().backward()
    assert lin.weight.grad is not None


def test_position_features_made_in_inference_mode_serve_a_training_pass():
    from pictor.networks.layers import TransformerBlock, position_features

    position_features.cache_clear()
    block = TransformerBlock(16, 16, num_heads=2, position_frequencies=2)
    torch.nn.init.normal_(block.pos.weight, std=0.1)
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 16)
    with torch.inference_mode():
        block(x, ctx)  # fills the cache
    assert not position_features(4, 4, 2).is_inference()
    block(x, ctx).sum().backward()  # a sampler's features in a training step: no error
    assert block.pos.weight.grad is not None
