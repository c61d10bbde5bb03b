"""One evaluation: a prompt suite scored for one or more models, sweeps over sampling settings,
and distribution metrics against real renders of the same prompts.

    evaluation = evaluate([load_pipeline("models/shapes-v11")], images_per_prompt=4,
                          sweeps={"steps": [5, 10, 20, 50]},
                          features=load_feature_extractor("shapes"))
    write_report(evaluation, "reports/shapes-v11")          # pictor.evaluation.report

What runs:
- every model at the base settings (`SamplingSettings`) through `run_suite`: per-category pass
  rates with Wilson intervals, the overall score with an interval of its own
  (`mean_rate_interval`), seconds per image; the images are kept for the report's grids;
- the first model again for each value of each sweep (one setting varied at a time, the others
  at the base values; a setting already run is reused, not run twice);
- with a feature extractor: for every run, FD, KID and precision/recall between the generated
  set and a real set of equal size, the real-vs-real floor beside them, and per-prompt
  diversity (mean pairwise feature distance of a prompt's images; needs >= 2 per prompt).

The real sets (`ReferenceSets`) hold one render per generated image: image j of prompt i is a
ground-truth render (`scene_for_prompt`) of the same prompt's canonical form (the scene a
paraphrase describes too), so both sets follow the suite's prompt distribution. The reference set is drawn in the suite's own held-out seed namespace
(example seeds from REFERENCE_SEED_OFFSET on, disjoint from the suite's prompt draws); the floor
set in the `train` namespace from example seed 2**63 on, beyond every seed a `pictor data synth`
run uses (run seeds < 2**31), so it is "images like the training data", not training images.
Both are resized to the model's resolution the way the training loader resizes (bicubic), so
real and generated images reach the feature network along the same path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from pictor.data.shapes import CANVAS_SIZE_PX, CATEGORIES, render_scene, scene_for_prompt
from pictor.data.suites import DEFAULT_SUITE, SUITES, SuiteItem, get_suite
from pictor.data.synth import example_rng
from pictor.evaluation.benchmark import SuiteReport, run_suite
from pictor.evaluation.features import FeatureExtractor
from pictor.evaluation.metrics import (
    DistributionMetrics,
    distribution_metrics,
    mean_pairwise_distance,
)
from pictor.pipeline import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_LAYOUT,
    DEFAULT_NUM_STEPS,
    DEFAULT_SAMPLER,
    canonical_sampler_name,
)

REFERENCE_SEED_OFFSET = 1_000_000  # held-out real renders: suite namespace, seeds from here on
FLOOR_NAMESPACE = "train"
FLOOR_SEED_OFFSET = 2**63  # floor renders: beyond every synth run's example seeds
SWEEP_KEYS = ("steps", "guidance", "sampler", "layout")  # what --sweep may vary
_LEAST_DIVERSE_SHOWN = 5
# Mode-collapse check: a prompt counts as collapsed when its generated images are less than this
# share as diverse (mean pairwise feature distance) as real renders of the same prompt.
COLLAPSE_RATIO = 0.25


class Generates(Protocol):
    """What evaluate needs from a model: pictor.pipeline.Pipeline, or any stand-in."""

    def generate(self, prompt: str, **kwargs: Any) -> list[Any]: ...


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling settings of one suite run."""

    num_steps: int = DEFAULT_NUM_STEPS  # sampler steps
    sampler: str = DEFAULT_SAMPLER  # canonical sampler name
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE  # classifier-free guidance scale
    layout: bool = DEFAULT_LAYOUT  # layout guidance for prompts with a relation (pictor.guidance)

    def with_value(self, key: str, value: Any) -> SamplingSettings:
        """These settings with one sweep key (`SWEEP_KEYS`) set to value."""
        name = {"steps": "num_steps", "guidance": "guidance_scale", "sampler": "sampler",
                "layout": "layout"}[key]
        return replace(self, **{name: value})

    def value_of(self, key: str) -> Any:
        return {"steps": self.num_steps, "guidance": self.guidance_scale,
                "sampler": self.sampler, "layout": "on" if self.layout else "off"}[key]

    def to_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "sampler": self.sampler,
                "guidance_scale": self.guidance_scale, "layout": self.layout}

    def label(self) -> str:
        return (f"{self.sampler}, {self.num_steps} steps, guidance {self.guidance_scale:g}"
                + ("" if self.layout else ", no layout guidance"))


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """`steps=5,10,20` -> ("steps", [5, 10, 20]); keys: steps (int >= 1), guidance (float),
    sampler (names, canonicalised). ValueError saying what is wrong."""
    key, sep, values_text = text.partition("=")
    key = key.strip().lower()
    if not sep or key not in SWEEP_KEYS:
        raise ValueError(f"sweep {text!r} must look like KEY=V1,V2,... with KEY one of "
                         f"{', '.join(SWEEP_KEYS)} (e.g. steps=5,10,20,50)")
    items = [v.strip() for v in values_text.split(",") if v.strip()]
    if not items:
        raise ValueError(f"sweep {text!r} lists no values (e.g. {key}=1,2,3)")
    values: list[Any] = []
    for item in items:
        try:
            if key == "steps":
                value: Any = int(item)
                if value < 1:
                    raise ValueError
            elif key == "guidance":
                value = float(item)
                if not math.isfinite(value):
                    raise ValueError
            elif key == "layout":
                if item.lower() not in ("on", "off"):
                    raise ValueError
                value = item.lower() == "on"
            else:
                value = canonical_sampler_name(item)
        except ValueError as err:
            detail = str(err) if key == "sampler" else {
                "steps": "an integer >= 1", "guidance": "a finite number",
                "layout": "on or off"}[key]
            raise ValueError(f"sweep value {item!r} of {key}: {detail}") from None
        if value not in values:
            values.append(value)
    return key, values


