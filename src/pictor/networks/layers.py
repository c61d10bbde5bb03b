"""Building blocks of the denoising U-Net and the autoencoder.

- `timestep_embedding`: sinusoidal features of a (possibly fractional) timestep.
- `ResBlock`: two 3x3 convolutions with a residual path, optionally modulated by an embedding
  (scale-shift / FiLM).
- `attention`: multi-head scaled dot-product attention with a key-padding mask.
- `SelfAttention`, `CrossAttention`, `TransformerBlock`: attention over the pixels of a feature
  map, and from pixels to text tokens.
- `Downsample`, `Upsample`: resolution changes by a factor of 2.

Why these choices (measured on 2 CPU cores, fp32, forward + backward; see
benchmarks/train_throughput.py for the whole-model numbers):
- Compute is dominated by the 3x3 convolutions (a 128-channel conv at 16x16, batch 64, costs
  ~20x a GroupNorm on the same tensor). GroupNorm in the default NCHW layout is as fast as any
  alternative we tried (a hand-written channel RMSNorm was 5x slower, LayerNorm over channels
  needs two permutes). channels_last makes GroupNorm 1.5-2.5x slower and convs ~8% faster; for
  the whole U-Net the net gain was ~5%, so the layers work in either memory format and the
  choice is left to the caller (`model.to(memory_format=torch.channels_last)` plus a
  channels_last batch).
- The attention block works directly on the residual stream (no proj_in / proj_out around it, as
  in DiT and U-ViT), fuses q, k, v into one matmul, and uses a plain GELU MLP: fewer kernels and
  fewer parameters per block than diffusers' Transformer2DModel (GroupNorm + proj_in + 3 LayerNorms
  + GEGLU + proj_out).
- Sampling passes (no autograd, bfloat16, CPU) run the 3x3 convolutions through oneDNN with
  their weights reordered once (`Conv2d`) and the linear layers through oneDNN's matmul called
  directly (`linear`, `Linear`): bit-identical to PyTorch's own path (the same kernels), 242 ->
  212 and 238 -> 226 ms per shapes-v5 image (interleaved A/B on 2 cores).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Timestep embedding
# ----------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020, App. B).

    With half = dim // 2 and frequencies w_i = max_period^(-i / half), i = 0 .. half-1:
        emb(t) = [cos(t w_0), ..., cos(t w_{half-1}), sin(t w_0), ..., sin(t w_{half-1})]
    (cosines first, as in guided-diffusion and diffusers' `flip_sin_to_cos=True`). An odd `dim`
    gets one trailing zero. `t` may be fractional (continuous-time samplers).

    t: (B,) float -> (B, dim) float32
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * i / half)  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# ----------------------------------------------------------------------------------------------
# Normalisation and convolutional blocks
# ----------------------------------------------------------------------------------------------


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with the largest group count <= max_groups that divides channels."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel, with a per-channel scale and shift (the
    "LayerNorm2d" of ConvNeXt). No statistic spans pixels, so a network cannot steer its
    normalisation with one strong pixel: the "droplet" a generator makes under per-map
    normalisation (Karras et al. 2020, StyleGAN2, Sec. 2.1). x: (B, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x.movedim(1, -1), x.shape[1:2], self.weight, self.bias, self.eps)
        return h.movedim(-1, 1)


NormKind = Literal["group", "channel"]
NORM_KINDS: tuple[str, ...] = ("group", "channel")


def norm_layer(kind: NormKind, channels: int, max_groups: int = 32) -> nn.Module:
    """GroupNorm ("group") or ChannelNorm ("channel") over `channels`."""
    if kind == "group":
        return group_norm(channels, max_groups)
    if kind == "channel":
        return ChannelNorm(channels)
    raise ValueError(f"norm must be one of {NORM_KINDS}, got {kind!r}")


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (ADM's `zero_module`: residual branches start as
    the identity, Dhariwal & Nichol 2021)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


@functools.cache
def _has_onednn_op(namespace: str, name: str) -> bool:
    """Whether this torch build has oneDNN and the operator torch.ops.<namespace>.<name>, and
    oneDNN runs bfloat16 on this CPU (else PyTorch's own bfloat16 path is not oneDNN's, and
    calling oneDNN would change the bits or fail)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        getattr(getattr(torch.ops, namespace), name)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _onednn_bf16_inference(x: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None) -> bool:
    """Whether a call may take the oneDNN paths of `Conv2d` and `linear`: no autograd, no
    autocast, a contiguous bfloat16 CPU input with weights (and bias) of its dtype. Elsewhere
    PyTorch's own path is kept, whose bits those paths were checked against only here."""
    return (not torch.is_grad_enabled() and x.dtype == torch.bfloat16
            and x.device.type == "cpu" and x.is_contiguous() and weight.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype)
            and not torch.is_autocast_enabled("cpu"))


