"""Write an `Evaluation` (pictor.evaluation.evaluate) as a report folder:

    REPORT_DIR/report.json     every number, the settings, per-image verdicts of each model
    REPORT_DIR/report.md       the same tables, linking the PNGs below
    REPORT_DIR/report.html     self-contained: the PNGs inlined as base64 (one file to share)
    REPORT_DIR/grids/<i>-<model>/<category>.png   samples, green border = pass, red = fail
    REPORT_DIR/plots/score_vs_<key>.png           one per sweep, seconds per image beside it

The Markdown and HTML come from one list of sections (text, tables, figures), so the two never
disagree.
"""

from __future__ import annotations

import base64
import html
import json
import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from pictor.data.shapes import CATEGORIES
from pictor.data.suites import SUITES
from pictor.evaluation.evaluate import Evaluation, ModelEvaluation, RunResult
from pictor.evaluation.plots import Panel, font, plot_panels
from pictor.evaluation.scorer import ScoreResult

REPORT_FORMAT = "pictor.eval-report/1"
GRID_CELLS = 16  # images per category grid
GRID_COLUMNS = 4
CELL_PX = 128  # each 64 px image shown at 2x (nearest neighbour)
_PASS, _FAIL = (40, 170, 70), (215, 45, 45)
_TOP_REASONS = 3


# ---------------------------------------------------------------------------------------------
# Sample grids
# ---------------------------------------------------------------------------------------------
def grid_indices(num_prompts: int, images_per_prompt: int, cells: int = GRID_CELLS) -> list[int]:
    """Which images of a category (prompt-major order) fill a grid: up to GRID_COLUMNS seeds of
    each prompt, as many prompts as fit, so a row shows one prompt's seeds when
    images_per_prompt >= 4 and several prompts otherwise."""
    per_prompt = min(images_per_prompt, GRID_COLUMNS)
    out = []
    for i in range(num_prompts):
        for j in range(per_prompt):
            if len(out) == cells:
                return out
            out.append(i * images_per_prompt + j)
    return out


def sample_grid(images: Sequence[Image.Image], results: Sequence[ScoreResult],
                columns: int = GRID_COLUMNS, cell_px: int = CELL_PX,
                prompts: Sequence[str] | None = None) -> Image.Image:
    """Images in a grid, each framed green (passed) or red (failed), with PASS/FAIL and its
    prompt underneath (`prompts`: what the model was given; default: the judged prompt)."""
    if len(images) != len(results) or not images:
        raise ValueError(f"need as many results as images (>= 1), got {len(images)} and "
                         f"{len(results)}")
    small = font(11)
    border, line_h = 4, 13
    label_h = 4 + 4 * line_h
    rows = (len(images) + columns - 1) // columns
    width, height = cell_px + 2 * border, cell_px + 2 * border + label_h
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(grid)
    prompts = [r.prompt for r in results] if prompts is None else prompts
    for k, (image, result, prompt) in enumerate(zip(images, results, prompts, strict=True)):
        r, c = divmod(k, columns)
        x, y = c * width, r * height
        colour = _PASS if result.passed else _FAIL
        draw.rectangle([x, y, x + width - 1, y + cell_px + 2 * border - 1], fill=colour)
        grid.paste(image.convert("RGB").resize((cell_px, cell_px), Image.Resampling.NEAREST),
                   (x + border, y + border))
        ty = y + cell_px + 2 * border + 2
        draw.text((x + 2, ty), "PASS" if result.passed else "FAIL", fill=colour, font=small)
        for i, line in enumerate(textwrap.wrap(prompt, 22)[:3]):
            draw.text((x + 2, ty + line_h * (i + 1)), line, fill="black", font=small)
    return grid