def mean_rate_interval(outcomes: dict[str, Sequence[bool]], z: float = 1.959964
                       ) -> tuple[float, float]:
    """95% interval of the plain mean of K pass rates (the overall score): the adjusted Wald
    interval for a linear function of binomial proportions (Price & Bonett 2004, "An improved
    confidence interval for a linear function of binomial proportions", CSDA 45): each rate
    gets 2/K pseudo-passes and 2/K pseudo-failures, p~_c = (x_c + 2/K) / (n_c + 4/K), and
    mean(p~) +- z sqrt(sum p~_c (1 - p~_c) / (n_c + 4/K)) / K, clipped to [0, 1]. Unlike the
    plain Wald interval it keeps a width when every rate is 0 or 1."""
    groups = [list(v) for v in outcomes.values() if len(v)]
    if not groups:
        raise ValueError("mean_rate_interval needs at least one non-empty group of outcomes")
    k = len(groups)
    adjusted = [((sum(g) + 2 / k) / (len(g) + 4 / k), len(g) + 4 / k) for g in groups]
    centre = sum(p for p, _ in adjusted) / k
    half = z * math.sqrt(sum(p * (1 - p) / n for p, n in adjusted)) / k
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------
# Real reference sets
# ---------------------------------------------------------------------------------------------
def reference_images(items: Sequence[SuiteItem], images_per_prompt: int, namespace: str,
                     seed_offset: int, image_size: int) -> list[Image.Image]:
    """One ground-truth render per (prompt i, image j) of the item's canonical prompt, from
    example seed seed_offset + 1000 i + j of `namespace`, resized (bicubic) to image_size."""
    out = []
    for i, item in enumerate(items):
        for j in range(images_per_prompt):
            rng = example_rng(namespace, seed_offset + 1000 * i + j)
            image = render_scene(scene_for_prompt(item.canonical, rng))
            if image_size != CANVAS_SIZE_PX:
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            out.append(image)
    return out