def _conv_prepack_available() -> bool:
    """Whether this torch build has oneDNN's prepacked convolution (torch.ops.mkldnn_prepacked,
    the op context torch.jit.freeze's MKLDNN rewrite uses)."""
    return _has_onednn_op("mkldnn_prepacked", "conv2d_prepack")


class Conv2d(nn.Conv2d):
    """nn.Conv2d (the same weights, state and training path) whose inference passes in bfloat16
    on CPU run oneDNN with the weights reordered once. F.conv2d hands oneDNN the plain weight
    tensor and oneDNN reorders it to its blocked layout on every call; at the few pixels of a
    sampler's pass that reorder is a large part of the convolution (192 -> 192 channels at 4x4
    on 2 cores: 164 against 78 us at batch 1). The reordered weights (an op context of
    torch.ops.mkldnn_prepacked, which a TorchScript trace keeps as a constant) are kept while
    the weights and the input's channels and size stay the same. The output is bit-identical to
    F.conv2d's (tested): the same oneDNN kernel runs on the same values. Other dtypes, devices
    and autograd take nn.Conv2d's path (float32 F.conv2d is not always oneDNN's, so its bits
    could change)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() != 4 or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or not _onednn_bf16_inference(x, self.weight, self.bias)
                or not _conv_prepack_available()):
            return super().forward(x)
        return torch.ops.mkldnn_prepacked.conv2d_run(x, self._packed(x))

    def _packed(self, x: torch.Tensor) -> torch.ScriptObject:
        key = (tuple(x.shape[1:]), x.dtype, *weights_version(self.weight, *(
            () if self.bias is None else (self.bias,))))
        entry = self.__dict__.get("_packed_entry")
        if entry is not None and entry[0] == key:
            return entry[1]
        context = torch.ops.mkldnn_prepacked.conv2d_prepack(
            self.weight, self.bias, list(self.stride), list(self.padding), list(self.dilation),
            self.groups, list(x.shape), "none")
        self.__dict__["_packed_entry"] = (key, context)
        # Also a plain attribute: torch.jit.trace finds the op contexts a traced pass uses among
        # the modules' attributes (as it does quantized packed parameters), not inside a tuple.
        self.__dict__["_packed_context"] = context
        return context


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """F.linear(x, weight, bias). Without autograd, in bfloat16 on CPU, it calls oneDNN's
    matmul directly: the same kernel F.linear reaches through addmm (bit-identical output,
    tested), without the layers of dispatch in between, which at a sampler's small matrices are
    ~15% of a call (256 x 64 -> 192 on 2 cores: 44 against 35 us)."""
    if (not _onednn_bf16_inference(x, weight, bias)
            or not _has_onednn_op("mkldnn", "_linear_pointwise")):
        return F.linear(x, weight, bias)
    if torch.jit.is_tracing():  # the tracer cannot record the op's empty Scalar?[] argument
        return _scripted_linear_pointwise()(x, weight, bias)
    return _linear_pointwise(x, weight, bias)


def _linear_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                      ) -> torch.Tensor:
    scalars: list[float | int | complex | None] = []  # TorchScript's Scalar?[]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", scalars, "")


@functools.cache
def _scripted_linear_pointwise():
    """_linear_pointwise compiled by TorchScript (on first use: only traces need it), so that a
    trace records the call with its argument types."""
    return torch.jit.script(_linear_pointwise)


class Linear(nn.Linear):
    """nn.Linear (the same weights, state and training path) whose inference passes call
    `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution (the weights and state of nn.Conv2d(in, out, 1)). Without autograd it
    runs as one matmul over the channels: at the few pixels of a sampler's U-Net pass, oneDNN's
    bfloat16 convolution costs 2-3x the matmul (192 -> 128 channels at 4x4 on 2 cores: 66 against
    31 us at batch 1, 110 against 46 at batch 2). Training keeps the convolution. The two agree
    to rounding."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        b, c, height, width = x.shape
        out = torch.matmul(self.weight.view(self.out_channels, c), x.reshape(b, c, -1))
        return (out + self.bias[:, None]).view(b, self.out_channels, height, width)


class ResBlock(nn.Module):
    """Residual block: h = conv(act(norm(x))); h = FiLM(norm(h), emb); out = skip(x) + conv(act(h)).

    The embedding modulates the second normalisation by scale and shift,
        norm(h) * (1 + scale) + shift,   [scale, shift] = Linear(act(emb))
    (FiLM, Perez et al. 2018; "scale-shift norm" of Dhariwal & Nichol 2021, Sec. 3). Without an
    embedding (emb_dim=None, the autoencoder) it is a plain pre-activation ResBlock.

    x: (B, in_channels, H, W), emb: (B, emb_dim) | None -> (B, out_channels, H, W)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int | None = None,
        *,
        max_groups: int = 32,
        dropout: float = 0.0,
        zero_init: bool = False,
        norm: NormKind = "group",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(norm, in_channels, max_groups)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = Linear(emb_dim, 2 * out_channels) if emb_dim is not None else None
        self.norm2 = norm_layer(norm, out_channels, max_groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        if zero_init:
            zero_(self.conv2)
        self.skip = (
            PointwiseConv2d(in_channels, out_channels) if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                film: torch.Tensor | None = None) -> torch.Tensor:
        """film: self.emb_proj(silu(emb)) (B, 2 C_out) computed beforehand (UNet computes those
        of all its ResBlocks in one matmul); emb is then not read."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.norm2(h)
        if self.emb_proj is not None:
            if film is None:
                if emb is None:
                    raise ValueError("this ResBlock was built with emb_dim; pass an embedding "
                                     "(B, D)")
                film = self.emb_proj(F.silu(emb))
            scale, shift = film[:, :, None, None].chunk(2, dim=1)
            h = torch.addcmul(shift, h, 1 + scale)  # h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution. (B, C, H, W) -> (B, C_out, H/2, W/2)"""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


UpsampleMode = Literal["conv", "nearest", "project"]
UPSAMPLE_MODES = ("conv", "nearest", "project")


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation, with one of three learned maps:

    - "conv": a 3x3 convolution after the interpolation (DDPM, ADM, LDM). It runs at the higher
      resolution with the wider channel count of the level below: the most expensive single
      convolution of a U-Net level.
    - "nearest": none; the next ResBlock's first 3x3 convolution mixes the upsampled pixels.
    - "project": a 1x1 convolution to out_channels BEFORE the interpolation, at the low
      resolution (1/4 of the pixels), so that the blocks above receive the narrower width of
      their own level; cheapest when the next level is narrower.

    (B, C, H, W) -> (B, out_channels, 2H, 2W); out_channels defaults to C (must be C unless
    mode="project").
    """

    def __init__(self, channels: int, out_channels: int | None = None,
                 mode: UpsampleMode = "conv") -> None:
        super().__init__()
        out_channels = out_channels or channels
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample mode {mode!r} is not one of {UPSAMPLE_MODES}")
        if mode != "project" and out_channels != channels:
            raise ValueError(f"upsample mode {mode!r} keeps the channel count; use 'project' "
                             f"to change {channels} to {out_channels}")
        self.out_channels = out_channels
        self.project = PointwiseConv2d(channels, out_channels) if mode == "project" else None
        self.conv = Conv2d(channels, channels, 3, padding=1) if mode == "conv" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            x = self.project(x)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention softmax(Q K^T / sqrt(d) + bias) V (Vaswani et al. 2017, Eq. 1).

    key_mask marks the keys each query may attend to (True = real token, False = padding);
    masked keys get weight exactly 0, so padding never changes the output. A row whose keys are
    all masked attends to nothing and returns 0 (instead of the NaN of an empty softmax).
    bias: optional additive logits, (B, 1 or heads, N, L) (layout guidance, pictor.guidance).

    q: (B, heads, N, d), k, v: (B, heads, L, d), key_mask: (B, L) bool | None -> (B, heads, N, d)
    """
    if bias is not None:
        bias = bias.to(q.dtype)
        if key_mask is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        safe_mask, has_key = _safe_key_mask(key_mask)
        bias = bias.masked_fill(~safe_mask[:, None, None, :], float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out * has_key[:, None, None, None].to(out.dtype)
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    if key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be a bool tensor, got {key_mask.dtype}")
    safe_mask, has_key = _safe_key_mask(key_mask)
    if bool(has_key.all()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe_mask[:, None, None, :])
    return out * has_key[:, None, None, None].to(out.dtype)


def weights_version(*tensors: torch.Tensor) -> tuple[int, ...]:
    """A key that changes whenever one of the tensors is replaced (module.to, load) or updated
    in place (an optimizer step, copy_): for values kept between passes without autograd."""
    return tuple(v for x in tensors for v in (x.data_ptr(), x._version))


def _layout_bias(layout: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A layout bias (B, L, S, S) as a cross-attention at height x width reads it: area-averaged
    to that resolution, (B, N = H*W, L)."""
    if layout.shape[-2:] != (height, width):
        layout = F.adaptive_avg_pool2d(layout, (height, width))
    return layout.flatten(2).transpose(1, 2)


def layout_attention_mask(layout: torch.Tensor, height: int, width: int,
                          key_mask: torch.Tensor | None, dtype: torch.dtype
                          ) -> torch.Tensor | None:
    """The additive attention mask (B, 1, H*W, L) of a cross-attention at height x width under
    layout guidance, as a pass computes it: the bias (B, L, S, S) area-averaged to the block's
    resolution, in dtype, -inf at the padding keys. None if a row has no real key (its output is
    zeroed by `attention`, which this mask alone cannot do). A sampler computes it once per
    prompt (UNet.prompt_terms)."""
    bias = _layout_bias(layout, height, width)[:, None].to(dtype)  # (B, 1, N, L)
    if key_mask is None:
        return bias
    safe_mask, has_key = _safe_key_mask(key_mask)
    if not bool(has_key.all()):
        return None
    return bias.masked_fill(~safe_mask[:, None, None, :], float("-inf"))


def _safe_key_mask(key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(safe_mask (B, L), has_key (B,)): rows without a real key attend everywhere in safe_mask
    (no empty softmax); the caller zeroes their output with has_key."""
    has_key = key_mask.any(dim=1)
    return key_mask | ~has_key[:, None], has_key


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape  # (B, N, C) -> (B, heads, N, C / heads)
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape  # (B, heads, N, d) -> (B, N, heads * d)
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens, q, k, v from one fused projection.

    x: (B, N, C) -> (B, N, C)
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = Linear(channels, 3 * channels)
        self.out = Linear(channels, channels)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, N, C)
        h = attention(*(_split_heads(a, self.num_heads) for a in (q, k, v)), key_mask)
        return self.out(_merge_heads(h))


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens (queries) to text tokens (keys, values), with the
    text's key-padding mask (Rombach et al. 2022, Eq. 3).

    x: (B, N, C), context: (B, L, D), context_mask: (B, L) bool | None -> (B, N, C)
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.q = Linear(channels, channels)
        self.kv = Linear(context_dim, 2 * channels)
        self.out = Linear(channels, channels)
        # Set by pictor.training.grounding.record_cross_attention: a list that receives the
        # attention probabilities of maps with >= record_min_tokens pixels (grounding loss).
        self.record: list[torch.Tensor] | None = None
        self.record_min_tokens = 0

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None, kv: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """bias: optional additive attention logits (B, N, L), the same for every head.
        kv: self.kv(context) (B, L, 2C) computed beforehand (it depends on the text alone, so a
        sampler computes it once per prompt instead of once per step; UNet.prompt_terms).
        attn_mask: layout_attention_mask(...) computed beforehand, instead of bias and
        context_mask (the same attention)."""
        if kv is None:
            kv = self.kv(context)
        k, v = kv.chunk(2, dim=-1)  # 2 x (B, L, C)
        q = _split_heads(self.q(x), self.num_heads)
        k, v = _split_heads(k, self.num_heads), _split_heads(v, self.num_heads)
        if attn_mask is not None:
            if self.record is not None:
                raise ValueError("a cross-attention that records its probabilities takes the "
                                 "layout bias and key mask, not a precomputed attn_mask")
            return self.out(_merge_heads(F.scaled_dot_product_attention(q, k, v,
                                                                        attn_mask=attn_mask)))
        if bias is not None:
            bias = bias[:, None]  # (B, 1, N, L): broadcast over heads
        if self.record is not None and q.shape[2] >= self.record_min_tokens:
            h = self._attention_recorded(q, k, v, context_mask, bias)
        else:
            h = attention(q, k, v, context_mask, bias)
        return self.out(_merge_heads(h))

    def _attention_recorded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            key_mask: torch.Tensor | None, bias: torch.Tensor | None = None
                            ) -> torch.Tensor:
        """`attention` with explicit probabilities (float32), which go to self.record averaged
        over heads, (B, N, L); same output up to rounding."""
        with torch.autocast(q.device.type, enabled=False):  # float32 even under autocast
            logits = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
            if bias is not None:
                logits = logits + bias.float()
            if key_mask is not None:  # rows with no key attend to nothing, as in `attention`
                safe, has_key = _safe_key_mask(key_mask)
                logits = logits.masked_fill(~safe[:, None, None, :], float("-inf"))
            probs = logits.softmax(dim=-1)  # (B, heads, N, L)
            if key_mask is not None:
                probs = probs * has_key[:, None, None, None].to(probs.dtype)
            self.record.append(probs.mean(dim=1))  # type: ignore[union-attr]
            return probs.to(v.dtype) @ v


@functools.lru_cache(maxsize=64)
def position_features(height: int, width: int, num_frequencies: int, *,
                      device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """2-D Fourier features of the pixel centres: (H*W, 4 * num_frequencies), row-major.

    Coordinates u (column) and v (row) run over (-1, 1) at the pixel centres, so the features
    depend on where a pixel sits in the image, not on the resolution; frequency k is pi * 2^k
    (k = 0 .. F-1), and each axis contributes sin and cos: [sin(pi 2^k u), cos(pi 2^k u),
    sin(pi 2^k v), cos(pi 2^k v)] grouped by kind (the NeRF / Fourier-feature embedding of
    Tancik et al. 2020 with octave frequencies). Cached per arguments (a constant of every
    forward pass); do not modify the returned tensor in place.
    """
    if num_frequencies < 1:
        raise ValueError(f"num_frequencies must be >= 1, got {num_frequencies}")
    # The result is cached: made in inference mode it would be an inference tensor, which a
    # later training pass of the same process (reward fine-tuning samples, then trains) cannot
    # save for backward.
    with torch.inference_mode(False):
        return _position_features(height, width, num_frequencies, device, dtype)


def _position_features(height: int, width: int, num_frequencies: int,
                       device: torch.device | str | None, dtype: torch.dtype) -> torch.Tensor:
    u = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    v = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    vv, uu = torch.meshgrid(v, u, indexing="ij")  # (H, W) each
    freqs = math.pi * 2.0 ** torch.arange(num_frequencies, device=device, dtype=torch.float32)
    au = uu.reshape(-1, 1) * freqs  # (N, F)
    av = vv.reshape(-1, 1) * freqs
    return torch.cat([au.sin(), au.cos(), av.sin(), av.cos()], dim=1).to(dtype)  # (N, 4F)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on the pixels of a feature map: self-attention, cross-attention
    to the text, GELU MLP, each as a residual branch (the block of Rombach et al. 2022, Sec. 3.3,
    applied to the residual stream directly, without the proj_in / proj_out convolutions).

    x: (B, C, H, W), context: (B, L, D), context_mask: (B, L) bool | None -> (B, C, H, W)
    """

    def __init__(
        self,
        channels: int,
        context_dim: int | None,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        zero_init: bool = False,
        position_frequencies: int = 0,
        cross_attention_only: bool = False,
    ) -> None:
        super().__init__()
        # cross_attention_only: no self-attention and no MLP, only the text read by the pixels
        # (the cheap block for high resolutions, where self-attention over H*W pixels costs
        # most of a pass).
        if cross_attention_only and context_dim is None:
            raise ValueError("a cross-attention-only block needs a context_dim")
        # Optional absolute position: a linear map of the pixels' 2-D Fourier features
        # (position_features) added to the tokens before the attention, so that self-attention
        # and the cross-attention queries know where in the image a pixel is. Convolutions with
        # zero padding only learn this indirectly from the borders (Liu et al. 2018, CoordConv),
        # and at high noise, where the layout is decided, the input carries no other cue.
        # Zero-initialised (like the residual branches) so the block starts without it.
        self.position_frequencies = position_frequencies
        self.pos = (zero_(Linear(4 * position_frequencies, channels))
                    if position_frequencies > 0 else None)
        full = not cross_attention_only
        self.norm1 = nn.LayerNorm(channels) if full else None
        self.self_attn = SelfAttention(channels, num_heads) if full else None
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(channels)
            self.cross_attn = CrossAttention(channels, context_dim, num_heads)
        else:
            self.norm2 = None
            self.cross_attn = None
        self.norm3 = nn.LayerNorm(channels) if full else None
        hidden = int(channels * mlp_ratio)
        self.mlp = (nn.Sequential(Linear(channels, hidden), nn.GELU(approximate="tanh"),
                                  Linear(hidden, channels)) if full else None)
        if zero_init:
            if full:
                zero_(self.self_attn.out)
                zero_(self.mlp[-1])
            if self.cross_attn is not None:
                zero_(self.cross_attn.out)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        layout: torch.Tensor | None = None,
        kv: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """layout: optional cross-attention logit bias per text token over the image, (B, L, S, S)
        at any square resolution S, area-averaged to this block's H x W (pictor.guidance).
        kv, attn_mask: the cross-attention's keys and values and its layout mask computed
        beforehand (CrossAttention.forward)."""
        b, c, height, width = x.shape
        h = x.flatten(2).transpose(1, 2)  # (B, N=H*W, C)
        if self.pos is not None:
            h = h + self._position_term(height, width, h.dtype, h.device)  # broadcast over B
        if self.self_attn is not None:
            h = h + self.self_attn(self.norm1(h))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention; pass context (B, L, D)")
            bias = (_layout_bias(layout, height, width)  # (B, N, L)
                    if layout is not None and attn_mask is None else None)
            h = h + self.cross_attn(self.norm2(h), context, context_mask, bias, kv, attn_mask)
        if self.mlp is not None:
            h = h + self.mlp(self.norm3(h))
        return h.transpose(1, 2).reshape(b, c, height, width)  # (B, C, H, W)

    def _position_term(self, height: int, width: int, dtype: torch.dtype, device: torch.device
                       ) -> torch.Tensor:
        """self.pos(position_features) (N, C): a constant of the weights and the resolution,
        kept from the last call without autograd while the weights are unchanged (same values:
        the same computation; under torch.jit.trace it becomes a constant of the trace)."""
        feats = position_features(height, width, self.position_frequencies, device=device,
                                  dtype=dtype)  # (N, 4F)
        if torch.is_grad_enabled():  # training: the term must stay in the autograd graph
            return self.pos(feats)
        key = (height, width, dtype, str(device), *weights_version(self.pos.weight, self.pos.bias))
        cached = self.__dict__.get("_position_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.pos(feats))
            self.__dict__["_position_cache"] = cached
        return cached[1]


class TextAdapter(nn.Module):
    """Trainable pre-norm transformer layers over the frozen text encoder's tokens, before the
    U-Net reads them: self-attention among the real tokens (padding masked) and a GELU MLP,
    each a zero-initialised residual branch, so an untrained adapter is the identity.

    Why: a frozen sentence encoder keeps what a relation says mostly in the relation word; the
    object words of "a red circle to the left of a blue square" and "... to the right of ..."
    differ by ~5% (all-MiniLM-L6-v2), too little for a per-token key projection to turn into
    "put this object on the left". A layer that mixes the tokens can write the relation into the
    object tokens the cross-attention keys are made from (cf. the trainable text connectors of
    eDiff-I / ELLA on frozen encoders).

    Token order (`max_tokens` > 0): self-attention is blind to order, so without it the adapter
    sees "a red circle to the left of a blue square" and "a blue square to the left of a red
    circle" as the same set of words, told apart only by the ~0.2% that MiniLM's own position
    embeddings leave in its output tokens (cosine 0.9985). A learned absolute position
    embedding per token index (GPT-2 style), added to the tokens before the first layer and
    zero-initialised (an untrained table changes nothing, so a trained model gains it as the
    identity), lets the adapter tell which object comes before the relation word.

    x: (B, L, D), mask: (B, L) bool | None -> (B, L, D)
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, mlp_ratio: float = 2.0,
                 max_tokens: int = 0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        # (max_tokens, D) learned token-index embedding; None: order-blind (shapes-v5/v10)
        self.position = nn.Parameter(torch.zeros(max_tokens, dim)) if max_tokens else None
        hidden = int(dim * mlp_ratio)
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            layer = nn.ModuleDict({
                "norm1": nn.LayerNorm(dim), "attn": SelfAttention(dim, num_heads),
                "norm2": nn.LayerNorm(dim),
                "mlp": nn.Sequential(Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                     Linear(hidden, dim)),
            })
            zero_(layer["attn"].out)
            zero_(layer["mlp"][-1])
            self.layers.append(layer)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.position is not None:
            if x.shape[1] > self.position.shape[0]:
                raise ValueError(f"the text adapter knows {self.position.shape[0]} token "
                                 f"positions (model.text_adapter_max_tokens) but got "
                                 f"{x.shape[1]} tokens; encode with text.max_length <= "
                                 f"{self.position.shape[0]}")
            x = x + self.position[: x.shape[1]].to(x.dtype)             # (B, L, D)
        for layer in self.layers:
            x = x + layer["attn"](layer["norm1"](x), mask)
            x = x + layer["mlp"](layer["norm2"](x))
        return x
