"""A small in-domain CLIP: an image CNN and a text head over a frozen text encoder's tokens,
projected into one embedding space (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision", Fig. 3).

    model = ClipModel(ClipConfig())
    img = model.encode_image(x)           # x (B, 3, 64, 64) in [-1, 1] -> (B, E), unit norm
    txt = model.encode_text(emb, mask)    # frozen tokens (B, L, D), mask (B, L) -> (B, E)
    logits = model.logit_scale.exp() * img @ txt.T   # (B, B), what the loss sees

The text tower is the frozen encoder the diffusion model conditions on (MiniLM by default):
only a pooling over its token embeddings and a projection are trained, so the judge reads
captions the way the generator does and trains in minutes on a CPU. The image tower follows
the shapes feature network (pictor.evaluation.features): strided 4x4 convolutions with
GroupNorm, here each followed by a residual 3x3 convolution, then a global max pool (is a
pattern anywhere?) and a 2 x 2 average pool (where?) into a linear projection.

| here            | CLIP paper (Fig. 3 pseudocode)         |
|-----------------|----------------------------------------|
| encode_image    | I_e = l2_normalize(I_f @ W_i)          |
| encode_text     | T_e = l2_normalize(T_f @ W_t)          |
| logit_scale     | t (a log-parameterised temperature), logits = exp(t) I_e T_e^T |

The stored `feature_mean`/`feature_std` standardise the image embedding for the distribution
metrics (FD, KID), as the shapes feature network does; they are set after training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class ClipConfig:
    """Both towers, the temperature, and which frozen text encoder the text head reads."""

    image_size: int = 64  # input resolution; images are resized (bicubic) to it
    channels: tuple[int, ...] = (32, 64, 128, 256)  # widths of the stride-2 stages
    norm_groups: int = 8  # GroupNorm groups after every convolution
    embed_dim: int = 256  # width E of the joint embedding space
    text_encoder: str = "minilm"  # pictor.text.encoders.load_text_encoder spec (frozen)
    text_max_length: int = 32  # its token budget (emoji captions need <= 32 MiniLM tokens)
    text_dim: int = 384  # its token width D (MiniLM: 384)
    text_pooling: Literal["mean", "attention"] = "attention"  # how tokens become one vector
    text_heads: int = 6  # heads of the attention pooling (text_dim must divide by it)
    text_hidden: int = 512  # hidden width of the text projection MLP
    init_temperature: float = 0.07  # CLIP's initial tau: logit_scale starts at log(1 / tau)
    max_logit_scale: float = 100.0  # CLIP clips exp(logit_scale) at 100 for stability


class ImageTower(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, embed_dim), not normalised."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        if config.image_size >> len(config.channels) < 2:
            raise ValueError(f"{len(config.channels)} stride-2 stages shrink {config.image_size} "
                             "px below 2 px; use fewer channels entries")
        stages, in_ch = [], 3
        for ch in config.channels:
            if ch % config.norm_groups:
                raise ValueError(f"channels {config.channels} must be multiples of "
                                 f"norm_groups={config.norm_groups}")
            down = nn.Sequential(nn.Conv2d(in_ch, ch, 4, stride=2, padding=1),
                                 nn.GroupNorm(config.norm_groups, ch), nn.SiLU())
            residual = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1),
                                     nn.GroupNorm(config.norm_groups, ch))
            stages.append(nn.ModuleList([down, residual]))
            in_ch = ch
        self.stages = nn.ModuleList(stages)
        self.proj = nn.Linear(5 * in_ch, config.embed_dim)  # max pool + 2 x 2 average pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for down, residual in self.stages:  # type: ignore[misc]
            h = down(h)                                   # (B, C, H / 2, W / 2)
            h = nn.functional.silu(h + residual(h))
        pooled = torch.cat([h.amax(dim=(2, 3)),                                      # (B, C)
                            nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)], 1)  # (B, 4C)
        return self.proj(pooled)                                                     # (B, E)


class TextHead(nn.Module):
    """Frozen token embeddings (B, L, D) and mask (B, L) -> (B, embed_dim), not normalised.

    "mean": the masked mean of the tokens (the pooling sentence-transformers trains MiniLM
    with). "attention": one learned query attends over the tokens (the attentional pooler of
    open_clip / CoCa), added to the mean so that training starts from mean pooling. Then an
    MLP projects into the joint space."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.pooling = config.text_pooling
        d = config.text_dim
        if self.pooling == "attention":
            if d % config.text_heads:
                raise ValueError(f"text_dim={d} must divide by text_heads={config.text_heads}")
            self.query = nn.Parameter(torch.zeros(1, 1, d))
            self.attn = nn.MultiheadAttention(d, config.text_heads, batch_first=True)
        elif self.pooling != "mean":
            raise ValueError(f"text_pooling must be 'mean' or 'attention', got {self.pooling!r}")
        self.proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.text_hidden), nn.GELU(),
                                  nn.Linear(config.text_hidden, config.embed_dim))

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(emb.dtype)[..., None]                                   # (B, L, 1)
        pooled = (emb * m).sum(1) / m.sum(1).clamp_min(1.0)                 # (B, D)
        if self.pooling == "attention":
            query = self.query.expand(emb.shape[0], -1, -1)                 # (B, 1, D)
            attended, _ = self.attn(query, emb, emb, key_padding_mask=~mask.bool(),
                                    need_weights=False)                     # (B, 1, D)
            pooled = pooled + attended[:, 0]
        return self.proj(pooled)                                            # (B, E)


class ClipModel(nn.Module):
    """The two towers and the learnable temperature (module docstring)."""

    def __init__(self, config: ClipConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClipConfig()
        if not (config.init_temperature > 0 and config.max_logit_scale > 1):
            raise ValueError("init_temperature must be > 0 and max_logit_scale > 1")
        self.image_tower = ImageTower(config)
        self.text_head = TextHead(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.register_buffer("feature_mean", torch.zeros(config.embed_dim))
        self.register_buffer("feature_std", torch.ones(config.embed_dim))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, E) unit vectors."""
        return nn.functional.normalize(self.image_tower(x), dim=-1)

    def encode_text(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frozen tokens (B, L, D), mask (B, L) -> (B, E) unit vectors."""
        return nn.functional.normalize(self.text_head(emb, mask), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clipped at max_logit_scale (CLIP, Sec. 2.5)."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E): unit image embeddings standardised by the stored statistics,
        the features of FD and KID."""
        return (self.encode_image(x) - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, B) logits of image i against caption j."""
        return self.scale() * self.encode_image(x) @ self.encode_text(emb, mask).T