@dataclass
class ReferenceSets:
    """Features of the two real sets for one image size, and the floor between them."""

    image_size: int
    reference: np.ndarray  # (N, D) held-out renders of the suite's prompts
    floor_set: np.ndarray  # (N, D) train-namespace renders of the same prompts
    floor: DistributionMetrics  # reference vs floor_set: the real-vs-real noise floor
    diversity: dict[str, float] | None  # per-prompt mean pairwise distance of the reference


def build_reference_sets(items: Sequence[SuiteItem], images_per_prompt: int, suite: str,
                         image_size: int, features: FeatureExtractor,
                         *, seed: int = 0) -> ReferenceSets:
    namespace = SUITES[suite].namespace
    reference = features.features(reference_images(
        items, images_per_prompt, namespace, REFERENCE_SEED_OFFSET, image_size))
    floor_set = features.features(reference_images(
        items, images_per_prompt, FLOOR_NAMESPACE, FLOOR_SEED_OFFSET, image_size))
    return ReferenceSets(image_size, reference, floor_set,
                         distribution_metrics(reference, floor_set, seed=seed),
                         per_prompt_diversity(items, reference, images_per_prompt))


def per_prompt_diversity(items: Sequence[SuiteItem], features: np.ndarray,
                         images_per_prompt: int) -> dict[str, float] | None:
    """prompt -> mean pairwise feature distance of its images (rows grouped by prompt, as
    run_suite orders them); None with fewer than 2 images per prompt. A prompt that appears
    more than once in the suite pools its images."""
    if images_per_prompt < 2:
        return None
    pooled: dict[str, list[np.ndarray]] = {}
    for i, item in enumerate(items):
        pooled.setdefault(item.prompt, []).append(
            features[i * images_per_prompt:(i + 1) * images_per_prompt])
    return {p: mean_pairwise_distance(np.concatenate(rows)) for p, rows in pooled.items()}


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
@dataclass
class DiversitySummary:
    """Per-prompt diversity of a run against the real reference of the same prompts."""

    mean_generated: float  # mean over prompts of the generated images' mean pairwise distance
    mean_real: float  # the same for the held-out real renders
    per_category: dict[str, tuple[float, float]]  # category -> (generated, real) means
    least_diverse: list[tuple[str, float, float]]  # (prompt, generated, real), lowest ratio first
    collapsed_prompts: int = 0  # prompts below COLLAPSE_RATIO x the real diversity
    num_prompts: int = 0

    @property
    def ratio(self) -> float:
        return self.mean_generated / self.mean_real if self.mean_real > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"mean_generated": self.mean_generated, "mean_real": self.mean_real,
                "ratio": self.ratio,
                "per_category": {c: list(v) for c, v in self.per_category.items()},
                "least_diverse": [list(x) for x in self.least_diverse],
                "mode_collapse": {"collapsed_prompts": self.collapsed_prompts,
                                  "num_prompts": self.num_prompts,
                                  "threshold_ratio": COLLAPSE_RATIO}}


def summarise_diversity(items: Sequence[SuiteItem], generated: dict[str, float],
                        real: dict[str, float]) -> DiversitySummary:
    category_of = {item.prompt: item.category for item in items}
    per_category = {}
    for c in CATEGORIES:
        prompts = [p for p in generated if category_of[p] == c]
        if prompts:
            per_category[c] = (float(np.mean([generated[p] for p in prompts])),
                               float(np.mean([real[p] for p in prompts])))
    ranked = sorted(generated, key=lambda p: generated[p] / max(real[p], 1e-12))
    collapsed = sum(generated[p] < COLLAPSE_RATIO * real[p] for p in generated)
    return DiversitySummary(float(np.mean(list(generated.values()))),
                            float(np.mean(list(real.values()))), per_category,
                            [(p, generated[p], real[p]) for p in ranked[:_LEAST_DIVERSE_SHOWN]],
                            collapsed_prompts=int(collapsed), num_prompts=len(generated))


