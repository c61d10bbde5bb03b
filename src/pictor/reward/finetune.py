"""Reward fine-tuning (`pictor finetune`): the model samples, the scorer judges, the U-Net learns.

Seed 000 asks for reinforcement learning to steer generation finely. In the shapes world the
reward is exact: the project's scorer (pictor.evaluation.scorer) says whether an image shows
what its prompt asks. One round of the loop (Zheng et al. 2025, DiffusionNFT, Alg. 1):

    1. the old policy f_old <- the EMA weights (held fixed for the round; the EMA of the
       training loop is the soft update of the old policy that DiffusionNFT uses)
    2. draw prompts_per_round prompts of the training vocabulary (canonical grammar and the
       caption language's *training* phrasings; seeds in a range no suite uses), and sample
       images_per_prompt images of each with f_old at the shipped sampling settings, the model
       alone (no layout guidance): latents z0 (N, C, h, w)
    3. score every image against its canonical prompt: reward R in {0, 1}; within each prompt's
       group the advantage A = (R - mean) / std becomes the optimality probability
       r = 1/2 + clip(A / advantage_clip, -1, 1) / 2 in [0, 1]
    4. steps_per_round optimizer steps on the forward-noised samples with nft_loss (positives
       pulled in, negatives pushed away, relative to f_old), plus optionally
       - reference_weight x || f - f_ref ||^2 against the frozen starting model (a KL penalty),
       - pretrain_weight x the plain denoising loss on fresh ground-truth renders of the
         round's prompts (InstructGPT's pretraining mix), which also keeps the unconditional
         prediction that guidance needs.

Everything else is `pictor train`'s loop (training/loop.py): AdamW, EMA, gradient clipping, the
NaN stop, checkpoints (safetensors) and exact resume: a round's samples are a deterministic
function of the EMA weights at its start and the round number, and checkpoints fall between
rounds (config validation), so a resumed run samples the same images.

Validation (every training.validation_every_steps) scores the EMA weights on the validation
suites with the features network's Frechet distance and per-prompt diversity. The exported
model (final/) is the validated checkpoint with the best mean validation score among those whose
FD and diversity stay within the stated bounds of the starting model's (reward hacking shows
there first); a rejected checkpoint is never exported.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pictor.config import FinetuneConfig, TrainConfig, dump_yaml, save_config
from pictor.data.captions import training_caption
from pictor.data.shapes import (
    parse_mix,
    parse_prompt,
    render_scene_array,
    sample_training_example,
    scene_for_prompt,
)
from pictor.data.synth import example_rng
from pictor.diffusion.forward import q_sample
from pictor.diffusion.losses import diffusion_loss, nft_loss, sample_timesteps
from pictor.diffusion.parameterization import training_target
from pictor.evaluation.scorer import score_image
from pictor.training.distributed import DistInfo
from pictor.training.loop import TrainResult, run_training

__all__ = ["RewardFn", "RewardTask", "finetune", "optimality_probability", "shapes_reward"]

# Seeds of the reward loop, apart from everything else: prompts come from the `train` namespace
# at example seeds from PROMPT_SEED_OFFSET on (synth runs use < 2**63, the evaluation floor
# 2**63 + < 2**30), image noise from NOISE_SEED_OFFSET on (suites use base_seed + 1000 i + j,
# < 2**31).
PROMPT_SEED_OFFSET = 2**63 + 2**40
NOISE_SEED_OFFSET = 2**40
PRETRAIN_SEED_OFFSET = 2**63 + 2**41
VALIDATION_FILE = "validation.jsonl"
BASELINE_FILE = "baseline.json"


# reward_fn(images of one prompt, its canonical prompt) -> one reward in [0, 1] per image
RewardFn = Callable[[list[Image.Image], str], Sequence[float]]


def shapes_reward(images: list[Image.Image], canonical: str) -> list[float]:
    """The shapes-world reward: 1 where the scorer passes the image for its prompt, else 0."""
    return [float(score_image(image, canonical).passed) for image in images]


def optimality_probability(rewards: torch.Tensor, group_size: int,
                           advantage_clip: float = 2.0) -> torch.Tensor:
    """DiffusionNFT's optimality probability r in [0, 1] from rewards compared within each
    prompt's group: the group-normalised advantage A = (R - mean) / std (GRPO, Shao et al. 2024,
    as Flow-GRPO and DiffusionNFT use it), r = 1/2 + clip(A / advantage_clip, -1, 1) / 2.
    rewards (N,), N = groups x group_size, groups contiguous -> (N,). A group whose samples all
    score the same gets r = 1/2: no preference, only the pull towards the old policy that
    nft_loss keeps there."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (groups x {group_size},), got {tuple(rewards.shape)}")
    if not advantage_clip > 0:
        raise ValueError(f"advantage_clip must be > 0, got {advantage_clip}")
    g = rewards.double().reshape(-1, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, unbiased=False, keepdim=True)
    advantage = torch.where(std > 1e-12, centred / std.clamp_min(1e-12), 0.0)
    return (0.5 + 0.5 * (advantage / advantage_clip).clamp(-1.0, 1.0)).flatten().float()


