"""Run a prompt suite through a pipeline and score it: the shapes-world GenEval.

For every prompt of the suite, `images_per_prompt` images are generated (image j of prompt i
uses seed `base_seed + image_seed_offset + 1000 * i + j`, `pictor.data.suites.image_seed`, so
any single image can be regenerated from its record) and judged by `pictor.evaluation.scorer`
from pixels and the canonical prompt alone. The model is given the item's `prompt`; the scorer
judges its `canonical` form (the same scene: a paraphrase suite's prompts are other words for
it). A category's score is its pass rate, the overall score the plain mean of the six (GenEval,
Ghosh et al. 2023). Each score carries a 95% Wilson interval, since 128 images per category
still leave +-8 points.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pictor.data.suites import DEFAULT_SUITE, get_suite, image_seed
from pictor.evaluation.scorer import ScoreResult, aggregate, outcomes_by_category, score_image


class _Generates(Protocol):  # pictor.pipeline.Pipeline
    def generate(self, prompt: str, **kwargs: Any) -> list[Any]: ...


def wilson_interval(passes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a pass rate (Wilson 1927); well-behaved at 0 and 1."""
    if total <= 0:
        raise ValueError("wilson_interval needs at least one trial")
    p = passes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class SuiteReport:
    suite: str
    settings: dict[str, Any]
    scores: dict[str, float]  # category -> pass rate, plus "overall"
    intervals: dict[str, tuple[float, float]]  # category -> 95% Wilson interval
    seconds_per_image: float
    results: list[ScoreResult] = field(default_factory=list)  # r.prompt: the canonical form
    seeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # what the model was given, per image

    def outcomes_by_category(self) -> dict[str, list[bool]]:
        """Each category's verdicts (passed or not), in image order."""
        return outcomes_by_category(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "settings": self.settings,
            "scores": self.scores,
            "intervals_95": {k: list(v) for k, v in self.intervals.items()},
            "seconds_per_image": self.seconds_per_image,
            "images": [image_record(r, s, p)
                       for r, s, p in zip(self.results, self.seeds, self.prompts, strict=True)],
        }


def image_record(result: ScoreResult, seed: int, prompt: str) -> dict[str, Any]:
    """The JSON record of one judged image; `canonical` only where the prompt differs; `found`:
    every object the scorer saw, passed or not ("red circle at (20.5, 31.0)")."""
    record: dict[str, Any] = {"prompt": prompt}
    if prompt != result.prompt:
        record["canonical"] = result.prompt
    return record | {"category": result.category, "seed": seed, "passed": result.passed,
                     "reason": result.reason, "found": [o.describe() for o in result.found]}


def run_suite(
    pipeline: _Generates,
    suite: str = DEFAULT_SUITE,
    *,
    images_per_prompt: int = 4,
    num_steps: int = 20,
    sampler: str = "dpm++2m",
    guidance_scale: float = 4.0,
    base_seed: int = 0,
    progress: bool = True,
    on_image: Callable[[Any, ScoreResult], None] | None = None,
    layout: bool = False,
) -> SuiteReport:
    """Generate and score every prompt of `suite`; see the module docstring."""
    from tqdm import tqdm

    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    items = get_suite(suite)
    results: list[ScoreResult] = []
    seeds: list[int] = []
    prompts: list[str] = []
    image_seed(suite, len(items) - 1, images_per_prompt - 1, base_seed)  # checks the count
    start = time.perf_counter()
    bar = tqdm(total=len(items) * images_per_prompt, desc=f"eval {suite}", unit="img",
               disable=not progress)
    # A GAN or VAE (pictor.families) has no sampler, steps or guidance: it gets prompt and seed.
    family = getattr(pipeline, "family", "diffusion")
    sampling = {} if family != "diffusion" else {
        "num_steps": num_steps, "sampler": sampler, "guidance_scale": guidance_scale,
        "layout": layout}
    for i, item in enumerate(items):
        seed = image_seed(suite, i, 0, base_seed)
        images = pipeline.generate(item.prompt, num_images=images_per_prompt, seed=seed,
                                   **sampling)
        for j, generated in enumerate(images):
            result = score_image(generated.image, item.canonical)
            results.append(result)
            seeds.append(seed + j)
            prompts.append(item.prompt)
            if on_image is not None:
                on_image(generated, result)
        bar.update(len(images))
    bar.close()
    elapsed = time.perf_counter() - start
    scores = aggregate(results)
    outcomes = outcomes_by_category(results)
    intervals = {c: wilson_interval(sum(outcomes[c]), len(outcomes[c]))
                 for c in scores if c != "overall"}
    from pictor.pipeline import DEFAULT_GUIDANCE_INTERVAL, guidance_interval_value

    settings = {"images_per_prompt": images_per_prompt, "num_steps": num_steps,
                "sampler": sampler, "guidance_scale": guidance_scale, "base_seed": base_seed,
                "guidance_interval": guidance_interval_value(DEFAULT_GUIDANCE_INTERVAL),
                "compute_dtype": getattr(pipeline, "compute_dtype", "float32"),
                "layout": layout}
    if family != "diffusion":  # one network pass per image: the sampling settings do not apply
        settings = {"family": family, "images_per_prompt": images_per_prompt,
                    "num_steps": 1, "sampler": None, "guidance_scale": None,
                    "base_seed": base_seed, "compute_dtype": settings["compute_dtype"],
                    "layout": False}
    return SuiteReport(suite=suite, settings=settings, scores=scores, intervals=intervals,
                       seconds_per_image=elapsed / max(1, len(results)), results=results,
                       seeds=seeds, prompts=prompts)
