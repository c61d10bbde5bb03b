"""Micro-batching: several generation requests in one sampler call, each image exactly as a solo
`Pipeline.generate` call of its request makes it.

What makes a solo image (pictor.pipeline's reproducibility contract): image i of a request uses
its own CPU generator seeded with seed + i for x_T (and for every noise draw of a stochastic
sampler), its prompt and negative prompt trimmed to their longest real token run L, and the
network evaluated on the request's own rows, `cat([cond rows, uncond rows])`, 2 n of them.

Batching keeps all of that by construction:
- x_T of a batch is the stack of every request's per-image noise (`Pipeline.initial_noise` of
  the concatenated seeds draws each row from its own generator, so the rows are the solo rows);
- requests share a call only when their `batch_key` agrees: same model, canonical sampler,
  num_steps, guidance scale, guided or not, and the same trimmed text length L (so the cond and
  uncond tensors have the solo shapes and concatenate along the batch);
- the sampler arithmetic is elementwise per row, so it is the same in a batch;
- stochastic samplers (DDPM) draw per-step noise from a generator: those run image by image, as
  the pipeline does;
- the network: CPU GEMM kernels (MKL, oneDNN) pick their blocking and code path by the number
  of rows M, so a row's output changes in the last bits with the rows around it (measured:
  torch.nn.Linear on rows [:1] vs [:2] differs, and so do the U-Net's GEMMs at M >= 5 images
  even with small-M Linears made row-wise). After 20 guided steps this leaves a few channel
  values one level off (shapes-v1: 8 of 98,304 over 8 images; Pipeline.generate's own batching
  of num_images shows differences of the same kind, 8 of 73,728 values for n=6 vs n=1). With `exact=True` (the default)
  the batched denoiser therefore evaluates the network on each request's own rows, with exactly
  the solo shapes and values, and scatters the results back: images are bit-identical to solo
  calls (tested; shapes-v1: 0 of 98,304), and `pictor reproduce` reproduces every served
  image. `exact=False` runs one network call over all rows: faster (the serve benchmark
  measures both), at the price of those one-level differences.

The batch shares everything else: the sampler loop, the timestep grid, the guidance
combination, text encodings, decoding and one worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pictor.diffusion.denoiser import Denoiser
from pictor.guidance import CFG
from pictor.pipeline import (
    DEFAULT_GUIDANCE_INTERVAL,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_LAYOUT,
    DEFAULT_NUM_STEPS,
    DEFAULT_SAMPLER,
    STOCHASTIC_SAMPLERS,
    GeneratedImage,
    Pipeline,
    canonical_sampler_name,
    guidance_interval_value,
)
from pictor.provenance import ProvenanceRecord
from pictor.samplers import get_sampler

# on_step(progress, x0_preds): progress[r] in [0, 1] of request r after this step; x0_preds[r]
# the latent x0 estimates (n_r, C, h, w) of its images at this step, or None when this step did
# not touch it (stochastic samplers run image by image).
StepCallback = Callable[[list[float], list[torch.Tensor | None]], None]


@dataclass(frozen=True)
class GenerationRequest:
    """One request: num_images images of `prompt`, image i from seed + i."""

    prompt: str
    negative_prompt: str = ""
    num_images: int = 1
    seed: int = 0
    num_steps: int = DEFAULT_NUM_STEPS
    sampler: str = DEFAULT_SAMPLER  # any name get_sampler accepts; records use the canonical one
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    layout: bool = DEFAULT_LAYOUT  # layout guidance: relations and counts (pictor.guidance)

    @property
    def seeds(self) -> list[int]:
        return [int(self.seed) + i for i in range(int(self.num_images))]

    @property
    def guided(self) -> bool:
        # the pipeline samples "" without a negative prompt unguided (the unconditional model)
        return not (self.prompt == "" and self.negative_prompt == "")


def check_request(pipe: Pipeline, request: GenerationRequest) -> None:
    """ValueError with the reason when the pipeline would refuse the request."""
    pipe.check_args(request.num_images, request.seed, request.num_steps,
                     request.guidance_scale)
    canonical_sampler_name(request.sampler)
    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(request, name), str):
            raise ValueError(f"{name} must be a string")


def conditioning(pipe: Pipeline, request: GenerationRequest) -> tuple[dict, dict]:
    """The solo cond and uncond dicts of the request (batch 1, trimmed as the pipeline does)."""
    return pipe.conditions(request.prompt, request.negative_prompt, layout=request.layout)


def batch_key(pipe: Pipeline, request: GenerationRequest) -> tuple[Any, ...]:
    """Requests with equal keys can share one sampler call (see the module docstring)."""
    cond, _ = conditioning(pipe, request)
    return (pipe.model_sha256, canonical_sampler_name(request.sampler), int(request.num_steps),
            float(request.guidance_scale), request.guided, int(cond["context"].shape[1]),
            "layout" in cond)  # a layout-guided request's conds carry one more tensor


class BatchCancelled(Exception):
    """Raised from on_step to abandon a batch (every request in it was cancelled)."""


def _row_groups(sizes: Sequence[int], num_rows: int) -> list[torch.Tensor]:
    """Per request, the indices of its rows in a network input of num_rows rows: the batch
    (B = sum(sizes) rows) or the CFG input [cond rows; uncond rows] (2B rows)."""
    total = sum(sizes)
    if num_rows not in (total, 2 * total):
        raise ValueError(f"network input has {num_rows} rows; expected {total} or {2 * total}")
    groups, offset = [], 0
    for n in sizes:
        rows = torch.arange(offset, offset + n)
        groups.append(rows if num_rows == total else torch.cat([rows, rows + total]))
        offset += n
    return groups


def _exact_denoiser(pipe: Pipeline, sizes: Sequence[int],
                    is_active: Callable[[int], bool]) -> Denoiser:
    """The pipeline's denoiser, but the network runs once per request on that request's rows
    (the solo shapes); rows of cancelled requests are skipped (zeros: their results are
    discarded)."""
    run_unet = pipe.run_unet

    def model(x, t, c):  # x (M, C, h, w), t (M,), c: {"context": (M, L, D), "mask": (M, L)}
        out = torch.zeros_like(x)
        layout = pipe.step_layout(t, c)
        for r, rows in enumerate(_row_groups(sizes, x.shape[0])):
            if is_active(r):
                out[rows] = run_unet(x[rows], t[rows], c["context"][rows], c["mask"][rows],
                                     None if layout is None else layout[rows])
        return out

    return Denoiser(model=model, schedule=pipe.schedule, prediction_type=pipe.prediction_type)


def _concat(dicts: Sequence[dict], sizes: Sequence[int]) -> dict:
    """Batch-1 cond dicts, each repeated to its request's size, concatenated on dim 0."""
    return {k: torch.cat([d[k].expand(n, *d[k].shape[1:]) for d, n in zip(dicts, sizes,
                                                                          strict=True)])
            for k in dicts[0]}