@dataclass
class Round:
    """One round's samples (N = prompts x images per prompt, grouped by prompt)."""

    index: int
    z0: torch.Tensor           # (N, C, h, w) sampled latents
    context: torch.Tensor      # (N, L, D) frozen-encoder tokens of each sample's prompt
    mask: torch.Tensor         # (N, L) bool
    rewards: torch.Tensor      # (N,) scorer verdicts in {0, 1}
    optimality: torch.Tensor   # (N,) r in [0, 1]
    prompts: list[str]         # (P,) as the model read them
    canonical: list[str]       # (P,) what the scorer judged
    categories: list[str]      # (P,)
    seconds: float             # sampling and scoring time


def load_base_model(model_dir: str | Path) -> tuple[Path, TrainConfig, Path | None]:
    """(model folder, its TrainConfig, autoencoder path): the starting model of a fine-tune."""
    from pictor.pipeline import resolve_model_files

    return resolve_model_files(model_dir)


class RewardTask:
    """The training-loop task of reward fine-tuning (see the module docstring)."""

    def __init__(self, config: FinetuneConfig, dist: DistInfo,
                 reward_fn: RewardFn | None = None) -> None:
        from pictor.diffusion.schedules import NoiseSchedule
        from pictor.networks.io import load_module
        from pictor.networks.unet import UNet, UNetConfig
        from pictor.pipeline import UNET_FILE, Pipeline, build_model_codec, model_digest

        if dist.world_size > 1:
            raise ValueError("pictor finetune runs in one process (its sampling is not sharded "
                             "yet); start it without torchrun")
        rc = config.reward
        if not rc.init_from:
            raise ValueError("pictor finetune needs a starting model: --init MODEL_DIR (or "
                             "reward.init_from in the config)")
        self.config = config
        self.reward_fn = reward_fn or shapes_reward
        self.device = dist.device
        self.model_dir, self.base_config, self.ae_path = load_base_model(rc.init_from)
        self.mix = parse_mix(rc.category_mix)
        unet = load_module(UNet, UNetConfig, self.model_dir / UNET_FILE, map_location="cpu")
        self.model = unet.float().train()
        self.old = copy.deepcopy(self.model).eval().requires_grad_(False).to(self.device)
        self.reference = (copy.deepcopy(self.model).eval().requires_grad_(False).to(self.device)
                          if rc.reference_weight > 0 else None)
        self.num_examples = rc.prompts_per_round * rc.images_per_prompt
        self.schedule = NoiseSchedule.from_config(self.base_config.diffusion.schedule)
        self.alphas_cumprod = self.schedule.alphas_cumprod.to(self.device)
        self.prediction_type = self.base_config.diffusion.prediction_type
        # The sampling pipeline runs the old policy in the compute dtype (bfloat16 where the
        # CPU has it), eagerly: its weights change every round, and a trace would hold them.
        codec = build_model_codec(self.base_config, self.ae_path, self.device)
        self.pipe = Pipeline(self.model_dir, self.base_config, copy.deepcopy(self.model).eval()
                             .requires_grad_(False).to(self.device), codec,
                             model_digest(self.model_dir), self.device)
        self.pipe.trace_after_calls = None
        self.pipe.set_compute_dtype("auto")
        self.round: Round | None = None
        self.loss_terms: dict[str, float] = {}
        self._features: Any = None
        self._log = print

    # -- rounds -----------------------------------------------------------------------------

    def prepare_step(self, step: int, ema_module: nn.Module) -> None:
        """Called by the loop before optimizer step `step` (0-based): a new round starts every
        steps_per_round steps, sampled with the EMA weights."""
        if step % self.config.reward.steps_per_round:
            return
        self.old.load_state_dict(ema_module.state_dict())
        self.round = self.collect(step // self.config.reward.steps_per_round)
        rd = self.round
        self.loss_terms = {"reward": float(rd.rewards.mean()), "round_seconds": rd.seconds}
        for c in sorted(set(rd.categories)):
            k = self.config.reward.images_per_prompt
            hits = [float(rd.rewards[i * k:(i + 1) * k].mean())
                    for i, cat in enumerate(rd.categories) if cat == c]
            self.loss_terms[f"reward_{c}"] = float(np.mean(hits))

    def draw_prompts(self, round_index: int) -> list[tuple[str, str, str]]:
        """(category, prompt as given to the model, canonical prompt) of a round's prompts."""
        rc = self.config.reward
        out = []
        for i in range(rc.prompts_per_round):
            rng = example_rng("train", PROMPT_SEED_OFFSET + round_index * rc.prompts_per_round + i)
            category, canonical, _ = sample_training_example(rng, self.mix)
            caption = training_caption(parse_prompt(canonical), rng, rc.canonical_share)
            out.append((category, caption.text, canonical))
        return out

    @torch.no_grad()
    def collect(self, round_index: int) -> Round:
        """Sample, decode and score one round with the old policy (module docstring, 1-3)."""
        rc = self.config.reward
        start = time.perf_counter()
        self.pipe.unet.load_state_dict(self.old.state_dict())
        self.pipe.set_compute_dtype(self.pipe.compute_dtype)  # drops caches of the old weights
        k = rc.images_per_prompt
        z0, contexts, masks, rewards = [], [], [], []
        drawn = self.draw_prompts(round_index)
        for i, (_, prompt, canonical) in enumerate(drawn):
            first = NOISE_SEED_OFFSET + (round_index * rc.prompts_per_round + i) * k
            z = self.pipe.sample_latents(prompt, range(first, first + k), num_steps=rc.num_steps,
                                         sampler=rc.sampler, guidance_scale=rc.guidance_scale,
                                         layout=False)                     # (k, C, h, w)
            images = self.pipe.decode(z)
            rewards.extend(float(v) for v in self.reward_fn(images, canonical))
            emb, mask = self.pipe.encode_prompt(prompt)                    # (1, L, D), (1, L)
            z0.append(z.float())
            contexts.append(emb.expand(k, *emb.shape[1:]))
            masks.append(mask.expand(k, *mask.shape[1:]))
        r = torch.tensor(rewards)
        return Round(round_index, torch.cat(z0).to(self.device),
                     torch.cat(contexts).float().to(self.device), torch.cat(masks).to(self.device),
                     r, optimality_probability(r, k, rc.advantage_clip).to(self.device), [d[1] for d in drawn],
                     [d[2] for d in drawn], [d[0] for d in drawn], time.perf_counter() - start)

    # -- the loss ---------------------------------------------------------------------------

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rc = self.config.reward
        num_t = self.schedule.num_timesteps

        def timesteps(n: int) -> torch.Tensor:
            t = sample_timesteps(n, num_t, generator=generator)
            if rc.high_noise_fraction > 0:
                high = torch.rand(n, generator=generator) < rc.high_noise_fraction
                t = torch.where(high, torch.randint(rc.high_noise_min_t, num_t, (n,),
                                                    generator=generator), t)
            return t

        shape = self.pipe.latent_shape
        draws = {"t": timesteps(batch_size),
                 "noise": torch.randn((batch_size, *shape), generator=generator)}
        if rc.pretrain_weight > 0:
            # One pretraining example rides on each of the first pretrain_batch_size rows, so
            # the loop's per-row slicing keeps working; rows beyond carry unused draws.
            draws["pretrain_t"] = timesteps(batch_size)
            draws["pretrain_noise"] = torch.randn((batch_size, *shape), generator=generator)
            draws["pretrain_drop"] = (torch.rand(batch_size, generator=generator)
                                      < rc.pretrain_caption_dropout_prob)
            draws["pretrain_seed"] = torch.randint(0, 2**31, (batch_size,), generator=generator)
        return draws

    def _predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                 context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(x_t, t.float(), context, mask).float()

    def loss(self, model: nn.Module, indices: torch.Tensor,
             draws: dict[str, torch.Tensor]) -> torch.Tensor:
        rc = self.config.reward
        rd = self.round
        if rd is None:
            raise RuntimeError("RewardTask.loss before the first round (prepare_step)")
        dev = self.device
        idx = indices.to(dev)
        z0 = rd.z0.index_select(0, idx)                                  # (b, C, h, w)
        context = rd.context.index_select(0, idx)                         # (b, L, D)
        mask = rd.mask.index_select(0, idx)                               # (b, L)
        t = draws["t"].to(dev)
        noise = draws["noise"].to(dev)
        x_t = q_sample(z0, t, noise, self.alphas_cumprod)
        ab = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        target = training_target(self.prediction_type, z0, noise, ab).float()
        pred = self._predict(model, x_t, t, context, mask)
        terms: dict[str, torch.Tensor] = {}
        if rc.method == "nft":
            with torch.no_grad():
                pred_old = self._predict(self.old, x_t, t, context, mask)
            total = nft_loss(pred, pred_old, target, rd.optimality.index_select(0, idx),
                             rc.nft_beta).mean()
            terms["nft_loss"] = total
        else:  # "filtered": plain regression on the passing samples only
            keep = rd.rewards.to(dev).index_select(0, idx)
            per = (pred - target).pow(2).flatten(1).mean(dim=1)
            total = (per * keep).sum() / keep.sum().clamp_min(1.0)
            terms["filtered_loss"] = total
        if self.reference is not None:
            with torch.no_grad():
                pred_ref = self._predict(self.reference, x_t, t, context, mask)
            ref = (pred - pred_ref).pow(2).mean()
            total = total + rc.reference_weight * ref
            terms["reference_loss"] = ref
        if rc.pretrain_weight > 0:
            pre = self._pretrain_loss(model, draws)
            total = total + rc.pretrain_weight * pre
            terms["pretrain_loss"] = pre
        self.loss_terms.update({k: float(v.detach()) for k, v in terms.items()})
        return total

    def _pretrain_loss(self, model: nn.Module, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Denoising loss on fresh renders of this round's canonical prompts (module docstring)."""
        rc, rd = self.config.reward, self.round
        n = min(rc.pretrain_batch_size, len(draws["pretrain_t"]))
        seeds = draws["pretrain_seed"][:n].tolist()
        images, rows = [], []
        for seed in seeds:
            p = seed % len(rd.canonical)
            scene = scene_for_prompt(rd.canonical[p], example_rng(
                "train", PRETRAIN_SEED_OFFSET + rd.index * 2**20 + seed % 2**20))
            images.append(render_scene_array(scene, validate=False))
            rows.append(p)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x0 = self.pipe.codec.encode(x.to(self.device)).float()             # (n, C, h, w)
        drop = draws["pretrain_drop"][:n]
        prompts = ["" if d else rd.prompts[p] for d, p in zip(drop.tolist(), rows, strict=True)]
        encoded = [self.pipe.encode_prompt(p) for p in prompts]
        context = torch.cat([e for e, _ in encoded]).float().to(self.device)
        mask = torch.cat([m for _, m in encoded]).to(self.device)
        t = draws["pretrain_t"][:n].to(self.device)
        noise = draws["pretrain_noise"][:n].to(self.device)
        x_t = q_sample(x0, t, noise, self.alphas_cumprod)
        pred = self._predict(model, x_t, t, context, mask)
        return diffusion_loss(pred, x0, noise, t, self.alphas_cumprod, self.prediction_type)

    # -- validation, selection, export -------------------------------------------------------

    def _score(self, weights: nn.Module) -> dict[str, float]:
        """Validation scalars of `weights`: per suite, the overall and per-category scores
        (model alone), FD against held-out renders and the per-prompt diversity ratio."""
        from pictor.evaluation.evaluate import SamplingSettings, evaluate
        from pictor.evaluation.features import load_feature_extractor

        rc = self.config.reward
        if self._features is None:
            self._features = load_feature_extractor("shapes")
        self.pipe.unet.load_state_dict(weights.state_dict())
        self.pipe.set_compute_dtype(self.pipe.compute_dtype)
        out: dict[str, float] = {}
        for suite in rc.validation_suites:
            ev = evaluate([self.pipe], suite=suite, images_per_prompt=rc.validation_images_per_prompt,
                          settings=SamplingSettings(num_steps=rc.num_steps, sampler=rc.sampler,
                                                    guidance_scale=rc.guidance_scale,
                                                    layout=False),
                          features=self._features, progress=False)
            run = ev.models[0].run
            for k, v in run.report.scores.items():
                out[f"val/{suite}/{k}"] = float(v)
            if run.distribution is not None:
                out[f"val/{suite}/fd"] = float(run.distribution.frechet_distance)
            if run.diversity is not None:
                out[f"val/{suite}/diversity_ratio"] = float(run.diversity.ratio)
        return out

    def baseline(self, run_dir: Path) -> dict[str, float]:
        """The starting model's validation scalars (computed once per run folder)."""
        path = run_dir / BASELINE_FILE
        if path.is_file():
            return json.loads(path.read_text())
        scores = self._score(self.reference if self.reference is not None
                             else _frozen_copy_of_init(self))
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")
        return scores

    def validate(self, ema_module: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        from pictor.networks.io import save_module

        base = self.baseline(run_dir)
        scores = self._score(ema_module)
        verdict = self.within_bounds(scores, base)
        weights = run_dir / "validated" / f"step_{step:09d}.safetensors"
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_module(ema_module, ema_module.config, weights)
        with open(run_dir / VALIDATION_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "scores": scores, "accepted": verdict[0],
                                "why": verdict[1], "weights": str(weights)}) + "\n")
        self._log(f"step {step}: validation {self.mean_score(scores):.3f} "
                  f"({'accepted' if verdict[0] else 'rejected: ' + verdict[1]})")
        return {**scores, "val/accepted": float(verdict[0])}

    def mean_score(self, scores: dict[str, float]) -> float:
        vals = [scores[f"val/{s}/overall"] for s in self.config.reward.validation_suites
                if f"val/{s}/overall" in scores]
        return float(np.mean(vals)) if vals else float("nan")

    def within_bounds(self, scores: dict[str, float], base: dict[str, float]
                      ) -> tuple[bool, str]:
        """(accepted, why not): FD <= max_fd_ratio x the start's, diversity ratio >=
        min_diversity_ratio x the start's, on every validation suite."""
        rc = self.config.reward
        for suite in rc.validation_suites:
            fd, fd0 = scores.get(f"val/{suite}/fd"), base.get(f"val/{suite}/fd")
            if fd is not None and fd0 is not None and fd > rc.max_fd_ratio * fd0:
                return False, f"{suite}: FD {fd:.3f} > {rc.max_fd_ratio} x {fd0:.3f}"
            d, d0 = (scores.get(f"val/{suite}/diversity_ratio"),
                     base.get(f"val/{suite}/diversity_ratio"))
            if d is not None and d0 is not None and d < rc.min_diversity_ratio * d0:
                return False, (f"{suite}: diversity {d:.3f} < {rc.min_diversity_ratio} x "
                               f"{d0:.3f}")
        return True, ""

    def finish(self, ema_module: nn.Module, run_dir: Path) -> None:
        """final/: a model folder of the best accepted validated checkpoint (module docstring),
        with the starting model's config and autoencoder; selection.json says why."""
        from pictor.networks.io import save_module
        from pictor.pipeline import AUTOENCODER_FILE, UNET_FILE

        final = run_dir / "final"
        final.mkdir(parents=True, exist_ok=True)
        records = read_validation(run_dir)
        accepted = [r for r in records if r["accepted"]]
        chosen = max(accepted, key=lambda r: (self.mean_score(r["scores"]), r["step"]),
                     default=None)
        if chosen is not None:
            shutil.copyfile(chosen["weights"], final / UNET_FILE)
            why = (f"step {chosen['step']}: best mean validation score "
                   f"({self.mean_score(chosen['scores']):.3f}) of {len(accepted)} accepted of "
                   f"{len(records)} validated checkpoints")
        elif records:
            save_module(_frozen_copy_of_init(self), self.model.config, final / UNET_FILE)
            why = (f"every one of {len(records)} validated checkpoints was rejected (FD or "
                   f"diversity beyond the bounds); final/ holds the starting model")
        else:
            save_module(ema_module, ema_module.config, final / UNET_FILE)
            why = "no validation ran (training.validation_every_steps = 0): the last EMA weights"
        save_config(self.base_config, final / "config.yaml")
        if self.ae_path is not None:
            shutil.copyfile(self.ae_path, final / AUTOENCODER_FILE)
        (final / "finetune.yaml").write_text(dump_yaml(self.config))
        (final / "selection.json").write_text(json.dumps(
            {"chosen_step": None if chosen is None else chosen["step"], "why": why,
             "init_from": str(self.model_dir)}, indent=2) + "\n")
        self._log(f"final/: {why}")


def _frozen_copy_of_init(task: RewardTask) -> nn.Module:
    from pictor.networks.io import load_module
    from pictor.networks.unet import UNet, UNetConfig
    from pictor.pipeline import UNET_FILE

    return load_module(UNet, UNetConfig, task.model_dir / UNET_FILE).float().eval()


def read_validation(run_dir: str | Path) -> list[dict[str, Any]]:
    """The validation records of a fine-tuning run, oldest first (one per validated step; a
    resumed run's repeated steps keep the last record)."""
    path = Path(run_dir) / VALIDATION_FILE
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def finetune(config: FinetuneConfig, *, resume: str | None = None,
             reward_fn: RewardFn | None = None) -> TrainResult:
    """Run reward fine-tuning as `config` says (the module docstring); returns the loop's result.
    reward_fn replaces the shapes scorer (e.g. a reward for another data world)."""
    return run_training(config, lambda dist: RewardTask(config, dist, reward_fn), resume=resume)