@dataclass
class RunResult:
    """One suite run: a model at one sampling setting."""

    settings: SamplingSettings
    report: SuiteReport
    overall_interval: tuple[float, float]  # mean_rate_interval of the six categories
    distribution: DistributionMetrics | None = None  # vs the held-out real set
    diversity: DiversitySummary | None = None
    images: list[Image.Image] = field(default_factory=list)  # kept for the base runs only
    # the model's likelihood where it defines one (the VAE: negative ELBO in bits/dim on the
    # held-out real renders of the suite's prompts); None for diffusion and GAN here
    likelihood: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers of the run (without the per-image verdicts)."""
        defaults = {k: self.report.settings[k] for k in ("guidance_interval", "compute_dtype")
                    if k in self.report.settings}
        settings = self.settings.to_dict() | defaults
        if self.report.settings.get("family", "diffusion") != "diffusion":  # a GAN or VAE
            settings = {k: self.report.settings[k] for k in
                        ("family", "num_steps", "sampler", "guidance_scale", "compute_dtype")}
        return {"settings": settings,
                "scores": self.report.scores,
                "intervals_95": {**{k: list(v) for k, v in self.report.intervals.items()},
                                 "overall": list(self.overall_interval)},
                "seconds_per_image": self.report.seconds_per_image,
                "num_images": len(self.report.results),
                "distribution": self.distribution.to_dict() if self.distribution else None,
                "diversity": self.diversity.to_dict() if self.diversity else None,
                "likelihood": self.likelihood}


@dataclass
class ModelEvaluation:
    """A model at the base settings."""

    name: str
    model_dir: str | None
    sha256: str | None
    image_size: int
    run: RunResult
    family: str = "diffusion"  # diffusion, gan or vae (pictor.families)


@dataclass
class Evaluation:
    """Everything a report shows; see the module docstring."""

    suite: str
    suite_version: int
    images_per_prompt: int
    base_seed: int
    settings: SamplingSettings
    models: list[ModelEvaluation]  # the evaluated model first, then the compared ones
    sweeps: dict[str, list[RunResult]]  # key -> one run per value (first model)
    features: dict[str, Any] | None  # name, dim, sha256 of the extractor; None: no metrics
    references: dict[int, ReferenceSets]  # image size -> real sets and floor
    items: list[SuiteItem]
    elapsed_seconds: float = 0.0


def evaluate(pipelines: Sequence[Generates], *, suite: str = DEFAULT_SUITE,
             images_per_prompt: int = 4, settings: SamplingSettings = SamplingSettings(),
             sweeps: dict[str, Sequence[Any]] | None = None,
             features: FeatureExtractor | None = None, base_seed: int = 0,
             progress: bool = True) -> Evaluation:
    """Run the evaluation described in the module docstring. `pipelines[0]` is the evaluated
    model (swept); the others are compared with it at the base settings."""
    from tqdm import tqdm

    if not pipelines:
        raise ValueError("evaluate needs at least one model")
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    sweeps = {k: list(v) for k, v in (sweeps or {}).items()}
    unknown = sorted(set(sweeps) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"unknown sweep key(s) {unknown}; choose from {', '.join(SWEEP_KEYS)}")
    first_family = getattr(pipelines[0], "family", "diffusion")
    if sweeps and first_family != "diffusion":
        raise ValueError(f"--sweep varies diffusion sampling settings; the first model is a "
                         f"{first_family} model (put a diffusion model first to sweep it)")
    if "sampler" in sweeps:
        sweeps["sampler"] = [canonical_sampler_name(v) for v in sweeps["sampler"]]
    settings = replace(settings, sampler=canonical_sampler_name(settings.sampler))
    items = get_suite(suite)
    start = time.perf_counter()
    references: dict[int, ReferenceSets] = {}
    sweep_settings = [settings.with_value(k, v) for k, values in sweeps.items() for v in values]
    extra = {s for s in sweep_settings if s != settings}
    total_runs = len(pipelines) + len(extra)
    counter = iter(range(1, total_runs + 1))

    def one_run(pipe: Generates, at: SamplingSettings, keep_images: bool) -> RunResult:
        name = getattr(pipe, "model_name", "model")
        if progress:
            tqdm.write(f"[run {next(counter)}/{total_runs}] {name}: {at.label()}")
        images: list[Image.Image] = []
        report = run_suite(pipe, suite, images_per_prompt=images_per_prompt,
                           num_steps=at.num_steps, sampler=at.sampler,
                           guidance_scale=at.guidance_scale, base_seed=base_seed,
                           progress=progress, layout=at.layout,
                           on_image=lambda generated, _: images.append(generated.image))
        run = RunResult(at, report, mean_rate_interval(report.outcomes_by_category()))
        if features is not None:
            size = int(getattr(pipe, "image_size", CANVAS_SIZE_PX))
            if size not in references:
                references[size] = build_reference_sets(items, images_per_prompt, suite, size,
                                                        features, seed=base_seed)
            ref = references[size]
            generated = features.features(images)  # (N, D)
            run.distribution = distribution_metrics(ref.reference, generated, seed=base_seed)
            diversity = per_prompt_diversity(items, generated, images_per_prompt)
            if diversity is not None and ref.diversity is not None:
                run.diversity = summarise_diversity(items, diversity, ref.diversity)
        if hasattr(pipe, "bits_per_dim") and getattr(pipe, "family", "") == "vae":
            run.likelihood = heldout_likelihood(pipe, items, images_per_prompt, suite, base_seed)
        if keep_images:
            run.images = images
        return run

    models = []
    for pipe in pipelines:
        model_dir = getattr(pipe, "model_dir", None)
        models.append(ModelEvaluation(
            name=str(getattr(pipe, "model_name", "model")),
            model_dir=str(model_dir) if model_dir is not None else None,
            sha256=getattr(pipe, "model_sha256", None),
            image_size=int(getattr(pipe, "image_size", CANVAS_SIZE_PX)),
            run=one_run(pipe, settings, keep_images=True),
            family=str(getattr(pipe, "family", "diffusion"))))
    done = {settings: models[0].run}
    swept: dict[str, list[RunResult]] = {}
    for key, values in sweeps.items():
        swept[key] = []
        for value in values:
            at = settings.with_value(key, value)
            if at not in done:
                done[at] = one_run(pipelines[0], at, keep_images=False)
            swept[key].append(done[at])
    feature_info = None if features is None else {
        "name": features.name, "dim": features.dim, "sha256": features.sha256,
        "path": str(getattr(features, "path", "")) or None}
    return Evaluation(suite=suite, suite_version=SUITES[suite].version,
                      images_per_prompt=images_per_prompt, base_seed=base_seed,
                      settings=settings, models=models, sweeps=swept, features=feature_info,
                      references=references, items=list(items),
                      elapsed_seconds=time.perf_counter() - start)


def heldout_likelihood(pipe: Any, items: Sequence[SuiteItem], images_per_prompt: int,
                       suite: str, seed: int) -> dict[str, Any]:
    """The model's negative ELBO in bits/dim (pipe.bits_per_dim) on the held-out real renders
    of the suite's prompts (the reference set of the distribution metrics), each with its
    prompt."""
    size = int(pipe.image_size)
    images = reference_images(items, images_per_prompt, SUITES[suite].namespace,
                              REFERENCE_SEED_OFFSET, size)
    prompts = [item.prompt for item in items for _ in range(images_per_prompt)]
    return {"negative_elbo_bits_per_dim": pipe.bits_per_dim(images, prompts, seed=seed),
            "num_images": len(images), "on": "held-out real renders of the suite's prompts",
            "image_size": size}


def load_pipelines(model_dirs: Sequence[str | Path], device: str = "cpu") -> list[Any]:
    """The sampling pipeline of each folder, of whatever family its config names
    (pictor.families.pipeline.load_model); ValueError (naming the folder) for a bad one."""
    from pictor.families.pipeline import load_model

    return [load_model(d, device=device) for d in model_dirs]
