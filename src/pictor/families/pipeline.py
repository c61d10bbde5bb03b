"""Sampling from a GAN or VAE model folder, and one loader for a model folder of any family.

    pipe = load_model("runs/gan/final")          # FamilyPipeline (GAN, VAE) or Pipeline (diffusion)
    images = pipe.generate("a red circle", num_images=4, seed=7)

A GAN or VAE model folder is a training run's `final/` folder: `config.yaml` (the resolved
GanTrainConfig / VaeTrainConfig; `model.family` says which) and the EMA weights with their
network config in the safetensors metadata (`generator.safetensors` of the GAN,
`vae.safetensors` of the VAE). The family is read from the folder's config, never guessed.

What applies where: a GAN or VAE draws an image in one network pass from a noise vector, so
sampler, steps, classifier-free guidance, its interval, negative prompts and layout guidance
(all properties of the diffusion sampling loop) are a ValueError naming the option, never
silently ignored. Reproducibility is diffusion's contract: image i of a call uses its own CPU
generator seeded with seed + i for its noise vector (z ~ N(0, I) of the GAN, eps of the VAE's
prior draw), so it is the same whatever num_images, and the network calls are batched. The
provenance record names the family (sampler = the family, num_steps = 1, extra["family"]).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pictor.config import family_config_from_yaml_text, family_of, read_text_limited
from pictor.hardware import device_name
from pictor.networks.cvae import ConditionalVAE, VaeConfig
from pictor.networks.gan import GanConfig, Generator, sentence_embedding
from pictor.networks.io import load_module
from pictor.networks.likelihood import bits_per_dim
from pictor.pipeline import (
    CONFIG_FILE,
    DEFAULT_COMPUTE_DTYPE,
    GeneratedImage,
    _digest,
    load_pipeline,
    model_name_of,
    pil_to_tensor,
    tensor_to_pil,
)
from pictor.provenance import ProvenanceRecord

WEIGHT_FILES = {"gan": "generator.safetensors", "vae": "vae.safetensors"}
NETWORKS: dict[str, tuple[type, type]] = {"gan": (Generator, GanConfig),
                                          "vae": (ConditionalVAE, VaeConfig)}
PROMPT_CACHE_SIZE = 1024
# The options of diffusion sampling, by the name generate() takes and the CLI flag that sets it.
DIFFUSION_ONLY = {"num_steps": "--steps", "sampler": "--sampler",
                  "guidance_scale": "--guidance", "guidance_interval": "--guidance-interval",
                  "negative_prompt": "--negative", "layout": "--layout", "callback": "a callback"}


def read_family(model_dir: str | Path) -> str:
    """The family named by a model folder's config.yaml ("diffusion" when it names none)."""
    path = Path(model_dir).expanduser() / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"model folder {str(Path(model_dir))!r} has no {CONFIG_FILE}; a model "
                         "folder is a training run's final/ folder")
    return family_of(family_config_from_yaml_text(read_text_limited(path), where=str(path)))