def sample_batch(pipe: Pipeline, requests: Sequence[GenerationRequest], *, exact: bool = True,
                 on_step: StepCallback | None = None,
                 is_active: Callable[[int], bool] | None = None) -> list[torch.Tensor]:
    """z_0 (n_r, C, h, w) per request, for requests that share one batch_key."""
    if not requests:
        return []
    keys = {batch_key(pipe, r) for r in requests}
    if len(keys) != 1:
        raise ValueError(f"requests of one batch must share a batch_key, got {sorted(keys)}")
    for r in requests:
        check_request(pipe, r)
    active = is_active or (lambda r: True)
    head = requests[0]
    name = canonical_sampler_name(head.sampler)
    sample = get_sampler(name)
    num_steps = int(head.num_steps)
    sizes = [int(r.num_images) for r in requests]
    conds = [conditioning(pipe, r) for r in requests]

    if name in STOCHASTIC_SAMPLERS:
        return _sample_image_by_image(pipe, requests, conds, sample, on_step, active)

    cond = _concat([c for c, _ in conds], sizes)  # (B, L, D), (B, L)
    uncond = _concat([u for _, u in conds], sizes)
    guidance = (CFG(scale=float(head.guidance_scale), uncond=uncond,
                    interval=DEFAULT_GUIDANCE_INTERVAL) if head.guided else None)
    denoiser = _exact_denoiser(pipe, sizes, active) if exact else pipe.denoiser()
    x_T, gens = pipe.initial_noise([s for r in requests for s in r.seeds])  # (B, C, h, w)
    bounds = torch.cumsum(torch.tensor([0, *sizes]), 0).tolist()

    def callback(i, n, t, x_t, x0):
        if on_step is not None:
            on_step([(i + 1) / n] * len(requests),
                    [x0[bounds[r]:bounds[r + 1]] for r in range(len(requests))])

    with torch.inference_mode():
        z = sample(denoiser, x_T, num_steps, cond=cond, guidance=guidance, generator=gens[0],
                   callback=callback)
    return [z[bounds[r]:bounds[r + 1]] for r in range(len(requests))]


