"""Conditional VAE training (`pictor train` with `model.family: vae`; configs/vae.yaml).

The model is pictor.networks.cvae.ConditionalVAE (encoder q(z|x,c), decoder p(x|z,c), learned
prior p(z|c)). Per step, on a batch of images x with sentence embeddings c:
    loss = mean_b [ -log p(x|z,c) + beta_t KL(q(z|x,c) || p(z|c)) ] / D      (nats per dim)
    beta_t = min(1, (t + 1) / vae.kl_warmup_steps)                           (KL warm-up)
and the log also carries the true negative ELBO (beta = 1) in bits per dimension over the
D = 3 S S pixel values of the batch (`bits_per_dim`, with its reconstruction and KL parts):
an upper bound on -log2 P(x|c) / D under the discretised 8-bit likelihood.
"""

from __future__ import annotations

import torch
from torch import nn

from pictor.config import VaeTrainConfig
from pictor.networks.cvae import ConditionalVAE
from pictor.networks.likelihood import bits_per_dim
from pictor.training.distributed import DistInfo
from pictor.training.loop import TrainResult, run_training
from pictor.training.pixel_text import FamilyTaskParts, PixelTextData

VAE_FILE = "vae.safetensors"


def kl_weight(step: int, warmup_steps: int) -> float:
    """beta of optimizer step `step` (0-based): linear from 1/warmup_steps to 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class VaeTask(FamilyTaskParts):
    weights_file = VAE_FILE

    def __init__(self, config: VaeTrainConfig, dist: DistInfo) -> None:
        self.config = config
        self.device = dist.device
        self.data = PixelTextData(config, dist)
        self.num_examples = self.data.num_examples
        self.data.check_text_dim(config)
        torch.manual_seed(config.training.seed)
        self.model = ConditionalVAE(config.model)
        self.step = 0
        self.loss_terms: dict[str, float] = {}

    def prepare_step(self, step: int, ema_module: nn.Module) -> None:
        self.step = step  # the KL warm-up follows the optimizer step (also after a resume)

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"eps": torch.randn((batch_size, self.config.model.latent_dim),
                                   generator=generator),
                "drop": torch.rand(batch_size, generator=generator)
                < self.config.training.caption_dropout_prob}

    def loss(self, model: nn.Module, indices: torch.Tensor,
             draws: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.data.x.index_select(0, indices.to(self.device))             # (b, 3, S, S)
        c = self.data.sentences.index_select(0, self.data.rows(indices, draws["drop"]))
        terms = model(x, c, draws["eps"].to(self.device))
        beta = kl_weight(self.step, self.config.vae.kl_warmup_steps)
        d = terms.num_dims
        self.loss_terms = {
            "bits_per_dim": float(bits_per_dim(terms.negative_elbo().detach().mean(), d)),
            "recon_bits_per_dim": float(bits_per_dim(-terms.log_likelihood.detach().mean(), d)),
            "kl_bits_per_dim": float(bits_per_dim(terms.kl.detach().mean(), d)),
            "kl_weight": beta}
        return terms.negative_elbo(beta).mean() / d

    @torch.no_grad()
    def sample(self, vae: ConditionalVAE, prompts: list[str], seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn((len(prompts), self.config.model.latent_dim), generator=gen)
        return vae.sample(self.data.sentence(prompts), eps.to(self.device),
                          self.config.vae.sample_temperature)

    def final_network(self, ema_module: nn.Module) -> nn.Module:
        return ema_module


def train_vae(config: VaeTrainConfig, *, resume: str | None = None,
              dist_info: DistInfo | None = None) -> TrainResult:
    """Train the conditional VAE described by `config`."""
    return run_training(config, lambda dist: VaeTask(config, dist), resume=resume,
                        dist_info=dist_info)
