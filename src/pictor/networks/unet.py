"""Text-conditional U-Net denoiser (Ronneberger et al. 2015; Ho et al. 2020, App. B;
Dhariwal & Nichol 2021 "ADM"; Rombach et al. 2022 for the cross-attention conditioning).

Layout (L levels; level i works at resolution H / 2^i with channels[i] channels):

    x (B, in_channels, H, W) -> conv_in
    down, per level i: blocks_per_level[i] x [ResBlock (+ TransformerBlock if i in
                       attention_levels)], then a stride-2 Downsample (not after the last level);
                       every block's output is kept as a skip
    mid:               ResBlock, TransformerBlock (if mid_attention), ResBlock
    up, per level i from L-1 to 0: (blocks_per_level[i] + extra_up_block) x [concat skip,
                       ResBlock (+ TransformerBlock)], then Upsample to level i-1 (not at 0)
    out:               GroupNorm, SiLU, conv_out -> (B, out_channels, H, W)

Conditioning:
- the timestep t (B,) float goes through a sinusoidal embedding and an MLP into `emb`, which
  modulates every ResBlock (scale-shift);
- the text tokens `context` (B, L, D) with their mask (B, L) are attended to by the
  cross-attention of every TransformerBlock; padding tokens have no effect;
- optionally (pooled_context) the masked mean of the text tokens is projected and added to `emb`,
  a global summary that reaches every ResBlock (as SDXL adds its pooled text embedding).
`context=None` means "no text": a single learned null token is used instead (it is trained only
when the trainer passes None; caption dropout with empty-caption embeddings does not need it).

The network knows nothing about noise schedules: it maps (x_t, t, text) to a tensor of x's shape
whose meaning (eps, x0 or v) the diffusion package decides.

Why the defaults look the way they do (CPU training). On 2 CPU cores a training step costs about
its FLOPs (3x3 convolutions and matmuls both run at ~130-200 GFLOPS here), and a layer's FLOPs
are its parameters times the pixels it runs on. So at a fixed parameter budget the parameters
go where the pixels are few (the "Efficient U-Net" of Saharia et al. 2022, App. B.1): 71% of
the weights sit at the lowest resolution, the highest level keeps 64 channels and one ResBlock
each way, the up path mirrors the down path (no ADM extra block), upsampling projects to the
narrower width before interpolating instead of convolving at the high resolution, and attention
runs only at 8x8 and 4x4 (64 and 16 tokens), where layout and counting are decided. The
shapes-v2 added it at 16x16 too (configs/shapes.yaml): attribute binding (which colour goes
with which shape) improved from 0.45 to 0.61 on geneval-shapes, for ~15% more time per image.
shapes-v3 added 2-D position features to every attention block (`position_frequencies`),
trained with plain v-MSE instead of min-SNR weighting; shapes-v5 added a text adapter
(`text_adapter_layers`), trained with a grounding loss on the colour words and Stable Target
Field targets (docs/grounding.md); shapes-v10 is that recipe trained longer; the shipped
shapes-v11 adds learned token positions to the adapter and a learned layout prior
(`layout_prior_width`, pictor.networks.layout_prior; docs/alignment.md).
benchmarks/train_throughput.py compares this with diffusers' UNet2DConditionModel of the same
size (BENCHMARKS.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pictor.networks.layers import (
    UPSAMPLE_MODES,
    Conv2d,
    Downsample,
    Linear,
    ResBlock,
    TextAdapter,
    TransformerBlock,
    Upsample,
    UpsampleMode,
    group_norm,
    layout_attention_mask,
    linear,
    timestep_embedding,
    weights_version,
    zero_,
)
from pictor.networks.layout_prior import LayoutPrior


@dataclass(frozen=True)
class UNetConfig:
    # Channels of the input x_t and of the prediction: 4 for a 4-channel autoencoder latent,
    # 3 * k * k for k x k pixel-unshuffled RGB (48 for k = 4).
    in_channels: int = 4
    out_channels: int = 4
    # Width of each resolution level; level i runs at H / 2^i. H and W must be divisible by
    # 2^(len(channels) - 1). Doubling per level keeps each level's conv cost about equal.
    channels: tuple[int, ...] = (64, 128, 192)
    # ResBlocks per level on the way down.
    blocks_per_level: tuple[int, ...] = (1, 1, 1)
    # True (ADM, diffusers): the way up has one more ResBlock per level than the way down, fed by
    # the skips from conv_in and the downsamplers. False: the way up mirrors the way down (skips
    # from the down ResBlocks only), which removes one ResBlock per level, most of whose cost is
    # at the high resolutions.
    extra_up_block: bool = False
    # Levels (indices into `channels`) whose blocks are followed by a TransformerBlock
    # (self-attention + cross-attention to the text + MLP). Attention at the lowest resolutions
    # is cheap (few tokens) and is where global layout (counting, left/right) is decided.
    attention_levels: tuple[int, ...] = (1, 2)
    # Levels (a subset of attention_levels) whose TransformerBlocks only read the text:
    # cross-attention without self-attention and MLP. Self-attention over the 16x16 pixels is
    # about a quarter of a pass of the shapes model on 2 CPU cores.
    cross_attention_only_levels: tuple[int, ...] = ()
    # TransformerBlock between the two ResBlocks of the middle (lowest-resolution) stage.
    mid_attention: bool = True
    # Channels per attention head (heads = channels[i] // head_dim).
    head_dim: int = 64
    # Hidden width of the TransformerBlock MLP as a multiple of the channels.
    mlp_ratio: float = 2.0
    # Width D of the text token embeddings (384 for MiniLM). None: unconditional network.
    context_dim: int | None = 384
    # Add a projection of the masked mean of the text tokens to the timestep embedding.
    pooled_context: bool = True
    # Absolute 2-D position added to the tokens of every TransformerBlock: the number of octave
    # frequencies of its Fourier features (layers.position_features); 0 = none (the network
    # knows where a pixel is only through the convolutions' zero padding).
    position_frequencies: int = 0
    # Trainable transformer layers over the text tokens before the U-Net reads them
    # (layers.TextAdapter; heads = context_dim // head_dim); 0 = the frozen tokens as they are.
    text_adapter_layers: int = 0
    # Learned token-index embedding of the text adapter, for this many token positions (>=
    # text.max_length); 0 = the adapter is blind to word order (layers.TextAdapter).
    text_adapter_max_tokens: int = 0
    # Learned layout prior (networks/layout_prior.py): a small transformer of this width over
    # the frozen text tokens predicts where each word belongs, and while t >= layout_prior_min_t
    # every cross-attention adds strength * clamp(log-density ratio) to its scores. 0 = none.
    layout_prior_width: int = 0
    layout_prior_layers: int = 2
    layout_prior_heads: int = 4
    layout_prior_max_tokens: int = 32   # >= text.max_length
    layout_prior_strength: float = 10.0
    layout_prior_clamp: float = 3.0     # |log-density ratio| cap: a bias of at most 30
    layout_prior_min_t: int = 300       # the high-noise steps, where the layout is decided
    layout_prior_size: int = 16         # S: the prior covers the S x S input (= the input size)
    # Width of the timestep embedding; None -> 4 * channels[0] (ADM).
    time_embed_dim: int | None = None
    # Upper bound on GroupNorm groups (the largest divisor of the channel count <= this is used).
    max_norm_groups: int = 32
    # Dropout inside the ResBlocks (ADM uses 0.1 for small data sets; 0 for fast training).
    dropout: float = 0.0
    # How the up path doubles the resolution (pictor.networks.layers.Upsample): "conv" (ADM:
    # nearest + 3x3 conv at the high resolution), "nearest" (no conv), "project" (1x1 conv to the
    # next level's width at the low resolution, then nearest; the cheapest).
    upsample: UpsampleMode = "project"
    # Zero the last layer of every residual branch (ResBlock conv2, attention and MLP outputs),
    # so each block starts as the identity (ADM).
    zero_init_residual: bool = True
    # Zero the output convolution, so the untrained network predicts 0 (ADM). Note: with a zero
    # output layer no gradient reaches the rest of the network until the first update.
    zero_init_output: bool = True

    def __post_init__(self) -> None:
        n = len(self.channels)
        if n == 0 or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got "
                             f"{self.channels}")
        if len(self.blocks_per_level) != n or any(b < 1 for b in self.blocks_per_level):
            raise ValueError(f"blocks_per_level needs one int >= 1 per level ({n} levels), got "
                             f"{self.blocks_per_level}")
        bad = [i for i in self.attention_levels if not 0 <= i < n]
        if bad:
            raise ValueError(f"attention_levels {self.attention_levels} has indices outside "
                             f"0..{n - 1}")
        if not set(self.cross_attention_only_levels) <= set(self.attention_levels):
            raise ValueError(f"cross_attention_only_levels {self.cross_attention_only_levels} "
                             f"must be a subset of attention_levels {self.attention_levels}")
        if self.cross_attention_only_levels and self.context_dim is None:
            raise ValueError("cross_attention_only_levels need a context_dim")
        attn_widths = [self.channels[i] for i in self.attention_levels]
        if self.mid_attention:
            attn_widths.append(self.channels[-1])
        for c in attn_widths:
            if c % self.head_dim:
                raise ValueError(f"head_dim ({self.head_dim}) must divide the width of every "
                                 f"attention level; {c} is not divisible")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        if self.text_adapter_layers < 0:
            raise ValueError(f"text_adapter_layers must be >= 0, got {self.text_adapter_layers}")
        if self.text_adapter_layers and (self.context_dim is None
                                         or self.context_dim % self.head_dim):
            raise ValueError(f"a text adapter needs context_dim ({self.context_dim}) divisible "
                             f"by head_dim ({self.head_dim})")
        if self.text_adapter_max_tokens < 0 or (self.text_adapter_max_tokens
                                                and not self.text_adapter_layers):
            raise ValueError(f"text_adapter_max_tokens ({self.text_adapter_max_tokens}) must be "
                             f">= 0 and needs text_adapter_layers > 0")
        if self.layout_prior_width < 0:
            raise ValueError(f"layout_prior_width must be >= 0, got {self.layout_prior_width}")
        if self.layout_prior_width:
            if self.context_dim is None:
                raise ValueError("a layout prior needs a text-conditional UNet (context_dim)")
            if self.layout_prior_width % self.layout_prior_heads or self.layout_prior_layers < 1:
                raise ValueError(f"layout_prior_width ({self.layout_prior_width}) must be "
                                 f"divisible by layout_prior_heads ({self.layout_prior_heads}) "
                                 f"and layout_prior_layers >= 1")
            if self.layout_prior_size % self.downsampling_factor:
                raise ValueError(f"layout_prior_size ({self.layout_prior_size}) must be the "
                                 f"input's size, a multiple of {self.downsampling_factor}")
            if self.layout_prior_clamp <= 0 or self.layout_prior_strength < 0:
                raise ValueError("layout_prior_clamp must be > 0 and layout_prior_strength >= 0")
        if self.position_frequencies < 0:
            raise ValueError(f"position_frequencies must be >= 0, got {self.position_frequencies}")

    @property
    def downsampling_factor(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (len(self.channels) - 1)


# Named configurations (the defaults above are "shapes-small").
unet_presets: dict[str, UNetConfig] = {
    # The default model of the shapes world: diffusion in the 16x16x4 latent of the KL
    # autoencoder (f = 4). 6.96M parameters, 397 MFLOP per forward pass per image. Why 16x16 and
    # not 8x8: shapes are 16-24 px wide, i.e. 4-6 latent pixels at f = 4 but 2-3 at f = 8, and
    # telling a star from a circle, or placing centres to the 4 px the scorer checks, from 2-3
    # latent pixels leaves all of the work to the decoder.
    "shapes-small": UNetConfig(),
    # The same network on 4x4 pixel-unshuffled 64x64 RGB (16x16x48), for the pixel-space A/B.
    "shapes-small-pixel": UNetConfig(in_channels=48, out_channels=48),
    # The same network without its 16x16 level, for 8x8x4 latents (f = 8): 7.6M parameters,
    # 301 MFLOP per image.
    "shapes-small-f8": UNetConfig(channels=(128, 192), blocks_per_level=(1, 1),
                                  attention_levels=(0, 1)),
}


class _Stage(nn.Module):
    """One ResBlock, optionally followed by a TransformerBlock (a step of the U-Net)."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, emb_dim: int,
                 attention: bool, cross_attention_only: bool = False, level: int = 0) -> None:
        super().__init__()
        self.level = level  # runs at H / 2^level
        self.res = ResBlock(in_ch, out_ch, emb_dim, max_groups=cfg.max_norm_groups,
                            dropout=cfg.dropout, zero_init=cfg.zero_init_residual)
        self.attn = (
            TransformerBlock(out_ch, cfg.context_dim, out_ch // cfg.head_dim,
                             mlp_ratio=cfg.mlp_ratio, zero_init=cfg.zero_init_residual,
                             position_frequencies=cfg.position_frequencies,
                             cross_attention_only=cross_attention_only)
            if attention else None
        )

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None,
                mask: torch.Tensor | None, layout: torch.Tensor | None = None,
                kv: torch.Tensor | None = None, film: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.res(h, emb, film)
        if self.attn is not None:
            h = self.attn(h, context, mask, layout, kv, attn_mask)
        return h

    @property
    def cross_attention(self) -> nn.Module | None:
        return None if self.attn is None else self.attn.cross_attn


