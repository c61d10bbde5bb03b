"""Generation latency of `pictor generate` against a diffusers pipeline of the same size.

Measured on CPU with torch.set_num_threads (default 2), DPM-Solver++(2M), 20 steps,
classifier-free guidance (cond and uncond batched in one forward pass), one prompt. Ours runs at
its defaults (compute dtype "auto": bfloat16 where the CPU has it; guidance interval sigma >= 1:
the last steps skip the unconditional pass; layout guidance, which the prompt's relation turns
on), guided at every step, and in float32 guided at every step without layout guidance, which is
what the diffusers pipeline does (fp32):
- in process: one image (median of --runs calls, after at least --warm-up untimed calls and
  until our pipeline runs every U-Net input shape as a TorchScript trace, bit-identical to
  eager; text embeddings are cached per prompt, as in a server), the same with the eager U-Net
  (what a one-image process runs), and a batch of --batch-size images;
- cold start: wall time of a whole `pictor generate PROMPT -n 1` process (imports, model and
  text-encoder loading, sampling, PNG writing), median of --cold-runs subprocesses, with a
  prompt no earlier process has seen and the compiled text encoder an earlier run saved
  (pictor.text.compiled); also each with an empty cache (the first run after installing), and
  when an earlier process stored the prompt's embedding (PICTOR_CACHE_DIR);
- diffusers: UNet2DConditionModel (parameters within 10% of ours without the text adapter, which
  runs once per prompt; cross-attention at the same
  levels; benchmarks/train_throughput.diffusers_unet) + AutoencoderKL decoding the same latent
  shape + DPMSolverMultistepScheduler (dpmsolver++, order 2, trailing spacing, zero final
  sigma) with the same number of steps and batch, random weights and a random text context of
  the same length (timing only). Our pixel-space models decode by pixel shuffle, which is free;
  diffusers' VAE decode is timed separately so the U-Net loops can be compared alone.

    .venv/bin/python benchmarks/generate_latency.py --model models/shapes-v10   # ~3 min, 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import environment, markdown_table, median, update_markdown_section, write_json
from train_throughput import diffusers_unet

NAME = "generate_latency"
PROMPT = "a red circle to the left of a blue square"
WIDTH_CHOICES = tuple(range(32, 1025, 32))  # diffusers' GroupNorm(32) needs multiples of 32


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet_params(unet: torch.nn.Module) -> int:
    """Our U-Net's parameters without its text adapter, which runs once per prompt (like the
    text encoder) and whose input the diffusers U-Net is given instead."""
    adapter = getattr(unet, "text_adapter", None)
    return num_params(unet) - (num_params(adapter) if adapter is not None else 0)


def matched_diffusers_unet(pipe, max_gap: float = 0.10) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """diffusers UNet with our widths rounded to multiples of 32 and the lowest-resolution width
    chosen so that the parameter counts match best; ValueError if not within max_gap (10%)."""
    cfg = pipe.unet.config
    c, h, _ = pipe.latent_shape
    ours = unet_params(pipe.unet)
    head_dim = cfg.head_dim
    base = [max(32, round(w / 32) * 32) for w in cfg.channels]
    best: tuple[float, Any, tuple[int, ...]] | None = None
    for last in WIDTH_CHOICES:
        widths = (*base[:-1], last)
        if any(w % head_dim for w in widths):
            continue
        net = diffusers_unet(widths, cfg.attention_levels, c, cfg.context_dim, head_dim, h)
        gap = abs(num_params(net) / ours - 1)
        if best is None or gap < best[0]:
            best = (gap, net, widths)
        if num_params(net) > 1.2 * ours:
            break
    if best is None or best[0] > max_gap:
        raise ValueError(f"no diffusers UNet within {max_gap:.0%} of ours ({ours:,} parameters) with "
                         f"widths {base[:-1]} + one of {WIDTH_CHOICES[0]}..{WIDTH_CHOICES[-1]}")
    return best[1].eval(), best[2]


def diffusers_vae(latent_channels: int, downsampling_factor: int):
    """A small AutoencoderKL whose latent is (latent_channels, H / f, W / f)."""
    from diffusers import AutoencoderKL

    n = downsampling_factor.bit_length()  # f = 2^(n - 1)
    widths = tuple(min(32 * 2**i, 128) for i in range(n))
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=widths,
                         layers_per_block=1, norm_num_groups=32).eval()


class DiffusersSampler:
    """The diffusers text-to-image loop (as StableDiffusionPipeline.__call__, minus the text
    encoder: the context is given) on random weights."""

    def __init__(self, pipe, num_steps: int, guidance_scale: float, max_gap: float = 0.10
                 ) -> None:
        from diffusers import DPMSolverMultistepScheduler

        self.unet, self.widths = matched_diffusers_unet(pipe, max_gap)
        self.vae = diffusers_vae(pipe.latent_shape[0], pipe.codec.downsampling_factor)
        cond, _ = pipe.conditions(PROMPT, "")
        self.context_length = int(cond["context"].shape[1])
        dim = int(cond["context"].shape[2])
        self.context = torch.randn(2, self.context_length, dim)  # (cond, uncond) rows
        sched = pipe.config.diffusion.schedule
        self.scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=sched.num_timesteps,
            beta_schedule="squaredcos_cap_v2" if sched.kind == "cosine" else sched.kind,
            prediction_type={"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[
                pipe.prediction_type],
            algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
            final_sigmas_type="zero")
        self.latent_shape = pipe.latent_shape
        self.num_steps, self.guidance_scale = num_steps, guidance_scale

    @torch.inference_mode()
    def denoise(self, n: int) -> torch.Tensor:
        lat = torch.randn((n, *self.latent_shape), generator=torch.Generator().manual_seed(0))
        ctx = torch.cat([self.context[:1].expand(n, -1, -1), self.context[1:].expand(n, -1, -1)])
        self.scheduler.set_timesteps(self.num_steps)
        for t in self.scheduler.timesteps:
            out = self.unet(torch.cat([lat, lat]), t, encoder_hidden_states=ctx).sample
            cond, uncond = out.chunk(2)
            lat = self.scheduler.step(uncond + self.guidance_scale * (cond - uncond), t,
                                      lat).prev_sample
        return lat

    @torch.inference_mode()
    def decode(self, lat: torch.Tensor) -> list:
        from pictor.pipeline import tensor_to_pil

        return tensor_to_pil(self.vae.decode(lat / self.vae.config.scaling_factor).sample)

    def __call__(self, n: int) -> list:
        return self.decode(self.denoise(n))


def timed(fn, num_runs: int, warm_up: int = 1, pipeline=None) -> list[float]:
    """Wall seconds of num_runs calls of fn after warm_up untimed ones; given our pipeline, the
    untimed calls go on until every U-Net input shape it runs is traced (the steady state of a
    process that keeps generating; pictor.pipeline.TRACE_AFTER_CALLS)."""
    for k in range(1000):
        if k >= warm_up and (pipeline is None or pipeline.trace_after_calls is None
                             or (k > 0 and pipeline.untraced_shapes == 0)):
            break
        fn()
    seconds = []
    for _ in range(num_runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


# Prompts for the cold starts that must each be new to the embedding cache.
NEW_PROMPTS = ("a green star above a yellow triangle", "two purple circles",
               "an orange square below a white star", "a cyan triangle and a red star",
               "four blue squares", "a yellow circle to the right of a green square")
COLD_CACHES = ("empty", "encoder", "prompt")


def cold_start_seconds(model: Path, num_runs: int, threads: int, *, cache: str) -> list[float]:
    """Wall times of whole `pictor generate` processes, by what the disk cache
    (PICTOR_CACHE_DIR) holds when each starts:
    - "empty": nothing (the first run after installing; transformers is imported and the
      compiled copy of the text encoder is saved);
    - "encoder": the compiled text encoder, saved by an earlier run with another prompt; each run
      has a prompt no run has seen (the usual case: transformers is never imported);
    - "prompt": the prompt's embedding, stored by an earlier run (no text encoder at all)."""
    import os

    if cache not in COLD_CACHES:
        raise ValueError(f"cache must be one of {COLD_CACHES}, got {cache!r}")
    if num_runs > len(NEW_PROMPTS):
        raise ValueError(f"at most {len(NEW_PROMPTS)} cold runs")
    seconds = []
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as caches:
        warm_up = cache != "empty"  # the first process only fills the cache
        for k in range(num_runs + warm_up):
            folder = Path(caches) / (str(k) if cache == "empty" else "shared")
            prompt = NEW_PROMPTS[k - 1] if cache == "encoder" and k else PROMPT
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
                   "PICTOR_CACHE_DIR": str(folder)}
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pictor.cli.main", "generate", prompt, "-n", "1",
                            "--model", str(model), "-o", out], check=True, env=env,
                           capture_output=True)
            seconds.append(time.perf_counter() - start)
    return seconds[int(warm_up):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder to time")
    parser.add_argument("--runs", type=int, default=10, help="timed single-image calls")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-runs", type=int, default=3, help="timed batch calls")
    parser.add_argument("--cold-runs", type=int, default=3, help="`pictor generate` processes")
    parser.add_argument("--warm-up", type=int, default=4,
                        help="untimed calls before each in-process measurement (ours and "
                             "diffusers alike; ours goes on until its U-Net runs traced): the "
                             "steady state of a process that keeps generating")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-param-gap", type=float, default=0.10,
                        help="allowed relative parameter-count gap of the diffusers U-Net "
                             "(raise only for smoke checks on tiny models)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; do not write the JSON or BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from pictor.pipeline import load_pipeline

    pipe = load_pipeline(args.model)  # defaults: compute dtype "auto"
    pipe32 = load_pipeline(args.model, compute_dtype="float32")
    ref = DiffusersSampler(pipe, args.steps, args.guidance, args.max_param_gap)
    n, steps = args.batch_size, args.steps

    def ours(k: int, pipeline=pipe, **options):
        return lambda: pipeline.generate(PROMPT, num_images=k, seed=0, num_steps=steps,
                                         guidance_scale=args.guidance, **options)

    eager = load_pipeline(args.model)
    eager.trace_after_calls = None  # what a one-image process runs (pictor.pipeline)
    w = args.warm_up
    env_before = environment()
    runs = {
        "ours_1": timed(ours(1), args.runs, w, pipe),
        "ours_1_eager": timed(ours(1, eager), args.runs, w),
        "ours_1_every_step": timed(ours(1, guidance_interval=None, layout=False), args.runs, w,
                                   pipe),
        "ours_1_float32_every_step": timed(ours(1, pipe32, guidance_interval=None,
                                                layout=False), args.runs, w, pipe32),
        "diffusers_1": timed(lambda: ref(1), args.runs, w),
        "diffusers_unet_loop_1": timed(lambda: ref.denoise(1), args.runs, w),
        f"ours_{n}": timed(ours(n), args.batch_runs, w, pipe),
        f"diffusers_{n}": timed(lambda: ref(n), args.batch_runs, w),
        **{f"cold_start_ours_{c}_cache": cold_start_seconds(args.model, args.cold_runs,
                                                            args.threads, cache=c)
           for c in COLD_CACHES},
    }
    env_after = environment()
    med = {k: median(v) for k, v in runs.items()}
    h, w = pipe.image_size, pipe.image_size
    results = {
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "runs_seconds": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "ours_seconds_per_image_batch": round(med[f"ours_{n}"] / n, 4),
        "diffusers_seconds_per_image_batch": round(med[f"diffusers_{n}"] / n, 4),
        "speedup_single": round(med["diffusers_1"] / med["ours_1"], 2),
        "speedup_single_every_step": round(med["diffusers_1"] / med["ours_1_every_step"], 2),
        "speedup_single_float32_every_step": round(
            med["diffusers_1"] / med["ours_1_float32_every_step"], 2),
        "compute_dtype": pipe.compute_dtype,
        "speedup_batch": round(med[f"diffusers_{n}"] / med[f"ours_{n}"], 2),
        "ours_num_params": unet_params(pipe.unet),
        "ours_text_adapter_num_params": num_params(pipe.unet) - unet_params(pipe.unet),
        "diffusers_unet_num_params": num_params(ref.unet),
        "diffusers_vae_num_params": num_params(ref.vae),
        "diffusers_block_out_channels": list(ref.widths),
    }
    rows = [
        ["ours, 1 image", f"{med['ours_1'] * 1e3:.0f}", f"{med['ours_1'] * 1e3:.0f}",
         f"{results['speedup_single']:.2f}x"],
        ["ours, 1 image, eager U-Net (not traced: a one-image `pictor generate`)",
         f"{med['ours_1_eager'] * 1e3:.0f}", f"{med['ours_1_eager'] * 1e3:.0f}",
         f"{med['diffusers_1'] / med['ours_1_eager']:.2f}x"],
        ["ours, 1 image, guided at every step (no guidance interval), no layout guidance",
         f"{med['ours_1_every_step'] * 1e3:.0f}", f"{med['ours_1_every_step'] * 1e3:.0f}",
         f"{results['speedup_single_every_step']:.2f}x"],
        ["ours, 1 image, float32, guided at every step, no layout guidance (as diffusers runs)",
         f"{med['ours_1_float32_every_step'] * 1e3:.0f}",
         f"{med['ours_1_float32_every_step'] * 1e3:.0f}",
         f"{results['speedup_single_float32_every_step']:.2f}x"],
        ["diffusers, 1 image", f"{med['diffusers_1'] * 1e3:.0f}",
         f"{med['diffusers_1'] * 1e3:.0f}", "-"],
        ["diffusers U-Net loop only, 1 image", f"{med['diffusers_unet_loop_1'] * 1e3:.0f}",
         f"{med['diffusers_unet_loop_1'] * 1e3:.0f}",
         f"{med['diffusers_unet_loop_1'] / med['ours_1']:.2f}x"],
        [f"ours, batch of {n}", f"{med[f'ours_{n}'] * 1e3:.0f}",
         f"{results['ours_seconds_per_image_batch'] * 1e3:.0f}",
         f"{results['speedup_batch']:.2f}x"],
        [f"diffusers, batch of {n}", f"{med[f'diffusers_{n}'] * 1e3:.0f}",
         f"{results['diffusers_seconds_per_image_batch'] * 1e3:.0f}", "-"],
        ["`pictor generate` process, new prompt (cold start; compiled text encoder on disk)",
         f"{med['cold_start_ours_encoder_cache'] * 1e3:.0f}", "-", "-"],
        ["`pictor generate` process, first run on an empty cache (imports transformers, "
         "saves the compiled encoder)", f"{med['cold_start_ours_empty_cache'] * 1e3:.0f}",
         "-", "-"],
        ["`pictor generate` process, prompt seen before (embedding on disk)",
         f"{med['cold_start_ours_prompt_cache'] * 1e3:.0f}", "-", "-"],
    ]
    table = markdown_table(["what", "ms (median)", "ms / image", "diffusers / ours"], rows)
    print(table)
    data = {"settings": vars(args) | {"model": str(args.model), "prompt": PROMPT,
                                      "latent_shape": list(pipe.latent_shape),
                                      "image_size": [h, w], "sampler": "dpm++2m",
                                      "context_length": ref.context_length},
            "environment": env_before,
            "load_average_1min_after": env_after["load_average_1min"],
            "results": results}
    body = (
        f"One {h}x{w} image ({args.steps} DPM-Solver++(2M) steps, CFG {args.guidance} batched "
        f"with the unconditional pass; ours at its defaults runs the U-Net in "
        f"{pipe.compute_dtype}, guides while sigma >= 1 and applies layout guidance to the "
        f"prompt's relation; diffusers runs in float32 at every step without it, so the "
        f"float32 every-step row without layout guidance is the like-for-like one) from "
        f"`{args.model}` "
        f"({results['ours_num_params'] / 1e6:.2f}M U-Net parameters, diffusion on "
        f"{tuple(pipe.latent_shape)}), {args.threads} threads, {env_before['cpu']}, torch "
        f"{env_before['torch']}. In-process medians of {args.runs} calls (batch: "
        f"{args.batch_runs}) after at least {args.warm_up} untimed calls each (ours: until "
        f"every U-Net input shape runs traced, TRACE_AFTER_CALLS in pictor.pipeline, and each "
        f"context's prompt terms are computed once per call); cold start = a whole "
        f"`pictor generate -n 1` process, median of "
        f"{args.cold_runs}. diffusers: UNet2DConditionModel {tuple(ref.widths)} "
        f"({results['diffusers_unet_num_params'] / 1e6:.2f}M) + AutoencoderKL "
        f"({results['diffusers_vae_num_params'] / 1e6:.2f}M) + DPMSolverMultistepScheduler, "
        f"same latent shape, steps and context length ({ref.context_length} tokens), random "
        f"weights. 1-min load average {env_before['load_average_1min']:.1f} before, "
        f"{env_after['load_average_1min']:.1f} after. Written by "
        f"`benchmarks/generate_latency.py` ({env_before['date_utc']}).\n\n" + table)
    if args.no_write:
        print(body)
        return
    path = write_json(NAME, data)
    update_markdown_section(NAME, body + f"\n\nRaw: `{path.relative_to(path.parents[2])}`.")


if __name__ == "__main__":
    main()
