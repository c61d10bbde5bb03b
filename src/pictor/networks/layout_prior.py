"""A learned layout prior: where in the image each word of the prompt belongs, from the text alone.

Why the network needs it (docs/alignment.md). The U-Net decides the layout in its first,
high-noise steps, where x_t shows nothing yet, and there it places the two objects of "A to the
left of B" at chance: the relation is a few percent of the denoising loss (knowing it removes
~4% of the x0 error at t = 999), and neither a grounding loss on the attention, nor its centroid,
nor order-aware text tokens, nor more high-noise training moved it (docs/grounding.md). Yet an
attention bias that draws each object's words into their region during those steps makes the
same U-Net draw the relation (layout guidance: position 0.40 -> 0.88), so what is missing is the
plan, not the drawing. This module learns the plan.

For every token of the frozen encoder's output it predicts a distribution over the S x S pixels
of the U-Net's input, q(p | token, prompt), by supervised learning from the shapes world's object
masks: the target of a token that names an object (its colour word, or the words
`grounding_words` picks) is that object's mask, normalised; every other real token's target is
uniform (pictor.training.grounding.layout_prior_loss). Its optimum is E[mask | prompt]: for "A
to the left of B" A's words get more mass on the left, B's on the right; where the prompt says
nothing about place ("a circle and a square", "three stars") the best prediction is the
uniform-like spread of all placements, and a uniform prediction adds nothing. The prompt is read
by a small transformer with token positions (word order decides which object is the subject),
over the frozen tokens, so "on the left side of" or "beneath" can land where their meaning does.

How the U-Net uses it (UNet.forward): while t >= min_t, every cross-attention adds to the score
of token j at pixel p the bias strength * clamp(log(S^2 q(p | j)), -clamp, clamp): the prior's
log-density ratio against uniform, i.e. attention re-weighted by the prior (DenseDiffusion's
attention modulation, Kim et al. 2023, with a learned layout in place of a given one; LMD, Lian
et al. 2023, plans the layout with a language model). An untrained prior (zero output layer)
is uniform and adds exactly 0, so a trained U-Net gains it as the identity.

    context (B, L, D) frozen tokens, mask (B, L) -> logits (B, L, S, S); bias (B, L, S, S)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pictor.networks.layers import Linear, TextAdapter, zero_


class LayoutPrior(nn.Module):
    """Per-token pixel distributions from the prompt (module docstring)."""

    def __init__(self, context_dim: int, width: int, num_layers: int, num_heads: int,
                 max_tokens: int, size: int, strength: float, clamp: float) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"layout prior width {width} must be divisible by its {num_heads} "
                             "heads")
        self.size = size            # S: predictions over the S x S input pixels
        self.strength = strength    # bias = strength * clamped log-density ratio
        self.clamp = clamp
        self.proj = Linear(context_dim, width)
        # order-aware token mixing: TextAdapter's layers with learned token positions (zero
        # at init, like its residual branches; the projection above is not the identity, so the
        # positions are learned from the start)
        self.mixer = TextAdapter(width, num_layers, num_heads, max_tokens=max_tokens)
        self.norm = nn.LayerNorm(width)
        self.out = zero_(Linear(width, size * size))  # zero: uniform, no bias, at init
        # When a list: UNet.forward appends the logits it computes (the supervised loss of
        # pictor.training reads them there, inside the one forward pass DDP sees).
        self.record: list[torch.Tensor] | None = None

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, L, S, S) of q(p | token) over the pixels (softmax over the last two)."""
        h = self.mixer(self.proj(context), mask)                      # (B, L, W)
        logits = self.out(self.norm(h))                               # (B, L, S*S)
        return logits.reshape(*logits.shape[:2], self.size, self.size)

    def bias(self, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The attention bias (B, L, S, S) of the module docstring, in float32."""
        return self.bias_from_logits(self.forward(context, mask))

    def bias_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        log_q = torch.log_softmax(logits.flatten(2), dim=-1)         # (B, L, S*S)
        ratio = (log_q + 2 * math.log(self.size)).clamp(-self.clamp, self.clamp)
        return (self.strength * ratio).reshape(logits.shape)
