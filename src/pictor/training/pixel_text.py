"""The data of the GAN and VAE families: every image as pixels and every caption as the frozen
text encoder's sentence embedding, preloaded once (the same data set, the same text encoder and
the same on-disk text cache as diffusion training; pictor.data.loader).

    data = PixelTextData(config, dist)
    data.x          (N, 3, S, S) in [-1, 1], on the 8-bit grid
    data.sentences  (U, D) L2-normalised sentence embeddings of the unique captions (and "")
    data.rows(idx)  (b,) rows of `sentences` for example indices
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pictor.config import LatentSpaceConfig, save_config
from pictor.networks.gan import sentence_embedding
from pictor.text.encoders import text_encoder_identity
from pictor.training.distributed import DistInfo, barrier


class PixelTextData:
    def __init__(self, config: Any, dist: DistInfo) -> None:
        from pictor.data.loader import (
            TextEmbeddingTable,
            encode_images_cached,
            open_dataset,
            prepared_text_table,
        )
        from pictor.training.latent_space import build_latent_codec

        dcfg, tcfg = config.data, config.training
        dataset = open_dataset(dcfg.path, image_size=dcfg.image_size, max_images=dcfg.max_images)
        codec = build_latent_codec(LatentSpaceConfig(kind="pixel"), dist.device)
        identity = text_encoder_identity(config.text.spec, config.text.max_length)

        def build() -> None:
            captions = dataset.captions + list(tcfg.validation_prompts)
            self.table = TextEmbeddingTable.build(
                captions, None, identity, cache_dir=dcfg.cache_dir,
                encode_loader=lambda: _encoder(config),
                prepared=prepared_text_table(dataset, identity))
            self.x = encode_images_cached(dataset, codec.encode, codec.identity, cache_dir=None)

        if dist.is_main:  # rank 0 fills the text cache first, the others then read it
            build()
        barrier(dist)
        if not dist.is_main:
            build()
        self.x = self.x.to(dist.device)                                       # (N, 3, S, S)
        self.sentences = sentence_embedding(self.table.emb, self.table.mask).to(dist.device)
        self.caption_rows = self.table.rows(dataset.captions)                 # (N,)
        self.num_examples = len(dataset)
        if self.x.shape[1] != 3:
            raise ValueError(f"expected RGB images, got {self.x.shape[1]} channels")

    def check_text_dim(self, config: Any) -> None:
        """ValueError unless model.text_dim is the encoder's sentence width."""
        d = self.sentences.shape[1]
        if config.model.text_dim != d:
            raise ValueError(f"text encoder {config.text.spec!r} gives {d}-d sentence "
                             f"embeddings but model.text_dim={config.model.text_dim}; set "
                             f"--model.text_dim={d}")

    def rows(self, indices: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """(b,) sentence rows of examples `indices`; "" where `drop` (caption dropout)."""
        rows = self.caption_rows.index_select(0, indices.cpu())
        if drop is not None:
            rows = torch.where(drop.cpu(), torch.full_like(rows, self.table.empty_row), rows)
        return rows.to(self.sentences.device)

    def sentence(self, prompts: list[str]) -> torch.Tensor:
        """(n, D) sentence embeddings of prompts that are in the table (validation prompts)."""
        return self.sentences.index_select(0, self.table.rows(prompts).to(self.sentences.device))


class FamilyTaskParts:
    """What the GAN and VAE tasks share: validation grids of `sample(module, prompts, seed)`
    and the final/ folder of the EMA network (`final_network(ema_module)`, saved as
    `weights_file` with its config) beside the resolved config.yaml."""

    config: Any
    weights_file: str

    def sample(self, module: nn.Module, prompts: list[str], seed: int) -> torch.Tensor: ...

    def final_network(self, ema_module: nn.Module) -> nn.Module: ...

    def validate(self, ema_module: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        from pictor.training.metrics import save_image_grid

        prompts = list(self.config.training.validation_prompts)
        if prompts:
            images = self.sample(ema_module, prompts, self.config.training.seed)
            save_image_grid(images, prompts, run_dir / "samples" / f"step_{step:09d}.png")
        return {}

    def finish(self, ema_module: nn.Module, run_dir: Path) -> None:
        from pictor.networks.io import save_module

        final = run_dir / "final"
        final.mkdir(parents=True, exist_ok=True)
        save_module(self.final_network(ema_module), self.config.model, final / self.weights_file)
        save_config(self.config, final / "config.yaml")


def _encoder(config: Any):
    from pictor.text.encoders import load_text_encoder

    return load_text_encoder(config.text.spec, config.text.max_length).encode