def _sample_image_by_image(pipe, requests, conds, sample, on_step, active) -> list[torch.Tensor]:
    """Stochastic samplers: one sampler call per image with its own generator (the pipeline's
    loop, so each image equals its solo one whatever the batch)."""
    out: list[list[torch.Tensor]] = [[] for _ in requests]
    progress = [0.0] * len(requests)
    for r, (request, (cond, uncond)) in enumerate(zip(requests, conds, strict=True)):
        guidance = (CFG(scale=float(request.guidance_scale), uncond=uncond,
                        interval=DEFAULT_GUIDANCE_INTERVAL) if request.guided
                    else None)
        x_T, gens = pipe.initial_noise(request.seeds)
        for i in range(request.num_images):
            if not active(r):
                break

            def callback(step, n, t, x_t, x0, r=r, i=i):
                if on_step is not None:
                    progress[r] = (i + (step + 1) / n) / requests[r].num_images
                    on_step(list(progress), [x0 if k == r else None
                                             for k in range(len(requests))])

            with torch.inference_mode():
                out[r].append(sample(pipe.denoiser(), x_T[i:i + 1], int(request.num_steps),
                                     cond=cond, guidance=guidance, generator=gens[i],
                                     callback=callback))
    return [torch.cat(z) if z else torch.empty(0, *pipe.latent_shape) for z in out]


def provenance_record(pipe: Pipeline, request: GenerationRequest, seed: int, width: int,
                      height: int, extra: dict[str, Any] | None = None) -> ProvenanceRecord:
    """The record `Pipeline.generate` writes for this image (the CLI's record)."""
    return ProvenanceRecord(
        prompt=request.prompt, seed=int(seed), sampler=canonical_sampler_name(request.sampler),
        num_steps=int(request.num_steps), guidance_scale=float(request.guidance_scale),
        model_name=pipe.model_name, model_sha256=pipe.model_sha256,
        negative_prompt=request.negative_prompt, width=width, height=height,
        extra={**pipe.record_extra(guidance_interval_value(DEFAULT_GUIDANCE_INTERVAL),
                                   request.layout),
               **(extra or {})})


def decode_request(pipe: Pipeline, request: GenerationRequest, z: torch.Tensor
                   ) -> list[GeneratedImage]:
    """Decode one request's latents (its own decoder call, as solo) into images + records."""
    images = pipe.decode(z) if z.shape[0] else []
    return [GeneratedImage(image=im, record=provenance_record(pipe, request, s, im.width,
                                                              im.height))
            for s, im in zip(request.seeds, images, strict=False)]


def generate_batch(pipe: Pipeline, requests: Sequence[GenerationRequest], *,
                   exact: bool = True, on_step: StepCallback | None = None,
                   is_active: Callable[[int], bool] | None = None
                   ) -> list[list[GeneratedImage]]:
    """Images and records per request (one sampler call for all; see sample_batch)."""
    latents = sample_batch(pipe, requests, exact=exact, on_step=on_step, is_active=is_active)
    return [decode_request(pipe, r, z) for r, z in zip(requests, latents, strict=True)]
