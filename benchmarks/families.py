"""The family comparison, measured: seed 000's table for diffusion, GAN and VAE (docs/families.md).

Reads what the commands of docs/families.md leave behind and writes the tables:

- `reports/families/report.json` (seed 0) and `reports/families-s1`, `-s2` (seeds 1 and 2), each
  written by `pictor eval --model runs/fam-diffusion-sN/final --compare runs/fam-gan-sN/final
  runs/fam-vae-sN/final --suite geneval-shapes --images-per-prompt 4 -o ...`;
- each run's folder `runs/fam-{diffusion,gan,vae}-sN` (its metrics.jsonl, and `final/` when it
  finished); the training loop's wall time is the `loop_seconds` of its last record, or, for
  runs logged before the loop recorded it, from the console logs of the trainings (`--log`): the
  progress bar's last elapsed time before the run's `done:` line.

The training records it gathers (steps, wall time, last losses, whether the run finished) are
written to `docs/runs/families/training.json` with a copy of each run's metrics.jsonl, loss
curve and last validation grid, so that the tables can be rebuilt from the committed files
alone (`--from-committed`).

    .venv/bin/python benchmarks/families.py --log runs/*.log
    .venv/bin/python benchmarks/families.py --from-committed

Writes benchmarks/results/families.json, the `families` section of BENCHMARKS.md and the
results table of docs/families.md (between `<!-- families_results -->` markers).

When the emoji runs are judged too (`runs/fam-emoji-{diffusion,gan,vae}-s0`, each judged by
`benchmarks/emoji_heldout.py --model runs/fam-emoji-<family>-s0/final --clip models/emoji-clip
-o reports/families-emoji/<family> --name families_emoji_<family>
--no-markdown`), it also writes their table:
the `families_emoji` section of BENCHMARKS.md and `<!-- families_emoji_results -->` in the docs,
with a fourth column for a GAN run with the conditioning ramp (`runs/fam-emoji-ganramp-s0`,
`reports/families-emoji/ganramp`) where it exists.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

from common import ROOT, environment, markdown_table, update_markdown_section, write_json
from emoji_heldout import share
from pictor.data.shapes import CATEGORIES, COLORS

NAME = "families"
FAMILIES = ("diffusion", "gan", "vae")
COMMITTED = ROOT / "docs" / "runs" / "families"
DOCS = ROOT / "docs" / "families.md"
COLLAPSE_MAJORITY = 0.5  # a run counts as collapsed when more than half its prompts collapsed
_DONE = re.compile(r"done: step (\d+), last loss \S+, run folder (\S+?),")
_BAR = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def loop_seconds_from_logs(logs: list[Path]) -> dict[str, float]:
    """Run folder name -> the training progress bar's last elapsed seconds before its `done:`."""
    out: dict[str, float] = {}
    for log in logs:
        text = log.read_text(errors="replace")
        last = 0
        for done in _DONE.finditer(text):
            bars = list(_BAR.finditer(text, last, done.start()))
            if bars:
                h, m, s = bars[-1].group(3, 4, 5)
                out[Path(done.group(2)).name] = 3600 * int(h or 0) + 60 * int(m) + int(s)
            last = done.end()
    return out


def training_record(run_dir: Path, loop_seconds: dict[str, float]) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    train = [r for r in records if "loss" in r]
    last = train[-1] if train else {}
    keep = ("loss", "d_loss", "g_loss", "penalty", "d_real", "d_fake", "bits_per_dim",
            "recon_bits_per_dim", "kl_bits_per_dim", "denoising_loss")
    return {"run": run_dir.name, "steps": last.get("step", 0),
            "finished": (run_dir / "final").is_dir(),
            # the loop's own clock (metrics.jsonl) where it logged one, else the progress bar
            "loop_seconds": (round(last["loop_seconds"]) if "loop_seconds" in last
                             else loop_seconds.get(run_dir.name)),
            "last": {k: last[k] for k in keep if k in last},
            # the loop logs the non-finite value, then stops (pictor.training.loop)
            "diverged": any(not math.isfinite(r.get(k, 0.0)) for r in records
                            for k in ("loss", "gradient_norm"))}


