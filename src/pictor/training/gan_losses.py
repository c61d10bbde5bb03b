"""The losses of the conditional GAN (pictor.training.gan).

Notation: D(x, s) is the discriminator's logit for image x and sentence embedding s, G(z, s) the
generator; s' a mismatched sentence (another example's).

- Hinge loss (Lim & Ye 2017; Miyato et al. 2018), matching-aware as in DF-GAN (Tao et al. 2022,
  eq. 1): the discriminator sees real-matched pairs as positives and both fakes and real images
  with a mismatched sentence as negatives,
      L_D = E[relu(1 - D(x, s))] + w E[relu(1 + D(G(z, s), s))] + (1 - w) E[relu(1 + D(x, s'))]
      L_G = -E[D(G(z, s), s)]
  with w = 1/2 in DF-GAN (`mismatch_weight` = 1 - w; 0 drops the mismatch term).
- Matching-aware zero-centred gradient penalty, MA-GP (DF-GAN eq. 1): on real, matched pairs,
      L_MA-GP = k E[ (||grad_x D(x, s)||^2 + ||grad_s D(x, s)||^2)^(p/2) ],   k = 2, p = 6,
  the gradient taken jointly over image and sentence, so the discriminator is smooth around
  real data *and* its text.
- R1 (Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?", eq. 9):
      L_R1 = gamma / 2 E[ ||grad_x D(x, s)||^2 ]   on real data.
For a linear discriminator D(x, s) = w.x + u.s both penalties are known exactly:
||grad|| = sqrt(||w||^2 + ||u||^2) for MA-GP and ||w|| for R1 (the unit tests pin this).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Critic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, s) -> logits (B,)


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor,
                             mismatch: torch.Tensor | None = None,
                             mismatch_weight: float = 0.5) -> torch.Tensor:
    """L_D above from the logits (B,) of real-matched, fake and real-mismatched pairs."""
    loss = F.relu(1.0 - real).mean()
    if mismatch is None or mismatch_weight == 0:
        return loss + F.relu(1.0 + fake).mean()
    return (loss + (1.0 - mismatch_weight) * F.relu(1.0 + fake).mean()
            + mismatch_weight * F.relu(1.0 + mismatch).mean())


def hinge_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z, s), s)] from the fake logits (B,)."""
    return -fake.mean()


def input_gradients(critic: Critic, x: torch.Tensor, s: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (B,), grad_x (B, ...), grad_s (B, D)) of critic at (x, s), with the graph kept
    so a penalty on the gradients trains the critic (double backpropagation)."""
    x = x.detach().requires_grad_(True)
    s = s.detach().requires_grad_(True)
    logits = critic(x, s)
    grad_x, grad_s = torch.autograd.grad(logits.sum(), (x, s), create_graph=True)
    return logits, grad_x, grad_s


def ma_gp(grad_x: torch.Tensor, grad_s: torch.Tensor, weight: float = 2.0,
          power: float = 6.0) -> torch.Tensor:
    """MA-GP from the gradients of the critic at real-matched pairs (input_gradients)."""
    sq = grad_x.flatten(1).pow(2).sum(1) + grad_s.flatten(1).pow(2).sum(1)     # (B,)
    return weight * sq.pow(power / 2).mean()


def r1_penalty(grad_x: torch.Tensor, gamma: float = 10.0) -> torch.Tensor:
    """R1 from the image gradient of the critic at real data (input_gradients)."""
    return 0.5 * gamma * grad_x.flatten(1).pow(2).sum(1).mean()