def write_grids(model: ModelEvaluation, index: int, images_per_prompt: int, out_dir: Path
                ) -> dict[str, Path]:
    """One grid PNG per category of a model's base run; category -> path."""
    folder = out_dir / "grids" / f"{index}-{_slug(model.name)}"
    folder.mkdir(parents=True, exist_ok=True)
    report, images = model.run.report, model.run.images
    results = report.results
    paths = {}
    for category in CATEGORIES:
        members = [k for k, r in enumerate(results) if r.category == category]
        if not members or not images:
            continue
        chosen = [members[k] for k in grid_indices(len(members) // images_per_prompt,
                                                   images_per_prompt) if k < len(members)]
        path = folder / f"{category}.png"
        sample_grid([images[k] for k in chosen], [results[k] for k in chosen],
                    prompts=[report.prompts[k] for k in chosen]).save(path)
        paths[category] = path
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


# ---------------------------------------------------------------------------------------------
# Document model: sections of text, tables and figures, rendered to Markdown and HTML
# ---------------------------------------------------------------------------------------------
@dataclass
class Text:
    text: str  # plain text; `code` spans are kept in Markdown and become <code> in HTML


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: Path  # a PNG inside the report folder
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Text | Table | Figure] = field(default_factory=list)
    level: int = 2