class UNet(nn.Module):
    """Conditional U-Net: forward(x (B,C,H,W), t (B,) float, context (B,L,D) | None,
    context_mask (B,L) bool | None) -> (B, out_channels, H, W)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        self.config = cfg
        ch = cfg.channels
        emb_dim = cfg.time_embed_dim or 4 * ch[0]
        self.time_mlp = nn.Sequential(Linear(ch[0], emb_dim), nn.SiLU(),
                                      Linear(emb_dim, emb_dim))
        if cfg.context_dim is not None:
            self.null_context = nn.Parameter(torch.zeros(1, 1, cfg.context_dim))  # (1, 1, D)
            self.pool_proj = (Linear(cfg.context_dim, emb_dim) if cfg.pooled_context
                              else None)
        else:
            self.null_context = None
            self.pool_proj = None
        self.text_adapter = (
            TextAdapter(cfg.context_dim, cfg.text_adapter_layers, cfg.context_dim // cfg.head_dim,
                        max_tokens=cfg.text_adapter_max_tokens)
            if cfg.text_adapter_layers and cfg.context_dim is not None else None)

        self.layout_prior = (
            LayoutPrior(cfg.context_dim, cfg.layout_prior_width, cfg.layout_prior_layers,
                        cfg.layout_prior_heads, cfg.layout_prior_max_tokens,
                        cfg.layout_prior_size, cfg.layout_prior_strength, cfg.layout_prior_clamp)
            if cfg.layout_prior_width and cfg.context_dim is not None else None)

        self.conv_in = Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        extra = cfg.extra_up_block
        skip_channels = [ch[0]] if extra else []
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        c_prev = ch[0]
        for i, c in enumerate(ch):
            stages = nn.ModuleList()
            for _ in range(cfg.blocks_per_level[i]):
                stages.append(_Stage(c_prev, c, cfg, emb_dim, i in cfg.attention_levels,
                                     i in cfg.cross_attention_only_levels, level=i))
                c_prev = c
                skip_channels.append(c)
            self.down.append(stages)
            if i < len(ch) - 1:
                self.downsamplers.append(Downsample(c))
                if extra:
                    skip_channels.append(c)

        self.mid1 = _Stage(c_prev, c_prev, cfg, emb_dim, cfg.mid_attention, level=len(ch) - 1)
        self.mid2 = ResBlock(c_prev, c_prev, emb_dim, max_groups=cfg.max_norm_groups,
                             dropout=cfg.dropout, zero_init=cfg.zero_init_residual)

        self.up = nn.ModuleList()  # stored from the lowest resolution up
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(len(ch))):
            stages = nn.ModuleList()
            for _ in range(cfg.blocks_per_level[i] + extra):
                stages.append(_Stage(c_prev + skip_channels.pop(), ch[i], cfg, emb_dim,
                                     i in cfg.attention_levels,
                                     i in cfg.cross_attention_only_levels, level=i))
                c_prev = ch[i]
            self.up.append(stages)
            if i > 0:
                up = Upsample(ch[i], ch[i - 1] if cfg.upsample == "project" else ch[i],
                              mode=cfg.upsample)
                self.upsamplers.append(up)
                c_prev = up.out_channels

        self.norm_out = group_norm(ch[0], cfg.max_norm_groups)
        self.conv_out = Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        if cfg.zero_init_output:
            zero_(self.conv_out)

    def _text_inputs(self, batch: int, context: Tensor | None,
                     context_mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Validate the text inputs; context None -> the learned null token (B, 1, D)."""
        if self.config.context_dim is None:
            if context is not None:
                raise ValueError("this UNet is unconditional (context_dim=None); pass context=None")
            return None, None
        if context is None:
            context = self.null_context.expand(batch, 1, -1)  # (B, 1, D)
            return context, torch.ones(batch, 1, dtype=torch.bool, device=context.device)
        if context.ndim != 3 or context.shape[::2] != (batch, self.config.context_dim):
            raise ValueError(f"context must have shape (B={batch}, L, D={self.config.context_dim}),"
                             f" got {tuple(context.shape)}")
        if context_mask is not None and (context_mask.shape != context.shape[:2]
                                         or context_mask.dtype != torch.bool):
            raise ValueError(f"context_mask must be a bool tensor of shape "
                             f"{tuple(context.shape[:2])}, got {context_mask.dtype} "
                             f"{tuple(context_mask.shape)}")
        return context, context_mask

    def layout_prior_bias(self, context: Tensor, context_mask: Tensor | None = None
                          ) -> Tensor | None:
        """The learned layout prior's attention bias (B, L, S, S) for the frozen tokens
        `context` (B, L, D) (not through the adapter), None for a UNet without one. forward
        adds it itself when given the raw context; a sampler that prepares the context once
        computes it here once per prompt and passes it as forward(layout=...) while
        t >= config.layout_prior_min_t (pictor.pipeline)."""
        if self.layout_prior is None:
            return None
        return self.layout_prior.bias(context, context_mask)

    def prepare_context(self, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """The text tokens as the U-Net's blocks read them: through the text adapter if there is
        one. forward(..., context_prepared=True) skips this, so a sampler can run it once per
        prompt instead of once per step. context: (B, L, D) -> (B, L, D)."""
        if self.text_adapter is None:
            return context
        return self.text_adapter(context, context_mask)

    def _stages(self) -> list[_Stage]:
        """Every stage in the order forward runs them (down, mid, up)."""
        return [*(s for stages in self.down for s in stages), self.mid1,
                *(s for stages in self.up for s in stages)]

    def _res_blocks(self) -> list[ResBlock]:
        """Every ResBlock in the order forward runs them."""
        stages = self._stages()
        n_down = sum(len(st) for st in self.down)
        return [*(s.res for s in stages[:n_down + 1]), self.mid2,
                *(s.res for s in stages[n_down + 1:])]

    def _films(self, emb: Tensor) -> list[Tensor] | None:
        """The scale-shift inputs (B, 2C) of every ResBlock (forward order), from one matmul of
        silu(emb) with their emb_proj weights stacked (the same values as the ResBlocks' own
        matmuls); None under autograd (training), where each ResBlock computes its own. The
        stacked weights are kept while the weights are unchanged (under torch.jit.trace they
        become a constant of the trace)."""
        if torch.is_grad_enabled():
            return None
        projs = [r.emb_proj for r in self._res_blocks()]
        key = (emb.dtype, str(emb.device),
               *weights_version(*(w for p in projs for w in (p.weight, p.bias))))
        cached = self.__dict__.get("_film_cache")
        if cached is None or cached[0] != key:
            weight = torch.cat([p.weight for p in projs]).to(emb.dtype)
            bias = torch.cat([p.bias for p in projs]).to(emb.dtype)
            cached = (key, weight, bias, [p.out_features for p in projs])
            self.__dict__["_film_cache"] = cached
        _, weight, bias, sizes = cached
        return list(linear(F.silu(emb), weight, bias).split(sizes, dim=1))

    def _pooled_term(self, context: Tensor, context_mask: Tensor | None) -> Tensor:
        """pool_proj of the masked mean of the tokens (B, E), added to the timestep embedding."""
        if context_mask is None:
            pooled = context.mean(dim=1)  # (B, D)
        else:
            w = context_mask.to(context.dtype)[:, :, None]  # (B, L, 1)
            pooled = (context * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.pool_proj(pooled)

    def prompt_terms(self, context: Tensor, context_mask: Tensor | None = None,
                     layout: Tensor | None = None) -> tuple[Tensor, ...]:
        """What forward computes from the (prepared) text alone, which a sampler can compute once
        per prompt and pass to every step as forward(..., prompt_terms=...): the pooled-text
        term of the timestep embedding (if pooled_context), then the keys and values (B, L, 2C)
        of every cross-attention in the order forward runs them, then, given a layout bias
        (B, L, S, S) at the input's resolution S, their attention masks
        (layers.layout_attention_mask; left out if a row has no real key). The same
        computations as forward's, so the output is the same to the bit. context: (B, L, D) as
        the blocks read it (prepare_context), in the compute dtype."""
        if self.config.context_dim is None:
            raise ValueError("an unconditional UNet (context_dim=None) has no prompt terms")
        context, context_mask = self._text_inputs(context.shape[0], context, context_mask)
        pooled = () if self.pool_proj is None else (self._pooled_term(context, context_mask),)
        stages = [s for s in self._stages() if s.cross_attention is not None]
        kvs = tuple(s.cross_attention.kv(context) for s in stages)
        if layout is None:
            return (*pooled, *kvs)
        size = layout.shape[-1]
        masks = tuple(layout_attention_mask(layout, size >> s.level, size >> s.level,
                                            context_mask, context.dtype) for s in stages)
        if any(m is None for m in masks):
            return (*pooled, *kvs)
        return (*pooled, *kvs, *masks)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        *,
        context_prepared: bool = False,
        layout: torch.Tensor | None = None,
        prompt_terms: tuple[Tensor, ...] | None = None,
    ) -> torch.Tensor:
        """layout: optional (B, L, S, S) logits added to every cross-attention's scores of each
        text token over the image (area-averaged to each block's resolution): layout guidance,
        pictor.guidance. None: the plain network.
        prompt_terms: self.prompt_terms(context, context_mask), computed beforehand (with
        context_prepared=True; the blocks then do not read context)."""
        cfg = self.config
        b, c, height, width = x.shape  # (B, C_in, H, W)
        f = cfg.downsampling_factor
        if c != cfg.in_channels or height % f or width % f:
            raise ValueError(f"x must be (B, {cfg.in_channels}, H, W) with H and W divisible by "
                             f"{f}; got {tuple(x.shape)}")
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must have shape (B,) = ({b},), got {tuple(t.shape)}")
        given = context is not None
        context, context_mask = self._text_inputs(b, context, context_mask)
        prior = self.layout_prior
        if (layout is None and given and not context_prepared and prior is not None
                and (prior.record is not None or bool((t >= cfg.layout_prior_min_t).any()))):
            # the learned layout prior (networks/layout_prior.py) on the high-noise examples
            if (height, width) != (cfg.layout_prior_size,) * 2:
                raise ValueError(f"the layout prior covers {cfg.layout_prior_size}x"
                                 f"{cfg.layout_prior_size} inputs, got {height}x{width}")
            logits = prior(context, context_mask)                      # (B, L, S, S)
            if prior.record is not None:
                prior.record.append(logits)
            on = (t >= cfg.layout_prior_min_t).to(x.dtype)[:, None, None, None]
            layout = prior.bias_from_logits(logits).to(x.dtype) * on
        if context is not None and not (given and context_prepared):
            context = self.prepare_context(context, context_mask)
        if layout is not None and (context is None or layout.ndim != 4
                                   or layout.shape[:2] != context.shape[:2]):
            raise ValueError(f"layout must have shape (B, L, S, S) matching the context's (B, L) "
                             f"= {None if context is None else tuple(context.shape[:2])}, got "
                             f"{tuple(layout.shape)}")

        masks: Iterator[Tensor] = iter(())
        if prompt_terms is not None:
            if not (given and context_prepared):
                raise ValueError("prompt_terms need the prepared context they were computed from "
                                 "(context_prepared=True)")
            num_kv = sum(s.cross_attention is not None for s in self._stages())
            base = num_kv + (self.pool_proj is not None)
            if len(prompt_terms) not in (base, base + num_kv):
                raise ValueError(f"prompt_terms must be UNet.prompt_terms' {base} tensors (+ "
                                 f"{num_kv} with a layout), got {len(prompt_terms)}")
            masks = iter(prompt_terms[base:])
            if len(prompt_terms) > base and (layout is None
                                             or layout.shape[-2:] != (height, width)):
                raise ValueError("prompt_terms computed with a layout need that layout, at the "
                                 f"input's resolution {height}x{width}")
        terms = iter(prompt_terms or ())

        emb = self.time_mlp(timestep_embedding(t, cfg.channels[0]).to(x.dtype))  # (B, E)
        if self.pool_proj is not None:
            pooled = (next(terms) if prompt_terms is not None
                      else self._pooled_term(context, context_mask))
            emb = emb + pooled

        def kv(stage: _Stage) -> Tensor | None:
            return (next(terms) if prompt_terms is not None and stage.cross_attention is not None
                    else None)

        def attn_mask(stage: _Stage) -> Tensor | None:
            return next(masks, None) if stage.cross_attention is not None else None

        films = self._films(emb)
        film = iter(films) if films is not None else itertools.repeat(None)

        extra = cfg.extra_up_block
        h = self.conv_in(x)
        skips = [h] if extra else []
        for i, stages in enumerate(self.down):
            for stage in stages:
                h = stage(h, emb, context, context_mask, layout, kv(stage), next(film),
                          attn_mask(stage))
                skips.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
                if extra:
                    skips.append(h)

        h = self.mid1(h, emb, context, context_mask, layout, kv(self.mid1), next(film),
                      attn_mask(self.mid1))
        h = self.mid2(h, emb, next(film))

        for j, stages in enumerate(self.up):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask, layout,
                          kv(stage), next(film), attn_mask(stage))
            if j < len(self.upsamplers):
                h = self.upsamplers[j](h)

        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)

