"""Conditional GAN training (`pictor train` with `model.family: gan`; configs/gan.yaml).

The recipe of DF-GAN (Tao et al. 2022): one-stage generator with deep text-image fusion
(pictor.networks.gan), matching-aware hinge loss and MA-GP (or R1) (pictor.training.gan_losses),
plus DiffAugment on real and fake images (Zhao et al. 2020; pictor.training.diffaugment) and an
EMA of the generator (the loop's EMA; sampling uses it).

It runs in the shared training loop (training/loop.py: checkpoints, resume, NaN stop, logging,
progress bar). That loop takes one optimizer step per iteration, so both players step together
on one batch: simultaneous gradient descent, the setting Mescheder et al. 2018 analyse for
zero-centred penalties (DF-GAN alternates D then G). Each player's gradient comes only from its
own loss:
    L = L_D(D; G(z, s).detach()) + penalty + L_G(G; D with its parameters detached)
one backward pass gives dL_D/dtheta_D and dL_G/dtheta_G; the optimizer's two parameter groups
carry the two learning rates (gan.discriminator_lr_scale; the two time-scale rule).

With gan.condition_ramp_start/end the condition fades in (Shahbazi et al. 2022): both players
see lambda_t s instead of s, lambda_t = `condition_weight(step, start, end)`, and the mismatch
term is weighted by lambda_t too (with s scaled to 0 a "mismatched" pair is a real pair).

Per step, logged beside the loss: d_loss, g_loss, penalty, d_real and d_fake (mean logits):
the training-stability curves of docs/families.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from pictor.config import GanTrainConfig
from pictor.networks.gan import GanPair
from pictor.training.diffaugment import augment, draw_params, parse_policy
from pictor.training.distributed import DistInfo
from pictor.training.gan_losses import (
    hinge_discriminator_loss,
    hinge_generator_loss,
    input_gradients,
    ma_gp,
    r1_penalty,
)
from pictor.training.loop import TrainResult, run_training
from pictor.training.pixel_text import FamilyTaskParts, PixelTextData

GENERATOR_FILE = "generator.safetensors"


def condition_weight(step: int, start: int, end: int) -> float:
    """lambda_t of optimizer step `step` (0-based): 0 before start, linear to 1 at end."""
    if end <= start:
        return 1.0 if step >= start else 0.0
    return min(1.0, max(0.0, (step - start) / (end - start)))


class GanTask(FamilyTaskParts):
    weights_file = GENERATOR_FILE

    def __init__(self, config: GanTrainConfig, dist: DistInfo) -> None:
        if dist.enabled:  # the loss calls the players directly, past a DDP wrapper's forward
            raise ValueError("GAN training runs in one process; torchrun (DDP) is not supported "
                             "for model.family gan yet")
        self.config = config
        self.device = dist.device
        self.data = PixelTextData(config, dist)
        self.num_examples = self.data.num_examples
        self.data.check_text_dim(config)
        self.ops = parse_policy(config.gan.diffaugment)
        torch.manual_seed(config.training.seed)
        self.model = GanPair(config.model, 1.0, config.gan.discriminator_lr_scale)
        self.loss_terms: dict[str, float] = {}
        self.step = 0

    def prepare_step(self, step: int, ema_module: nn.Module) -> None:
        self.step = step  # the conditioning ramp follows the optimizer step (also on resume)

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        size = self.config.model.image_size
        draws = {"z": torch.randn((batch_size, self.config.model.noise_dim), generator=generator),
                 "drop": torch.rand(batch_size, generator=generator)
                 < self.config.training.caption_dropout_prob}
        for who in ("real", "fake"):
            for op, p in draw_params(self.ops, batch_size, size, generator).items():
                draws[f"{who}:{op}"] = p
        return draws  # z (B, nz), drop (B,), augmentation parameters (B, ...)

    def loss(self, model: nn.Module, indices: torch.Tensor,
             draws: dict[str, torch.Tensor]) -> torch.Tensor:
        pair = getattr(model, "module", model)           # the GanPair inside a DDP wrapper
        g, disc, gcfg = pair.generator, pair.discriminator, self.config.gan
        x = self.data.x.index_select(0, indices.to(self.device))             # (b, 3, S, S)
        s = self.data.sentences.index_select(0, self.data.rows(indices, draws["drop"]))
        lam = condition_weight(self.step, gcfg.condition_ramp_start, gcfg.condition_ramp_end)
        s = lam * s                                                           # (b, D)
        z = draws["z"].to(self.device)                                        # (b, nz)
        real_p = {k.split(":", 1)[1]: v for k, v in draws.items() if k.startswith("real:")}
        fake_p = {k.split(":", 1)[1]: v for k, v in draws.items() if k.startswith("fake:")}

        fake = g(z, s)                                                        # (b, 3, S, S)
        real_aug = augment(x, real_p)
        real_logits, grad_x, grad_s = input_gradients(disc, real_aug, s)
        mismatch_weight = gcfg.mismatch_weight * lam
        mismatch = disc(real_aug, s.roll(1, dims=0)) if mismatch_weight > 0 else None
        fake_logits = disc(augment(fake.detach(), fake_p), s)
        d_loss = hinge_discriminator_loss(real_logits, fake_logits, mismatch, mismatch_weight)
        penalty = (ma_gp(grad_x, grad_s, gcfg.penalty_weight, gcfg.penalty_power)
                   if gcfg.penalty == "ma_gp" else r1_penalty(grad_x, gcfg.penalty_weight))
        # the generator's loss through a discriminator whose parameters are constants
        frozen = {name: p.detach() for name, p in disc.named_parameters()}
        g_logits = functional_call(disc, frozen, (augment(fake, fake_p), s))
        g_loss = hinge_generator_loss(g_logits)
        self.loss_terms = {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach()),
                           "penalty": float(penalty.detach()),
                           "d_real": float(real_logits.detach().mean()),
                           "d_fake": float(fake_logits.detach().mean()),
                           "condition_weight": lam}
        return d_loss + penalty + g_loss

    @torch.no_grad()
    def sample(self, pair: GanPair, prompts: list[str], seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn((len(prompts), self.config.model.noise_dim), generator=gen)
        return pair.generator(z.to(self.device), self.data.sentence(prompts))

    def final_network(self, ema_module: nn.Module) -> nn.Module:
        return ema_module.generator


def train_gan(config: GanTrainConfig, *, resume: str | None = None,
              dist_info: DistInfo | None = None) -> TrainResult:
    """Train the conditional GAN described by `config`."""
    return run_training(config, lambda dist: GanTask(config, dist), resume=resume,
                        dist_info=dist_info)
