"""Training the KL autoencoder of latent diffusion (`pictor train-autoencoder`).

Objective per image x (B, 3, H, W) in [-1, 1] (Kingma & Welling 2014; Rombach et al. 2022,
Sec. 3 and App. G, without the adversarial and LPIPS terms, which flat-coloured shapes do not
need):

    (mu, log sigma^2) = E(x),   z = mu + sigma * eps, eps ~ N(0, I),   x_hat = D(z)
    L = l1_weight * mean|x - x_hat| + l2_weight * mean (x - x_hat)^2
        + edge_weight * mean |grad x - grad x_hat|             finite differences along H and W
        + kl_weight * mean over latent elements of KL(N(mu, sigma^2) || N(0, 1))
    KL = 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)              per element, closed form

All terms are means (per pixel / per latent element), so kl_weight is relative to a per-pixel
reconstruction error.

At the end, the latent scale is measured on the data: scaling_factor = 1 / std(mu) over the
whole data set (Rombach et al. 2022, Sec. 4.3.2 / App. G: rescale latents to unit variance
before diffusion), written into the exported module's config and the run's config.yaml.

The loop itself (optimizer, EMA, checkpoints, DDP, NaN stop) is `run_training` of loop.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from pictor.config import AutoencoderTrainConfig, save_config
from pictor.networks.autoencoder import AutoencoderKL, kl_divergence
from pictor.training.distributed import DistInfo
from pictor.training.loop import TrainResult, run_training
from pictor.training.metrics import save_image_grid


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along W and H: (B, C, H, W-1), (B, C, H-1, W)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


class _Reconstruct(nn.Module):
    """The trained module: forward(x, eps) -> (x_hat, mean, logvar), so DDP sees one forward."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mean, logvar = self.autoencoder.encode(x)        # (B, c, h, w) each
        # Reparameterisation with noise drawn beforehand from the run's generator for the whole
        # global batch (so N processes and resumed runs see the same eps as one process).
        z = mean + (0.5 * logvar).exp() * eps.to(mean)
        return self.autoencoder.decode(z), mean, logvar  # (B, 3, H, W), ...


class AutoencoderTask:
    def __init__(self, config: AutoencoderTrainConfig, dist: DistInfo) -> None:
        from pictor.data.loader import open_dataset

        self.config = config
        self.device = dist.device
        # an imagefolder (`pictor data synth`) or shards (`pictor data prepare`), as `pictor train`
        dataset = open_dataset(config.data.path, image_size=config.data.image_size,
                               max_images=config.data.max_images)
        self.images = dataset.load_all().to(self.device)  # (N, 3, H, W) in [-1, 1]
        self.num_examples = len(dataset)
        torch.manual_seed(config.training.seed)
        self.autoencoder = AutoencoderKL(config.model)
        self.model = _Reconstruct(self.autoencoder)
        with torch.no_grad():
            mean, _ = self.autoencoder.encode(self.images[:1].cpu())
        self.latent_shape = tuple(mean.shape[1:])  # (c, h, w)

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"eps": torch.randn((batch_size, *self.latent_shape), generator=generator)}

    def losses(self, model: nn.Module, x: torch.Tensor, eps: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        x_hat, mean, logvar = model(x, eps)
        x_hat = x_hat.float()
        lc = self.config.loss
        terms = {
            "l1": (x - x_hat).abs().mean(),
            "l2": (x - x_hat).pow(2).mean(),
            # per-sample sum over latent elements -> mean per element
            "kl": kl_divergence(mean.float(), logvar.float()).mean() / mean[0].numel(),
        }
        total = lc.l1_weight * terms["l1"] + lc.l2_weight * terms["l2"] + lc.kl_weight * terms["kl"]
        if lc.edge_weight:
            (gx, gy), (hx, hy) = image_gradients(x), image_gradients(x_hat)
            terms["edge"] = 0.5 * ((gx - hx).abs().mean() + (gy - hy).abs().mean())
            total = total + lc.edge_weight * terms["edge"]
        terms["total"] = total
        return terms

    def loss(self, model: nn.Module, indices: torch.Tensor,
             draws: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.images.index_select(0, indices.to(self.device))  # (b, 3, H, W)
        return self.losses(model, x, draws["eps"].to(self.device))["total"]

    @torch.no_grad()
    def validate(self, ema_module: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        """Reconstructions (posterior means) of the first 8 images; returns their L1 error."""
        ema_module.eval()
        ae = ema_module.autoencoder
        x = self.images[:8]
        mean, _ = ae.encode(x)
        x_hat = ae.decode(mean).float().clamp(-1, 1)
        save_image_grid(torch.cat([x, x_hat]), ["input"] * len(x) + ["reconstruction"] * len(x),
                        run_dir / "samples" / f"step_{step:09d}.png", columns=len(x), cell=96)
        return {"val_l1": float((x - x_hat).abs().mean())}

    @torch.no_grad()
    def latent_std(self, autoencoder: nn.Module, batch_size: int = 256) -> float:
        """Standard deviation of the posterior means over the whole data set."""
        autoencoder.eval()
        means = [autoencoder.encode(self.images[i:i + batch_size])[0].float().cpu()
                 for i in range(0, len(self.images), batch_size)]
        return float(torch.cat(means).std())

    def finish(self, ema_module: nn.Module, run_dir: Path) -> None:
        from pictor.networks.io import save_module

        ae = ema_module.autoencoder
        std = self.latent_std(ae)
        if not std > 0:
            raise ValueError(f"the latents have standard deviation {std}; the autoencoder did not "
                             "learn (check the data and the loss weights)")
        model_config = dataclasses.replace(self.config.model, scaling_factor=1.0 / std)
        ae.config = model_config  # AutoencoderKL.scaling_factor reads its config
        final = run_dir / "final"
        final.mkdir(parents=True, exist_ok=True)
        save_module(ae, model_config, final / "autoencoder.safetensors")
        self.config = dataclasses.replace(self.config, model=model_config)
        save_config(self.config, final / "config.yaml")
        save_config(self.config, run_dir / "config.yaml")


def train_autoencoder(config: AutoencoderTrainConfig, *, resume: str | None = None,
                      dist_info: DistInfo | None = None) -> TrainResult:
    """Train the KL autoencoder described by `config` (`pictor train-autoencoder`)."""
    return run_training(config, lambda dist: AutoencoderTask(config, dist), resume=resume,
                        dist_info=dist_info)