class FamilyPipeline:
    """Text -> sentence embedding -> one network pass -> images, for the GAN and VAE families."""

    compute_dtype = "float32"

    def __init__(self, model_dir: Path, config: Any, network: torch.nn.Module, sha256: str,
                 device: torch.device) -> None:
        self.model_dir = model_dir
        self.config = config
        self.family = family_of(config)
        self.network = network
        self.model_sha256 = sha256
        self.model_name = model_name_of(model_dir)
        self.device = device
        self.image_size = int(config.model.image_size)
        self._encoder: Any = None
        self._sentences: OrderedDict[str, torch.Tensor] = OrderedDict()

    # ------------------------------------------------------------------ text
    def sentence(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n, D) sentence embeddings (pictor.networks.gan.sentence_embedding) of the frozen
        text encoder training used; each prompt encoded once per pipeline."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._sentences]
        if missing:
            if self._encoder is None:
                from pictor.text.encoders import load_text_encoder

                self._encoder = load_text_encoder(self.config.text.spec,
                                                  self.config.text.max_length)
            emb, mask = self._encoder.encode(list(missing))          # (m, L, D), (m, L)
            for p, s in zip(missing, sentence_embedding(emb.float(), mask), strict=True):
                self._sentences[p] = s
            while len(self._sentences) > PROMPT_CACHE_SIZE:
                self._sentences.popitem(last=False)
        return torch.stack([self._sentences[p] for p in prompts]).to(self.device)

    # ------------------------------------------------------------------ sampling
    def noise_dim(self) -> int:
        m = self.config.model
        return m.noise_dim if self.family == "gan" else m.latent_dim

    def check_options(self, options: dict[str, Any]) -> None:
        """ValueError naming the first diffusion-only option given (see the module docstring)."""
        for name, value in options.items():
            if name not in DIFFUSION_ONLY:
                raise TypeError(f"generate() got an unexpected keyword argument {name!r}")
            if value is None or value is False or value == "":
                continue
            raise ValueError(
                f"{DIFFUSION_ONLY[name]} does not apply to {self.model_name}: a "
                f"{self.family.upper()} draws each image in one network pass from a noise "
                "vector (no sampler, steps or classifier-free guidance); leave it out, or use "
                "a diffusion model")

    def generate(self, prompt: str, *, num_images: int = 1, seed: int = 0,
                 **diffusion_options: Any) -> list[GeneratedImage]:
        """num_images RGB images for `prompt`, image i from seed + i, each with its record.
        Diffusion's sampling options are a ValueError (check_options)."""
        self.check_options(diffusion_options)
        if int(num_images) < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        seeds = [int(seed) + i for i in range(int(num_images))]
        noise = torch.stack([torch.randn(self.noise_dim(),
                                         generator=torch.Generator().manual_seed(s))
                             for s in seeds]).to(self.device)                  # (n, nz)
        c = self.sentence([prompt] * len(seeds))                              # (n, D)
        with torch.inference_mode():
            if self.family == "gan":
                x = self.network(noise, c)
            else:
                x = self.network.sample(c, noise, self.config.vae.sample_temperature)
        extra = {"family": self.family, "compute_dtype": self.compute_dtype,
                 "device": device_name(self.device)}
        if self.family == "vae":
            extra["temperature"] = self.config.vae.sample_temperature
        out = []
        for s, image in zip(seeds, tensor_to_pil(x), strict=True):
            record = ProvenanceRecord(
                prompt=prompt, seed=s, sampler=self.family, num_steps=1, guidance_scale=1.0,
                model_name=self.model_name, model_sha256=self.model_sha256,
                width=image.width, height=image.height, extra=dict(extra))
            out.append(GeneratedImage(image=image, record=record))
        return out

    # ------------------------------------------------------------------ likelihood
    def bits_per_dim(self, images: Sequence[Image.Image], prompts: Sequence[str], *,
                     seed: int = 0, batch_size: int = 64) -> float:
        """VAE only: the negative ELBO in bits per dimension, averaged over images (resized to
        the model's size like training data) with their prompts, one posterior sample each
        (seed fixes it): an upper bound on -log2 P(x | c) / D. ValueError for a GAN (no
        likelihood)."""
        if self.family != "vae":
            raise ValueError(f"a {self.family.upper()} defines no likelihood; bits/dim is "
                             "reported for the VAE only")
        if len(images) != len(prompts) or not images:
            raise ValueError("bits_per_dim needs one prompt per image and at least one image")
        gen = torch.Generator().manual_seed(seed)
        total, count = 0.0, 0
        for i in range(0, len(images), batch_size):
            x = torch.cat([pil_to_tensor(im, self.image_size)
                           for im in images[i:i + batch_size]]).to(self.device)
            x = ((x + 1) * 127.5).round() / 127.5 - 1           # on the 8-bit grid exactly
            c = self.sentence(list(prompts[i:i + batch_size]))
            eps = torch.randn((x.shape[0], self.config.model.latent_dim), generator=gen)
            with torch.inference_mode():
                terms = self.network.elbo_terms(x, c, eps.to(self.device))
            total += float(terms.negative_elbo().sum())
            count += x.shape[0]
            dims = terms.num_dims
        return float(bits_per_dim(total / count, dims))


def load_family_pipeline(model_dir: str | Path, device: str | torch.device = "cpu"
                         ) -> FamilyPipeline:
    """A GAN or VAE model folder (see the module docstring); ValueError naming what is wrong."""
    model_dir = Path(model_dir).expanduser()
    device = torch.device(device)
    path = model_dir / CONFIG_FILE
    config = family_config_from_yaml_text(read_text_limited(path), where=str(path))
    family = family_of(config)
    if family not in NETWORKS:
        raise ValueError(f"{model_dir} holds a {family} model; load it with load_model")
    weights = model_dir / WEIGHT_FILES[family]
    if not weights.is_file():
        raise ValueError(f"{family} model folder {str(model_dir)!r} has no "
                         f"{WEIGHT_FILES[family]} (looked for {str(weights)!r})")
    cls, config_cls = NETWORKS[family]
    network = load_module(cls, config_cls, weights, map_location=device)
    if network.config != config.model:
        raise ValueError(f"{weights} does not fit {path} (the network configs differ): the "
                         "folder mixes files of two models")
    network = network.to(device).eval().requires_grad_(False)
    return FamilyPipeline(model_dir, config, network, _digest([weights]), device)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu", *,
               compute_dtype: str = DEFAULT_COMPUTE_DTYPE) -> Any:
    """The sampling pipeline of a model folder of any family: pictor.pipeline.Pipeline for
    diffusion, FamilyPipeline for a GAN or VAE. compute_dtype applies to diffusion only (the
    GAN and VAE compute in float32)."""
    if read_family(model_dir) == "diffusion":
        return load_pipeline(model_dir, device, compute_dtype=compute_dtype)
    return load_family_pipeline(model_dir, device)


__all__ = ["DIFFUSION_ONLY", "FamilyPipeline", "load_family_pipeline", "load_model",
           "read_family"]