def gather_training(runs: Path, logs: list[Path]) -> dict[str, dict]:
    seconds = loop_seconds_from_logs(logs)
    out = {}
    COMMITTED.mkdir(parents=True, exist_ok=True)
    for run_dir in sorted(runs.glob("fam-*-s*")):
        if not (run_dir / "metrics.jsonl").exists():
            continue
        record = training_record(run_dir, seconds)
        if not (record["finished"] or record["diverged"]):
            continue  # still training (or stopped by hand): not a result
        out[run_dir.name] = record
        shutil.copyfile(run_dir / "metrics.jsonl", COMMITTED / f"{run_dir.name}.metrics.jsonl")
        grids = sorted((run_dir / "samples").glob("step_*.png"))
        if grids:  # the validation prompts at the last step
            shutil.copyfile(grids[-1], COMMITTED / f"{run_dir.name}.samples.png")
        if (run_dir / "loss_curve.png").exists():
            shutil.copyfile(run_dir / "loss_curve.png", COMMITTED / f"{run_dir.name}.loss.png")
    (COMMITTED / "training.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def stability_plot(path: Path) -> Path | None:
    """Training curves of every committed run, one panel per family, one line per seed (and
    per player for the GAN), smoothed over 10 logged points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("diffusion", ("loss",), "training loss (v-prediction MSE + grounding)"),
              ("gan", ("d_loss", "g_loss"), "hinge losses: discriminator, generator"),
              ("vae", ("bits_per_dim",), "negative ELBO, bits/dim (training batches)"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    drawn = False
    for ax, (family, keys, title) in zip(axes, panels, strict=True):
        for path_m in sorted(COMMITTED.glob(f"fam-{family}-s*.metrics.jsonl")):
            seed = path_m.name.split("-s")[-1].split(".")[0]
            rows = [json.loads(x) for x in path_m.read_text().splitlines() if x.strip()]
            rows = [r for r in rows if "loss" in r]
            for key in keys:
                xs = [r["step"] for r in rows if key in r]
                ys = [r[key] for r in rows if key in r]
                smooth = [sum(ys[max(0, i - 9):i + 1]) / len(ys[max(0, i - 9):i + 1])
                          for i in range(len(ys))]
                label = f"seed {seed}" + (f" {key}" if len(keys) > 1 else "")
                ax.plot(xs, smooth, label=label, linestyle="-" if key == keys[0] else "--")
                drawn = True
        ax.set_title(f"{family}: {title}", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    if not drawn:
        plt.close(fig)
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


_OBJECT = re.compile(r"(\w+) (\w+) at \(")
PALETTE = tuple(COLORS)  # the spec's eight colours, in its order


def named_colours(images: list[dict]) -> dict[str, int]:
    """Colour -> how many objects the scorer names with it in the failed verdicts: their
    `found` objects (all the scorer saw), or, in reports written before records carried them
    (seeds 0 and 1), the objects their reasons name ("unrecognised shape(s): orange unknown at
    (42.5, 26.0), ...", which may leave some out). Failures only, in every report alike: a
    rough view of which colours a model draws at all."""
    counts = dict.fromkeys(PALETTE, 0)
    for image in images:
        if image["passed"]:
            continue
        seen = "; ".join(image["found"]) if "found" in image else image.get("reason") or ""
        for colour, _ in _OBJECT.findall(seen):
            if colour in counts:
                counts[colour] += 1
    return counts


def load_reports(reports: Path) -> dict[int, dict[str, dict]]:
    """Seed -> family -> the report's model entry (without its per-image verdicts)."""
    out: dict[int, dict[str, dict]] = {}
    for seed, folder in ((0, "families"), (1, "families-s1"), (2, "families-s2")):
        path = reports / folder / "report.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        entries = {}
        for m in data["models"]:
            m = {k: v for k, v in m.items() if k != "images"} | {
                "named_colours": named_colours(m["images"])}
            m["floor"] = data["floors"][str(m["image_size"])]
            entries[m["family"]] = m
        out[seed] = entries
    return out


def _interval(m: dict, key: str = "overall") -> str:
    lo, hi = m["intervals_95"][key]
    return f"{m['scores'][key]:.3f} [{lo:.2f}, {hi:.2f}]"


def collapsed(m: dict) -> bool:
    mc = m["diversity"]["mode_collapse"]
    return mc["collapsed_prompts"] > COLLAPSE_MAJORITY * mc["num_prompts"]


def seed_table(reports: dict[int, dict[str, dict]], training: dict[str, dict]) -> str:
    rows = []
    for family in FAMILIES:
        for seed in (0, 1, 2):
            t = training.get(f"fam-{family}-s{seed}")
            m = reports.get(seed, {}).get(family)
            if t is None and m is None:
                continue
            minutes = "-" if not t or t["loop_seconds"] is None else f"{t['loop_seconds'] / 60:.1f}"
            state = "-" if t is None else (
                "finished" if t["finished"] else "diverged" if t["diverged"] else "unfinished")
            if m is None:
                rows.append([family, seed, t["steps"] if t else "-", minutes, state] + ["-"] * 6)
                continue
            div = m["diversity"]
            rows.append([family, seed, t["steps"] if t else "-", minutes, state, _interval(m),
                         f"{m['distribution']['frechet_distance']:.2f}",
                         f"{div['ratio']:.2f}",
                         f"{div['mode_collapse']['collapsed_prompts']}/"
                         f"{div['mode_collapse']['num_prompts']}",
                         "yes" if collapsed(m) else "no", colours_seen(m)])
    return markdown_table(["family", "seed", "steps", "training loop (min)", "run",
                           "overall alignment [95%]", "FD", "diversity ratio",
                           "collapsed prompts", "collapsed run",
                           "colours never named (of the objects in failed verdicts)"], rows)


def colours_seen(m: dict) -> str:
    counts = m["named_colours"]
    never = [c for c in PALETTE if counts[c] == 0]
    return f"{', '.join(never) or 'none'} ({sum(counts.values())} objects)"


def main_table(reports: dict[int, dict[str, dict]], training: dict[str, dict]) -> str:
    s0 = reports.get(0, {})
    cols = [f for f in FAMILIES if f in s0]

    def cell(family, fn):
        m = s0.get(family)
        return "-" if m is None else fn(m)

    def seeds_state(family):
        runs = [training.get(f"fam-{family}-s{s}") for s in (0, 1, 2)]
        runs = [r for r in runs if r is not None and (r["finished"] or r["diverged"])]
        diverged = sum(r["diverged"] for r in runs)
        judged = [reports[s][family] for s in (0, 1, 2) if family in reports.get(s, {})]
        return (f"{diverged} of {len(runs)} diverged; {sum(collapsed(m) for m in judged)} of "
                f"{len(judged)} judged collapsed")

    def minutes_steps(family):
        t = training.get(f"fam-{family}-s0")
        if t is None or t["loop_seconds"] is None:
            return "-"
        return f"{t['loop_seconds'] / 60:.1f} min, {t['steps']:,} steps"

    def overall_over_seeds(family):
        vals = [reports[s][family]["scores"]["overall"] for s in (0, 1, 2)
                if family in reports.get(s, {})]
        if len(vals) < 2:
            return "-"
        mean = sum(vals) / len(vals)
        sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
        return f"{mean:.3f} +- {sd:.3f} ({len(vals)} seeds)"

    rows = [
        ["training loop wall time and steps in the budget (seed 0)"]
        + [minutes_steps(f) for f in cols],
        ["overall alignment, geneval-shapes [95% interval]"] + [cell(f, _interval) for f in cols],
        ["overall alignment, mean +- sd over seeds"] + [overall_over_seeds(f) for f in cols],
        ["single_object / colors / two_object"] + [cell(f, lambda m: " / ".join(
            f"{m['scores'][c]:.2f}" for c in CATEGORIES[:3])) for f in cols],
        ["color_attr / counting / position"] + [cell(f, lambda m: " / ".join(
            f"{m['scores'][c]:.2f}" for c in CATEGORIES[3:])) for f in cols],
        ["FD (real-vs-real floor)"] + [cell(f, lambda m: (
            f"{m['distribution']['frechet_distance']:.2f} "
            f"({m['floor']['frechet_distance']:.2f})")) for f in cols],
        ["KID x 1000"] + [cell(f, lambda m: f"{1000 * m['distribution']['kid']:.2f}")
                          for f in cols],
        ["precision / recall"] + [cell(f, lambda m: (
            f"{m['distribution']['precision']:.2f} / {m['distribution']['recall']:.2f}"))
            for f in cols],
        ["per-prompt diversity ratio (generated / real)"] + [
            cell(f, lambda m: f"{m['diversity']['ratio']:.2f}") for f in cols],
        ["collapsed prompts"] + [cell(f, lambda m: (
            f"{m['diversity']['mode_collapse']['collapsed_prompts']}/"
            f"{m['diversity']['mode_collapse']['num_prompts']}")) for f in cols],
        ["likelihood: negative ELBO, bits/dim"] + [cell(f, lambda m: (
            ("none (no likelihood)" if m["family"] == "gan" else "not computed")
            if m["likelihood"] is None else
            f"{m['likelihood']['negative_elbo_bits_per_dim']:.3f}")) for f in cols],
        ["seeds diverged / collapsed"] + [seeds_state(f) for f in cols],
        ["seconds per image (in `pictor eval`)"] + [
            cell(f, lambda m: f"{m['seconds_per_image']:.4f}") for f in cols],
    ]
    return markdown_table([""] + cols, rows)


EMOJI_SPLITS = ("heldout_style", "heldout_composition", "heldout_unseen")
# the emoji table's columns: run name fam-emoji-<key>-s0 and report folder <key> -> column label
EMOJI_COLUMNS = {"diffusion": "diffusion", "gan": "gan",
                 "ganramp": "gan, conditioning ramp", "vae": "vae"}


def load_emoji(reports: Path) -> dict[str, dict]:
    """Family -> the emoji held-out judge's groups (`pictor eval-clip`'s report.json, written by
    benchmarks/emoji_heldout.py into reports/families-emoji/<family>/) and the generation time
    of its results file (benchmarks/results/families_emoji_<family>.json)."""
    out = {}
    for family in EMOJI_COLUMNS:
        path = reports / "families-emoji" / family / "report.json"
        if not path.exists():
            continue
        result = ROOT / "benchmarks" / "results" / f"families_emoji_{family}.json"
        seconds = (json.loads(result.read_text()).get("generate_seconds")
                   if result.exists() else None)
        out[family] = {"groups": json.loads(path.read_text())["groups"],
                       "generate_seconds": seconds}
    return out


def _share(figure: dict | None) -> str:
    return "n/a" if figure is None else share(figure)


def emoji_table(emoji: dict[str, dict], training: dict[str, dict]) -> str:
    """One column per family: training, then the judge's figures on every held-out caption
    (`all`), each beside the real held-out images' value (the ceiling), and per split."""
    cols = [f for f in EMOJI_COLUMNS if f in emoji]
    real = emoji[cols[0]]["groups"]["all"]["real"]  # the same real images for every family

    def train_cell(family):
        t = training.get(f"fam-emoji-{family}-s0")
        if t is None or t["loop_seconds"] is None:
            return "-"
        return f"{t['loop_seconds'] / 60:.1f} min, {t['steps']:,} steps"

    def gen(family, key):
        return emoji[family]["groups"]["all"]["generated"].get(key)

    def per_image(family):
        e = emoji[family]
        n = e["groups"]["all"]["generated"]["num_images"]
        return "-" if e["generate_seconds"] is None else f"{e['generate_seconds'] / n:.3f}"

    dist = {f: emoji[f]["groups"]["all"]["distribution"] for f in cols}
    rows = [
        ["training loop wall time and steps (seed 0)"] + [train_cell(f) for f in cols],
        [f"R-precision, all held-out captions (real: {real['r_precision']['value']:.3f})"]
        + [_share(gen(f, "r_precision")) for f in cols],
        *[[f"R-precision, {split}"] + [_share(emoji[f]["groups"][split]["generated"]
                                              ["r_precision"]) for f in cols]
          for split in EMOJI_SPLITS],
        [f"style accuracy (real: {real['hard_negative_style']['value']:.3f}, chance 0.333)"]
        + [_share(gen(f, "hard_negative_style")) for f in cols],
        [f"skin-tone accuracy (real: {real['hard_negative_tone']['value']:.3f})"]
        + [_share(gen(f, "hard_negative_tone")) for f in cols],
        [f"CLIPScore (real: {real['clip_score']:.1f})"]
        + [f"{gen(f, 'clip_score'):.1f}" for f in cols],
        ["FD on the judge's features (real-vs-real floor)"]
        + [f"{dist[f]['generated_vs_real']['fd']:.1f} ({dist[f]['real_vs_real']['fd']:.1f})"
           for f in cols],
        ["near-copies of training images"]
        + [f"{gen(f, 'memorisation')['near_copy_share']:.3f}" for f in cols],
        ["seconds per image (`pictor generate`, process start included)"]
        + [per_image(f) for f in cols],
    ]
    return markdown_table([""] + [EMOJI_COLUMNS[f] for f in cols], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs",
                        help="folder holding the runs fam-<family>-s<seed> (default runs/)")
    parser.add_argument("--log", type=Path, nargs="*", default=[],
                        help="console logs of the trainings (for the loop's wall time)")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    parser.add_argument("--from-committed", action="store_true",
                        help="read docs/runs/families/training.json instead of the run folders")
    args = parser.parse_args(argv)
    if args.from_committed:
        training = json.loads((COMMITTED / "training.json").read_text())
    else:
        training = gather_training(args.runs, args.log)
    stability_plot(COMMITTED / "stability.png")
    reports = load_reports(args.reports)
    if 0 not in reports:
        parser.error(f"no {args.reports / 'families' / 'report.json'}: run the seed-0 eval first")
    head = ("Three families trained for 20 minutes each on 2 CPU cores (docs/families.md), "
            "judged by `pictor eval --compare` on geneval-shapes (4 images per prompt; "
            "diffusion: dpm++2m, 20 steps, guidance 4; GAN and VAE: one pass). Cells give the "
            "seed-0 model unless they say otherwise. Written by `benchmarks/families.py` from "
            "`reports/families*/report.json` and `docs/runs/families/training.json`.\n\n")
    tables = main_table(reports, training) + "\n\nEvery run:\n\n" + seed_table(reports, training)
    curves = "\n\nTraining curves of every run: [stability.png]({}runs/families/stability.png)."
    body = head + tables + curves.format("docs/")
    update_markdown_section(NAME, body)
    update_markdown_section("families_results", head + tables + curves.format(""), DOCS)
    print(body)
    emoji = load_emoji(args.reports)
    if emoji:
        ehead = ("The same three configs on the emoji collection (`--data.path=data/emoji-64`; "
                 "diffusion with the emoji autoencoder and configs/emoji.yaml), 15 minutes each "
                 "on 2 CPU cores, seed 0, judged by `benchmarks/emoji_heldout.py` with the emoji "
                 "CLIP: one image per held-out caption (741), as for emoji-v1. Cells are "
                 "value [95% interval]; chance R-precision is 0.010. \"gan, conditioning "
                 "ramp\": the GAN config with `--gan.condition_ramp_start=150 "
                 "--gan.condition_ramp_end=600` (Shahbazi et al. 2022), where the run has one. "
                 "Written by "
                 "`benchmarks/families.py` from `reports/families-emoji/*/report.json`.\n\n")
        etable = emoji_table(emoji, training)
        update_markdown_section("families_emoji", ehead + etable)
        update_markdown_section("families_emoji_results", ehead + etable, DOCS)
        print(ehead + etable)
    write_json(NAME, {"training": training, "reports": reports, "emoji": emoji,
                      "environment": environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