def render_markdown(title: str, sections: Sequence[Section], root: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"{'#' * section.level} {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                lines.append("| " + " | ".join(block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(row) + " |" for row in block.rows]
                lines.append("")
            else:
                lines += [f"![{block.caption}]({block.path.relative_to(root).as_posix()})", ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{
text-align:left}figure{display:inline-block;margin:.5em 1em 1em 0;vertical-align:top}
figcaption{font-size:.9em;color:#555}code{background:#f3f3f3;padding:0 3px}img{max-width:100%}"""


def render_html(title: str, sections: Sequence[Section]) -> str:
    """A single HTML file: every figure is read and inlined as a base64 PNG data URI."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        out.append(f"<h{section.level}>{html.escape(section.title)}</h{section.level}>")
        for block in section.blocks:
            if isinstance(block, Text):
                out.append(f"<p>{_inline_html(block.text)}</p>")
            elif isinstance(block, Table):
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.header)
                body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row)
                               + "</tr>" for row in block.rows)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                out.append(f'<figure><img src="data:image/png;base64,{data}" '
                           f'alt="{html.escape(block.caption)}"><figcaption>'
                           f"{html.escape(block.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Contents
# ---------------------------------------------------------------------------------------------
def _ci(interval: tuple[float, float] | list[float] | None) -> str:
    return f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "-"


def _reason_kind(reason: str) -> str:
    """The gist of a scorer verdict, without the per-image details after ':' or ';'."""
    return re.split(r"[:;]", reason, maxsplit=1)[0].strip()


def alignment_table(run: RunResult) -> Table:
    report = run.report
    rows = []
    for category in CATEGORIES:
        if category not in report.scores:
            continue
        members = [r for r in report.results if r.category == category]
        reasons = Counter(_reason_kind(r.reason) for r in members if not r.passed)
        top = "; ".join(f"{kind} ({n})" for kind, n in reasons.most_common(_TOP_REASONS))
        rows.append([category, f"{report.scores[category]:.3f}",
                     _ci(report.intervals[category]), str(len(members)), top or "-"])
    rows.append(["overall", f"{report.scores['overall']:.3f}", _ci(run.overall_interval),
                 str(len(report.results)), "mean of the category scores"])
    return Table(["category", "score", "95% interval", "images", "most common failures"], rows)


def distribution_blocks(evaluation: Evaluation, model: ModelEvaluation) -> list[Any]:
    run, ref = model.run, evaluation.references[model.image_size]
    d, f = run.distribution, ref.floor  # called only when features were computed
    rows = [
        ["Frechet distance", f"{d.frechet_distance:.3f}", f"{f.frechet_distance:.3f}"],
        ["KID x 1000", f"{1000 * d.kid:.3f} +- {1000 * d.kid_std:.3f}",
         f"{1000 * f.kid:.3f} +- {1000 * f.kid_std:.3f}"],
        [f"precision (k={d.k})", f"{d.precision:.3f}", f"{f.precision:.3f}"],
        [f"recall (k={d.k})", f"{d.recall:.3f}", f"{f.recall:.3f}"],
    ]
    blocks: list[Any] = [
        Text(f"Features: `{evaluation.features['name']}` ({evaluation.features['dim']}-d, "
             f"sha256 {evaluation.features['sha256'][:12]}...). Each set holds {d.num_images} "
             f"images at {model.image_size} px: the generated images, held-out ground-truth "
             "renders of the same prompts (the suite's seed namespace), and for the floor a "
             "second real set like the training data (train namespace). A figure is "
             "meaningful only against the floor, the value two real sets of this size give."),
        Table(["metric", "generated vs real (held-out)", "floor: real vs real"], rows)]
    if run.diversity is not None:
        div = run.diversity
        rows = [[c, f"{g:.3f}", f"{r:.3f}", f"{g / r:.2f}" if r else "-"]
                for c, (g, r) in div.per_category.items()]
        rows.append(["all prompts", f"{div.mean_generated:.3f}", f"{div.mean_real:.3f}",
                     f"{div.ratio:.2f}"])
        blocks += [
            Text("Per-prompt diversity: mean pairwise feature distance between the images of "
                 "one prompt, generated vs real renders of the same prompt (a ratio near 0 "
                 "means mode collapse)."),
            Table(["category", "generated", "real", "ratio"], rows),
            Table(["least diverse prompts", "generated", "real"],
                  [[p, f"{g:.3f}", f"{r:.3f}"] for p, g, r in div.least_diverse])]
    else:
        blocks.append(Text("Per-prompt diversity needs at least 2 images per prompt "
                           "(--images-per-prompt 2 or more)."))
    return blocks


def sweep_section(evaluation: Evaluation, key: str, runs: Sequence[RunResult], out_dir: Path
                  ) -> Section:
    xs = [run.settings.value_of(key) for run in runs]
    overall = [run.report.scores["overall"] for run in runs]
    panels = [
        Panel(key, "overall score (95% interval)", xs, overall,
              low=[run.overall_interval[0] for run in runs],
              high=[run.overall_interval[1] for run in runs], y_range=(0.0, 1.0)),
        Panel(key, "seconds per image", xs, [run.report.seconds_per_image for run in runs],
              value_format="{:.3f}"),
    ]
    title = f"{evaluation.suite} vs {key} ({evaluation.models[0].name})"
    path = plot_panels(out_dir / "plots" / f"score_vs_{key}.png", title, panels)
    has_fd = all(run.distribution is not None for run in runs)
    header = [key, "overall", "95% interval", *CATEGORIES, "s/image"] + (
        ["FD", "KID x 1000"] if has_fd else [])
    rows = []
    for x, run in zip(xs, runs, strict=True):
        s = run.report.scores
        row = [str(x), f"{s['overall']:.3f}", _ci(run.overall_interval),
               *[f"{s[c]:.3f}" if c in s else "-" for c in CATEGORIES],
               f"{run.report.seconds_per_image:.3f}"]
        if has_fd:
            row += [f"{run.distribution.frechet_distance:.3f}",
                    f"{1000 * run.distribution.kid:.3f}"]
        rows.append(row)
    others = ", ".join(f"{k}={evaluation.settings.value_of(k)}"
                       for k in ("steps", "guidance", "sampler") if k != key)
    floor = ""
    if has_fd:
        fd_floor = evaluation.references[evaluation.models[0].image_size].floor.frechet_distance
        floor = f" FD is against held-out real renders; the real-vs-real floor is {fd_floor:.3f}."
    return Section(f"Sweep: {key}", [
        Text(f"{key} varied, the other settings at their base values ({others}).{floor}"),
        Figure(path, f"score and seconds per image vs {key}"), Table(header, rows)])


def _settings_label(evaluation: Evaluation, model: ModelEvaluation) -> str:
    """The sampling settings a model ran at: the base settings for diffusion, one network pass
    for a GAN or VAE (they have no sampler, steps or guidance)."""
    if model.family != "diffusion":
        return f"{model.family.upper()}: one network pass per image"
    return evaluation.settings.label()


def comparison_section(evaluation: Evaluation, out_dir: Path) -> Section:
    models = evaluation.models
    has_fd = all(m.run.distribution is not None for m in models)
    has_div = all(m.run.diversity is not None for m in models)
    has_ll = any(m.run.likelihood is not None for m in models)
    header = ["model", "family", "sha256", "overall", "95% interval", *CATEGORIES, "s/image"] + (
        ["FD (floor)", "KID x 1000", "precision", "recall"] if has_fd else []) + (
        ["diversity ratio", "collapsed prompts"] if has_div else []) + (
        ["bits/dim (-ELBO)"] if has_ll else [])
    rows = []
    for m in models:
        s = m.run.report.scores
        row = [m.name, m.family, (m.sha256 or "-")[:12], f"{s['overall']:.3f}",
               _ci(m.run.overall_interval),
               *[f"{s[c]:.3f}" if c in s else "-" for c in CATEGORIES],
               f"{m.run.report.seconds_per_image:.3f}"]
        if has_fd:
            d, f = m.run.distribution, evaluation.references[m.image_size].floor
            row += [f"{d.frechet_distance:.3f} ({f.frechet_distance:.3f})", f"{1000 * d.kid:.3f}",
                    f"{d.precision:.3f}", f"{d.recall:.3f}"]
        if has_div:
            div = m.run.diversity
            row += [f"{div.ratio:.2f}", f"{div.collapsed_prompts}/{div.num_prompts}"]
        if has_ll:
            ll = m.run.likelihood
            row.append("-" if ll is None else f"{ll['negative_elbo_bits_per_dim']:.3f}")
        rows.append(row)
    settings = "; ".join(dict.fromkeys(_settings_label(evaluation, m) for m in models))
    blocks: list[Any] = [
        Text(f"Each model at its settings ({settings}), same prompts and seeds. FD is against "
             "held-out real renders (the real-vs-real floor in brackets); diversity ratio: "
             "per-prompt diversity of the generated images over that of real renders of the "
             "same prompts; a prompt counts as collapsed below 0.25 of the real diversity. "
             "bits/dim: the VAE's negative ELBO on the held-out real renders (an upper bound on "
             "its negative log-likelihood); diffusion and GAN report none here."),
        Table(header, rows)]
    names = [m.name for m in models]
    panels = [Panel("model", "overall score (95% interval)", names,
                    [m.run.report.scores["overall"] for m in models],
                    low=[m.run.overall_interval[0] for m in models],
                    high=[m.run.overall_interval[1] for m in models], y_range=(0.0, 1.0)),
              Panel("model", "seconds per image", names,
                    [m.run.report.seconds_per_image for m in models], value_format="{:.4f}")]
    if has_fd:
        panels.append(Panel("model", "Frechet distance", names,
                            [m.run.distribution.frechet_distance for m in models]))
    if has_div:
        panels.append(Panel("model", "diversity ratio (generated / real)", names,
                            [m.run.diversity.ratio for m in models], value_format="{:.2f}"))
    path = plot_panels(out_dir / "plots" / "comparison.png", "model comparison", panels)
    blocks.append(Figure(path, "overall score, seconds per image, FD and diversity per model"))
    return Section("Comparison", blocks)


def prompts_section(evaluation: Evaluation, per_category: int = 2) -> Section | None:
    """The first prompts of each category beside their canonical form and how their images
    fared; None when every prompt is canonical."""
    if all(item.prompt == item.canonical for item in evaluation.items):
        return None
    report, n = evaluation.models[0].run.report, evaluation.images_per_prompt
    rows = []
    for category in CATEGORIES:
        shown = [i for i, item in enumerate(evaluation.items) if item.category == category]
        for i in shown[:per_category]:
            item = evaluation.items[i]
            passed = sum(r.passed for r in report.results[i * n:(i + 1) * n])
            rows.append([category, item.prompt, item.canonical, f"{passed}/{n}"])
    return Section("Prompts", [
        Text("The model is given each prompt; the scorer judges its canonical form (the same "
             "scene). report.json lists both for every image."),
        Table(["category", "prompt (given)", "canonical (judged)", "passed"], rows)])


def build_sections(evaluation: Evaluation, out_dir: Path) -> list[Section]:
    main = evaluation.models[0]
    n_prompts = len(evaluation.items)
    offset = SUITES[evaluation.suite].image_seed_offset
    seeds = f"base + {offset} + 1000 i + j" if offset else "base + 1000 i + j"
    intro = (f"Model `{main.name}` (sha256 {(main.sha256 or '-')[:12]}...): suite "
             f"`{evaluation.suite}` v{evaluation.suite_version}, {n_prompts} prompts x "
             f"{evaluation.images_per_prompt} images = {len(main.run.report.results)} images; "
             f"{_settings_label(evaluation, main)}; base seed {evaluation.base_seed} (image j of "
             f"prompt i uses seed {seeds}). {main.run.report.seconds_per_image:.3f} s "
             f"per image; the whole evaluation took {evaluation.elapsed_seconds:.0f} s.")
    sections = [Section("Summary", [Text(intro)]),
                Section("Alignment", [
                    Text("Pass rate per category (the shapes scorer judges pixels against the "
                         "prompt) with 95% Wilson intervals; the overall score is the plain mean "
                         "of the six, its interval the adjusted Wald interval of a mean of "
                         "proportions."), alignment_table(main.run)])]
    prompts = prompts_section(evaluation)
    if prompts is not None:
        sections.append(prompts)
    if main.run.distribution is not None:
        sections.append(Section("Distribution metrics", distribution_blocks(evaluation, main)))
    if len(evaluation.models) > 1:
        sections.append(comparison_section(evaluation, out_dir))
    for key, runs in evaluation.sweeps.items():
        sections.append(sweep_section(evaluation, key, runs, out_dir))
    for index, model in enumerate(evaluation.models):
        grids = write_grids(model, index, evaluation.images_per_prompt, out_dir)
        blocks: list[Any] = [Text("Green frame: passed; red: failed.")] if index == 0 else []
        blocks += [Figure(path, category) for category, path in grids.items()]
        sections.append(Section(f"Samples: {model.name}", blocks))
    return sections


def report_data(evaluation: Evaluation) -> dict[str, Any]:
    """The JSON document of the report."""
    def model_entry(m: ModelEvaluation) -> dict[str, Any]:
        images = m.run.report.to_dict()["images"]
        return {"name": m.name, "family": m.family, "model_dir": m.model_dir,
                "sha256": m.sha256, "image_size": m.image_size, **m.run.summary(), "images": images}

    return {
        "format": REPORT_FORMAT,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "suite": evaluation.suite, "suite_version": evaluation.suite_version,
        "images_per_prompt": evaluation.images_per_prompt, "base_seed": evaluation.base_seed,
        "settings": evaluation.settings.to_dict(),
        "elapsed_seconds": evaluation.elapsed_seconds,
        "features": evaluation.features,
        "floors": {str(size): {**ref.floor.to_dict(),
                               "reference_diversity": (
                                   None if ref.diversity is None else
                                   sum(ref.diversity.values()) / len(ref.diversity))}
                   for size, ref in evaluation.references.items()},
        "models": [model_entry(m) for m in evaluation.models],
        "sweeps": {key: [{"value": run.settings.value_of(key), **run.summary()} for run in runs]
                   for key, runs in evaluation.sweeps.items()},
    }


def write_report(evaluation: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, report.html (+ grids/ and plots/); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"pictor eval: {evaluation.models[0].name} on {evaluation.suite}"
    sections = build_sections(evaluation, out)
    paths = {"json": out / "report.json", "markdown": out / "report.md",
             "html": out / "report.html"}
    paths["json"].write_text(json.dumps(report_data(evaluation), indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(title, sections, out))
    paths["html"].write_text(render_html(title, sections))
    return paths
