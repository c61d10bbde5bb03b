"""Diffusion training of the text-conditional U-Net (`pictor train`).

`train(config)` runs `DiffusionTask` in the shared loop of training/loop.py (optimizer, EMA,
checkpoints, DDP, NaN stop, logging). Before the first step the task preloads everything a step
needs as tensors: the images encoded once into the diffusion space (pixels, pixel-unshuffled
pixels or autoencoder latents, cached on disk; training/latent_space.py) and one text embedding
per unique caption, "" and validation prompt (cached on disk; pictor.data.loader). A step then
only indexes these tensors. With `text.spec: trainable` the table holds token ids instead and the
small TrainableTextEncoder is trained with the U-Net as one module (TextConditionedUNet).

Per example (Ho et al. 2020, Alg. 1, with the choices of the config):
    t ~ U{0..T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    caption c replaced by "" with probability caption_dropout_prob (Ho & Salimans 2022)
    loss = w(t) || f(x_t, t, c) - target ||^2, target eps / v / x0, w = min-SNR-gamma weight
    (with training.stable_target_references = K > 1 the target is the Stable Target Field one:
     the posterior mean over K images of the same caption, pictor.diffusion.losses.stable_target)
    (+ grounding_loss_weight x the token loss and grounding_centroid_weight x the centroid loss
     on the cross-attention maps, from object masks, when set: pictor.training.grounding)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pictor.config import TrainConfig, save_config
from pictor.text.encoders import TEXT_ENCODER_FILE, TRAINABLE_SPEC, text_encoder_identity
from pictor.training.distributed import DistInfo, barrier
from pictor.training.loop import NonFiniteLossError, TrainResult, run_training
from pictor.training.metrics import save_image_grid

__all__ = ["DiffusionTask", "NonFiniteLossError", "TrainResult", "text_encoder_identity", "train"]


class DiffusionTask:
    """Text-conditional diffusion on preloaded tensors (see the module docstring)."""

    def __init__(self, config: TrainConfig, dist: DistInfo) -> None:
        from pictor.data.loader import (
            TextEmbeddingTable,
            encode_images_cached,
            open_dataset,
            prepared_text_table,
        )
        from pictor.diffusion.schedules import NoiseSchedule
        from pictor.networks.unet import UNet
        from pictor.training.latent_space import build_latent_codec

        self.config = config
        self.device = dist.device
        dcfg, tcfg = config.data, config.training
        # an imagefolder or a shard folder (pictor data prepare / synth --format shards)
        dataset = open_dataset(dcfg.path, image_size=dcfg.image_size, max_images=dcfg.max_images)
        self.codec = build_latent_codec(config.latent_space, self.device)

        self.trainable_text = config.text.spec == TRAINABLE_SPEC
        # Rank 0 fills the on-disk caches first; the other ranks then read them.
        def build() -> None:
            captions = dataset.captions + list(tcfg.validation_prompts)
            if self.trainable_text:
                self.text = TokenTable(captions, config.text.max_length)
                self.x = encode_images_cached(
                    dataset, self.codec.encode, self.codec.identity,
                    cache_dir=dcfg.cache_dir if self.codec.kind == "autoencoder" else None)
                return
            identity = text_encoder_identity(config.text.spec, config.text.max_length)
            self.text = TextEmbeddingTable.build(
                captions, None, identity, cache_dir=dcfg.cache_dir,
                encode_loader=lambda: _load_text_encoder(config),
                prepared=prepared_text_table(dataset, identity))
            self.x = encode_images_cached(
                dataset, self.codec.encode, self.codec.identity,
                cache_dir=dcfg.cache_dir if self.codec.kind == "autoencoder" else None,
            )  # (N, C, h, w)

        if dist.is_main:
            build()
        barrier(dist)
        if not dist.is_main:
            build()
        self.caption_rows = self.text.rows(dataset.captions)  # (N,)
        self.num_examples = len(dataset)
        self.groups = (CaptionGroups(stf_group_keys(dataset))
                       if tcfg.stable_target_references > 1 else None)
        self._check_shapes()

        # Seed right before init: loading a text encoder (cache miss) may consume the global RNG.
        torch.manual_seed(tcfg.seed)
        self.model = UNet(config.model)
        self._log = print if dist.is_main else (lambda *_: None)  # rank 0 speaks for all
        if tcfg.init_from:
            init_from_weights(self.model, tcfg.init_from, log=self._log)
        if self.trainable_text:
            self.model = TextConditionedUNet(self.model, self.text.build_encoder(config.text))
        self.schedule = NoiseSchedule.from_config(config.diffusion.schedule)
        self.alphas_cumprod = self.schedule.alphas_cumprod.to(self.device)  # (T,) float64
        self.x = self.x.to(self.device)
        # (U, L, D) embeddings of a frozen encoder, or (U, L) token ids of the trainable one
        self.emb = self.text.emb.to(self.device)
        self.mask = self.text.mask.to(self.device)  # (U, L)
        self.grounding = None
        self.loss_terms: dict[str, float] = {}  # the last step's loss parts, for the log
        if tcfg.layout_prior_loss_weight > 0 and config.model.layout_prior_width == 0:
            raise ValueError("training.layout_prior_loss_weight trains a layout prior; give the "
                             "model one with --model.layout_prior_width=128 (or set the weight "
                             "to 0)")
        if (tcfg.grounding_loss_weight > 0 or tcfg.grounding_centroid_weight > 0
                or tcfg.layout_prior_loss_weight > 0):
            self.grounding = self._build_grounding(dataset, dist.is_main and tcfg.progress_bar)

    def _build_grounding(self, dataset, progress: bool):
        from pictor.text.encoders import load_tokenizer
        from pictor.training.grounding import build_grounding_table

        spec = self.config.text.spec
        if self.trainable_text:
            raise ValueError("the grounding losses (training.grounding_loss_weight, "
                             "grounding_centroid_weight) need a frozen pretrained text "
                             f"encoder (text.spec {spec!r} is the trainable one); set "
                             "text.spec=minilm or set both weights to 0")
        return build_grounding_table(dataset, load_tokenizer(spec),
                                     max_length=self.config.text.max_length,
                                     resolution=self.x.shape[-1],
                                     words=self.config.training.grounding_words, log=self._log,
                                     progress=progress)

    def _check_shapes(self) -> None:
        mcfg = self.config.model
        c = self.x.shape[1]
        if mcfg.in_channels != c or mcfg.out_channels != c:
            raise ValueError(
                f"the {self.codec.kind} space has {c} channels ({self.codec.identity}) but "
                f"model.in_channels={mcfg.in_channels}, model.out_channels={mcfg.out_channels}; "
                f"set --model.in_channels={c} --model.out_channels={c}")
        d = self.config.text.trainable_dim if self.trainable_text else self.text.emb.shape[-1]
        if mcfg.context_dim != d:
            raise ValueError(f"text encoder {self.config.text.spec!r} gives {d}-d embeddings but "
                             f"model.context_dim={mcfg.context_dim}; set --model.context_dim={d}")
        h = self.x.shape[-1]
        f = 2 ** (len(mcfg.channels) - 1)
        if h % f:
            raise ValueError(f"the model input is {h}x{h}, not divisible by {f} (the U-Net's "
                             f"downsampling factor with {len(mcfg.channels)} levels); use fewer "
                             f"model.channels levels or another image/latent size")

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        from pictor.diffusion.losses import sample_timesteps

        num_t, tcfg = self.schedule.num_timesteps, self.config.training
        t = sample_timesteps(batch_size, num_t, generator=generator)
        if tcfg.high_noise_fraction > 0:  # some examples redraw t from the high-noise end
            high = torch.rand(batch_size, generator=generator) < tcfg.high_noise_fraction
            t_high = torch.randint(tcfg.high_noise_min_t, num_t, (batch_size,), generator=generator)
            t = torch.where(high, t_high, t)
        noise = torch.randn((batch_size, *self.x.shape[1:]), generator=generator)
        drop = torch.rand(batch_size, generator=generator) < self.config.training.caption_dropout_prob
        draws = {"t": t, "noise": noise, "drop": drop}  # (B,), (B, C, h, w), (B,)
        if self.groups is not None:  # uniforms that pick the other STF references: (B, K - 1)
            k = self.config.training.stable_target_references
            draws["references"] = torch.rand((batch_size, k - 1), generator=generator,
                                             dtype=torch.float64)
        return draws

    def loss(self, model: nn.Module, indices: torch.Tensor,
             draws: dict[str, torch.Tensor]) -> torch.Tensor:
        from pictor.diffusion.forward import q_sample
        from pictor.diffusion.losses import diffusion_loss

        dev = self.device
        x0 = self.x.index_select(0, indices.to(dev))                    # (b, C, h, w)
        rows = torch.where(draws["drop"], torch.full_like(indices, self.text.empty_row),
                           self.caption_rows.index_select(0, indices)).to(dev)
        context = self.emb.index_select(0, rows)                        # (b, L, D) or ids (b, L)
        mask = self.mask.index_select(0, rows)                          # (b, L)
        t = draws["t"].to(dev)                                          # (b,)
        noise = draws["noise"].to(dev)                                  # (b, C, h, w)
        x_t = q_sample(x0, t, noise, self.alphas_cumprod)
        dc, tcfg = self.config.diffusion, self.config.training
        if self.groups is not None:  # the STF target: x0 and eps become posterior means
            from pictor.diffusion.losses import stable_target

            refs = self.groups.references(indices, draws["references"], draws["drop"])
            refs = self.x.index_select(0, refs.flatten().to(dev)).reshape(
                *refs.shape, *x0.shape[1:])                             # (b, K, C, h, w)
            x0, noise = stable_target(x_t, refs, self.alphas_cumprod[t])
        from pictor.training.grounding import (
            centroid_loss,
            grounding_loss,
            layout_prior_loss,
            record_cross_attention,
        )

        recording = (record_cross_attention(model, tcfg.grounding_min_resolution)
                     if self.grounding is not None else contextlib.nullcontext([]))
        prior = (_unwrap(model).layout_prior if tcfg.layout_prior_loss_weight > 0 else None)
        if prior is not None:
            prior.record = []
        try:
            with recording as records:
                pred = model(x_t, t.float(), context, mask)             # (b, C, h, w)
            prior_logits = prior.record if prior is not None else []
        finally:
            if prior is not None:
                prior.record = None
        denoise = diffusion_loss(pred.float(), x0, noise, t, self.alphas_cumprod,
                                 dc.prediction_type, min_snr_gamma=dc.min_snr_gamma)
        if self.grounding is None:
            return denoise
        tokens, entity, masks = self.grounding.batch(indices, dev)
        keep = ~draws["drop"].to(dev)
        total = denoise
        self.loss_terms = {"denoising_loss": float(denoise.detach())}
        if tcfg.grounding_loss_weight > 0:
            ground = grounding_loss(records, tokens, entity, masks, keep=keep)
            total = total + tcfg.grounding_loss_weight * ground
            self.loss_terms["grounding_loss"] = float(ground.detach())
        if tcfg.grounding_centroid_weight > 0:
            centre = centroid_loss(records, tokens, entity, masks, keep=keep)
            total = total + tcfg.grounding_centroid_weight * centre
            self.loss_terms["centroid_loss"] = float(centre.detach())
        if prior_logits:
            plan = layout_prior_loss(prior_logits[0], mask, tokens, entity, masks, keep=keep)
            total = total + tcfg.layout_prior_loss_weight * plan
            self.loss_terms["layout_prior_loss"] = float(plan.detach())
        return total

    @torch.no_grad()
    def sample(self, unet: nn.Module, prompts: list[str], *, num_steps: int,
               guidance_scale: float, sampler: str = "dpm++2m", seed: int = 0) -> torch.Tensor:
        """Images (n, 3, H, W) in [-1, 1] for `prompts` (which must be in the text table)."""
        from pictor.diffusion.denoiser import Denoiser
        from pictor.guidance import CFG
        from pictor.samplers import get_sampler

        n = len(prompts)
        context, mask = self.text.encode(prompts)
        empty_c, empty_m = self.text.encode([""] * n)
        cond = {"context": context.to(self.device), "mask": mask.to(self.device)}
        uncond = {"context": empty_c.to(self.device), "mask": empty_m.to(self.device)}
        denoiser = Denoiser(model=lambda x, t, c: unet(x, t, c["context"], c["mask"]),
                            schedule=self.schedule,
                            prediction_type=self.config.diffusion.prediction_type)
        gen = torch.Generator().manual_seed(seed)
        x_T = torch.randn((n, *self.x.shape[1:]), generator=gen).to(self.device)
        z = get_sampler(sampler)(denoiser, x_T, num_steps, cond=cond,
                                 guidance=CFG(scale=guidance_scale, uncond=uncond),
                                 generator=gen)
        return self.codec.decode(z.float())

    def validate(self, ema_module: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        tcfg = self.config.training
        prompts = list(tcfg.validation_prompts)
        if not prompts:
            return {}
        ema_module.eval()
        images = self.sample(ema_module, prompts, num_steps=tcfg.validation_num_steps,
                             guidance_scale=tcfg.validation_guidance_scale,
                             sampler=tcfg.validation_sampler, seed=tcfg.seed)
        save_image_grid(images, prompts, run_dir / "samples" / f"step_{step:09d}.png")
        return {}

    def finish(self, ema_module: nn.Module, run_dir: Path) -> None:
        from pictor.networks.io import save_module

        final = run_dir / "final"
        final.mkdir(parents=True, exist_ok=True)
        # EMA weights with their UNetConfig (load_module(UNet, UNetConfig, path)); config.yaml
        # holds what sampling needs besides: text encoder, schedule, prediction type, space.
        if isinstance(ema_module, TextConditionedUNet):
            save_module(ema_module.unet, self.config.model, final / "unet.safetensors")
            encoder = ema_module.text_encoder
            save_module(encoder, encoder.config, final / TEXT_ENCODER_FILE)
        else:
            save_module(ema_module, self.config.model, final / "unet.safetensors")
        save_config(self.config, final / "config.yaml")


def _unwrap(model: nn.Module) -> nn.Module:
    """The UNet inside a DDP wrapper."""
    return getattr(model, "module", model)


def stf_group_keys(dataset) -> torch.Tensor:
    """(N,) group id of each example for Stable Target Field references: examples share a group
    when they share a caption, or, where records name their canonical caption (shapes-world
    data captioned in the caption language, pictor.data.captions), a canonical caption: "a
    crimson disc" and "a red circle" describe the same distribution of scenes, and paraphrases
    would otherwise leave each caption with one image and the target without references."""
    keys = [extra.get("canonical") if isinstance(extra.get("canonical"), str) else text
            for text, extra in zip(dataset.captions, dataset.extras, strict=True)]
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.int64)


class CaptionGroups:
    """The examples of each caption, to draw Stable Target Field references from.

    `references(indices, u, drop)` -> (b, K) example indices: column 0 the example itself, the
    others drawn uniformly (with replacement) by the uniforms u (b, K - 1) from the examples with
    the same caption, or from the whole data set where the caption was dropped (the "" condition
    covers every image).
    """

    def __init__(self, caption_rows: torch.Tensor) -> None:
        rows = caption_rows.cpu().long()
        self.order = torch.argsort(rows, stable=True)                  # examples by caption
        counts = torch.bincount(rows)
        starts = torch.cumsum(counts, 0) - counts
        self.start, self.count = starts[rows], counts[rows]            # per example, (N,)

    def references(self, indices: torch.Tensor, u: torch.Tensor, drop: torch.Tensor
                   ) -> torch.Tensor:
        idx = indices.cpu().long()
        n = len(self.order)
        start = torch.where(drop.cpu(), 0, self.start[idx])
        count = torch.where(drop.cpu(), n, self.count[idx])
        pick = start[:, None] + (u.cpu() * count[:, None]).long().clamp(max=count[:, None] - 1)
        return torch.cat([idx[:, None], self.order[pick]], dim=1)


def init_from_weights(model: nn.Module, source: str | Path, log=print) -> list[str]:
    """Copy into `model` the tensors of a saved U-Net whose name and shape match; returns the
    names that kept their initialisation. `source`: a unet.safetensors file, a model folder or a
    run folder (final/unet.safetensors)."""
    from safetensors.torch import load_file

    p = Path(source).expanduser()
    candidates = [p, p / "unet.safetensors", p / "final" / "unet.safetensors"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"training.init_from: no U-Net weights at {p.resolve()} (looked "
                                f"for {', '.join(str(c) for c in candidates[1:])})")
    saved = load_file(str(path))
    own = model.state_dict()
    copied = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if not copied:
        raise ValueError(f"training.init_from: {path} shares no tensor (name and shape) with "
                         "this model; is it a U-Net of another architecture?")
    with torch.no_grad():
        for k, v in copied.items():
            own[k].copy_(v.to(own[k].dtype))
    kept = sorted(set(own) - set(copied))
    unused = sorted(set(saved) - set(copied))
    log(f"init_from {path}: copied {len(copied)} of {len(own)} tensors"
        + (f"; {len(kept)} keep their initialisation ({', '.join(kept[:4])}"
           f"{', ...' if len(kept) > 4 else ''})" if kept else "")
        + (f"; {len(unused)} saved tensors unused" if unused else ""))
    return kept


class TokenTable:
    """The trainable encoder's counterpart of TextEmbeddingTable: every unique caption (and "",
    the null caption of classifier-free guidance) tokenized once. `emb` holds token ids."""

    def __init__(self, captions: list[str], max_length: int) -> None:
        self.captions = sorted(set(captions) | {""})
        self._row = {c: i for i, c in enumerate(self.captions)}
        self.max_length = max_length

    def build_encoder(self, text_config: Any) -> nn.Module:
        """A fresh TrainableTextEncoder over the captions' words; fills emb (U, L), mask (U, L)."""
        from pictor.text.encoders import TrainableTextEncoder

        encoder = TrainableTextEncoder.from_captions(
            self.captions, dim=text_config.trainable_dim,
            num_layers=text_config.trainable_num_layers,
            num_heads=text_config.trainable_num_heads, max_length=self.max_length)
        ids, mask = encoder.tokenize(self.captions)
        length = int(mask.sum(1).max())  # trim to the longest caption
        self.emb, self.mask = ids[:, :length], mask[:, :length]
        return encoder

    def rows(self, captions: list[str]) -> torch.Tensor:
        return torch.tensor([self._row[c] for c in captions], dtype=torch.long)  # (N,)

    @property
    def empty_row(self) -> int:
        return self._row[""]

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows(captions)
        return self.emb[rows], self.mask[rows]  # (n, L) ids, (n, L)


class TextConditionedUNet(nn.Module):
    """U-Net and trainable text encoder as one module (one optimizer, EMA and DDP wrapper):
    forward(x_t, t, ids, mask) = unet(x_t, t, *text_encoder.encode_ids(ids, mask))."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        context, mask = self.text_encoder.encode_ids(ids, mask)  # (B, L, D), (B, L)
        return self.unet(x, t, context, mask)                     # (B, C, h, w)


def _load_text_encoder(config: TrainConfig) -> Callable[[list[str]], Any]:
    from pictor.text.encoders import load_text_encoder

    encoder = load_text_encoder(config.text.spec, config.text.max_length)
    return encoder.encode


def train(config: TrainConfig, *, resume: str | None = None,
          dist_info: DistInfo | None = None) -> TrainResult:
    """Train the text-conditional U-Net described by `config` (`pictor train`)."""
    return run_training(config, lambda dist: DiffusionTask(config, dist), resume=resume,
                        dist_info=dist_info)

