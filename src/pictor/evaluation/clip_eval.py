"""`pictor eval-clip`: judge a set of real held-out images, and optionally generated images of
the same captions, with a CLIP trained by `pictor train-clip`.

    judge = load_clip("models/emoji-clip")
    report = evaluate_clip_sets(judge, "data/emoji-heldout-64", generated="outputs/gen",
                                train="data/emoji-64")

Every set is a data set pictor reads (shards or an imagefolder whose metadata.jsonl gives each
image's caption); generated images may also be a folder of `pictor generate` PNGs, captioned by
the prompt in their provenance records. A generated image's caption must be one of the real
set's. Figures are
reported per group (the records' `split` field by default: heldout_style, heldout_composition,
heldout_unseen for the emoji) and for all images, each with the real images' value (the
ceiling) beside the generated images' (pictor.evaluation.clip_metrics).

Hard negatives come from the records' emoji fields (pictor.data.emoji): the same name in each
other style ("style"), and the captions of the same base emoji in the same style with other
skin tones, found in the real and training sets ("tone"); "all" needs the true caption to beat
both kinds. A data set without those fields has no hard negatives (reported as null).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pictor.evaluation.clip_metrics import (
    clip_score,
    distinct,
    fd_kid,
    hard_negative_accuracy,
    memorisation,
    r_precision,
    split_halves,
)
from pictor.evaluation.clip_training import CLIP_FILE, load_images_uint8, text_table
from pictor.networks.clip import ClipConfig, ClipModel

_BATCH = 256


class ClipJudge:
    """A trained CLIP (clip.safetensors) that embeds images and captions; also a
    pictor.evaluation.features.FeatureExtractor (standardised image embeddings)."""

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None) -> None:
        """cache_dir: where the frozen tokens of embedded captions are kept (None: in memory;
        one file per caption list, U x L x 384 float32, so an evaluation does not keep one)."""
        from pictor.networks.codec import file_sha256
        from pictor.networks.io import load_module

        path = Path(path).expanduser()
        if path.is_dir():
            path = path / CLIP_FILE
        if not path.is_file():
            raise ValueError(f"no CLIP at {str(path)!r}; train one with `pictor train-clip "
                             f"--data DIR -o {path.parent}`")
        self.path = path
        self.model = load_module(ClipModel, ClipConfig, path).float().eval().requires_grad_(False)
        self.config: ClipConfig = self.model.config
        self.name, self.dim, self.sha256 = "clip", self.config.embed_dim, file_sha256(path)
        self.cache_dir = cache_dir

    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, 3, H, W) at the model's size -> (N, E) unit rows, float64."""
        out = [np.zeros((0, self.dim))]
        with torch.inference_mode():
            for i in range(0, len(images), _BATCH):
                x = images[i:i + _BATCH].float() / 127.5 - 1.0
                out.append(self.model.encode_image(x).double().numpy())
        return np.concatenate(out)

    def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
        """Captions -> (N, E) unit rows, float64 (frozen tokens cached on disk)."""
        captions = list(captions)
        table = text_table(captions, self.config, cache_dir=self.cache_dir)
        out = [np.zeros((0, self.dim))]
        with torch.inference_mode():
            for i in range(0, len(captions), _BATCH):
                out.append(self.model.encode_text(*table.encode(captions[i:i + _BATCH]))
                           .double().numpy())
        return np.concatenate(out)

    def embed_pil_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, E) unit rows, through the same 8-bit conversion as the data sets'
        images (exact for 8-bit images; resized bicubically when their size differs)."""
        from pictor.evaluation.clip_training import to_uint8
        from pictor.evaluation.features import images_to_tensor

        return self.embed_images(to_uint8(images_to_tensor(images, self.config.image_size)))

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """FeatureExtractor: RGB images -> (N, E) standardised image embeddings."""
        from pictor.evaluation.features import images_to_tensor

        x = images_to_tensor(images, self.config.image_size)
        with torch.inference_mode():
            return self.model.image_features(x).double().numpy()


def load_clip(spec: str | Path) -> ClipJudge:
    """A CLIP folder of `pictor train-clip` (or its clip.safetensors)."""
    return ClipJudge(spec)


# ---------------------------------------------------------------------------------------------
# Data sets and hard negatives
# ---------------------------------------------------------------------------------------------
class _Set:
    """One data set as the judge sees it: uint8 images, captions, extras. A folder that is no
    data set (no manifest.json, no metadata.jsonl) but holds PNGs of `pictor generate` is read
    with each image's prompt, from its provenance record, as its caption."""

    def __init__(self, path: str | Path, image_size: int, what: str) -> None:
        from pictor.data.loader import METADATA_FILE, open_dataset
        from pictor.data.shards import MANIFEST_FILE

        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"{what} set {str(path)!r} is not a folder")
        if not (path / MANIFEST_FILE).is_file() and not (path / METADATA_FILE).is_file():
            self._read_generated_pngs(path, image_size)
            return
        dataset = open_dataset(path, image_size)
        self.images = load_images_uint8(dataset)                       # (N, 3, H, W)
        self.captions, self.extras = dataset.captions, dataset.extras

    def _read_generated_pngs(self, path: Path, image_size: int) -> None:
        from pictor.data.loader import load_image
        from pictor.evaluation.clip_training import to_uint8
        from pictor.provenance import read_provenance

        files = sorted(path.glob("*.png"))
        if not files:
            raise ValueError(f"{path} is not a data set: it holds neither manifest.json, "
                             "metadata.jsonl nor PNGs of `pictor generate`")
        self.captions = [read_provenance(f).prompt for f in files]
        self.extras = [{} for _ in files]
        self.images = to_uint8(torch.stack([load_image(f, image_size) for f in files]))


def emoji_hard_negatives(captions: Sequence[str], extras: Sequence[dict],
                         pool: Sequence[tuple[str, dict]]) -> dict[str, list[list[str]]]:
    """Per record: "style" negatives (its name in each other style) and "tone" negatives (the
    captions in `pool` of the same base emoji and style with another code); "all" is both."""
    from pictor.data.emoji import caption
    from pictor.data.emoji_packages import STYLES

    vendor_of = {s.style_id: vendor for vendor, s in STYLES.items()}
    by_identity: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for text, extra in pool:
        if {"emoji", "style", "code"} <= extra.keys():
            by_identity[extra["emoji"], extra["style"]].add((extra["code"], text))
    out: dict[str, list[list[str]]] = {"style": [], "tone": [], "all": []}
    for text, extra in zip(captions, extras, strict=True):
        style, tone = [], []
        if {"emoji", "style", "code", "name"} <= extra.keys() and extra["style"] in vendor_of:
            style = [caption(extra["name"], v) for s, v in vendor_of.items()
                     if s != extra["style"]]
            tone = sorted({t for code, t in by_identity[extra["emoji"], extra["style"]]
                           if code != extra["code"] and t != text})
        out["style"].append(style)
        out["tone"].append(tone)
        out["all"].append(style + tone)
    return out


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def _alignment(images: np.ndarray, captions: list[str], index_of: dict[str, int],
               caption_emb: np.ndarray, negatives: dict[str, list[list[str]]],
               text_of: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """CLIPScore, R-precision and hard-negative accuracies of image rows and their captions."""
    true_emb = caption_emb[[index_of[c] for c in captions]]
    # R-precision's 99 others are drawn from every distinct caption of the real set, whatever
    # the group (AttnGAN draws from the whole test set)
    out: dict[str, Any] = {
        "num_images": len(captions), "clip_score": clip_score(images, true_emb),
        "r_precision": r_precision(images, np.array([index_of[c] for c in captions]),
                                   caption_emb, seed=seed).to_dict()}
    for kind, lists in negatives.items():
        acc = hard_negative_accuracy(
            images, true_emb, [np.stack([text_of[c] for c in n]) if n else [] for n in lists])
        out[f"hard_negative_{kind}"] = None if acc is None else acc.to_dict()
    return out


def _pick(lists: dict[str, list[list[str]]], rows: np.ndarray) -> dict[str, list[list[str]]]:
    return {k: [v[i] for i in rows] for k, v in lists.items()}


def evaluate_clip_sets(judge: ClipJudge, real: str | Path, *, generated: str | Path | None = None,
                       train: str | Path | None = None, group_by: str = "split",
                       seed: int = 0) -> dict[str, Any]:
    """The figures of the module docstring, per group and for all images (a JSON-ready dict)."""
    size = judge.config.image_size
    real_set = _Set(real, size, "real")
    gen_set = _Set(generated, size, "generated") if generated is not None else None
    train_set = _Set(train, size, "training") if train is not None else None
    extras_of = dict(zip(real_set.captions, real_set.extras, strict=True))
    if gen_set is not None:
        unknown = sorted(set(gen_set.captions) - extras_of.keys())
        if unknown:
            raise ValueError(f"{len(unknown)} generated caption(s) are not captions of the real "
                             f"set {real}, e.g. {unknown[0]!r}; generate from its captions")
    pool = list(zip(real_set.captions, real_set.extras, strict=True))
    if train_set is not None:
        pool += list(zip(train_set.captions, train_set.extras, strict=True))
    negatives = {"real": emoji_hard_negatives(real_set.captions, real_set.extras, pool)}
    if gen_set is not None:
        negatives["generated"] = emoji_hard_negatives(
            gen_set.captions, [extras_of[c] for c in gen_set.captions], pool)
    unique, _ = distinct(real_set.captions)
    index_of = {c: i for i, c in enumerate(unique)}
    texts = list(dict.fromkeys(unique + [c for lists in negatives.values()
                                         for row in lists["all"] for c in row]))
    text_of = dict(zip(texts, judge.embed_texts(texts), strict=True))
    caption_emb = np.stack([text_of[c] for c in unique])                  # (U, E)
    sets = {"real": real_set} | ({"generated": gen_set} if gen_set is not None else {})
    emb = {name: judge.embed_images(s.images) for name, s in sets.items()}  # (N, E) each
    train_emb = judge.embed_images(train_set.images) if train_set is not None else None
    mean, std = (judge.model.feature_mean.double().numpy(),
                 judge.model.feature_std.double().numpy())

    # a real image's group is its own record's field; a generated image's that of its caption
    labels = {"real": [str(e.get(group_by, "all")) for e in real_set.extras]}
    if gen_set is not None:
        labels["generated"] = [str(extras_of[c].get(group_by, "all")) for c in gen_set.captions]
    groups = ["all"] + sorted(set(labels["real"]) - {"all"})
    report: dict[str, Any] = {
        "judge": {"path": str(judge.path), "sha256": judge.sha256},
        "sets": {"real": str(real), "generated": None if generated is None else str(generated),
                 "train": None if train is None else str(train)},
        "group_by": group_by, "seed": seed, "groups": {}}
    for group in groups:
        entry: dict[str, Any] = {}
        for name, s in sets.items():
            rows = np.array([i for i, g in enumerate(labels[name]) if group in ("all", g)],
                            dtype=np.int64)
            if len(rows) == 0:
                continue
            figures = _alignment(emb[name][rows], [s.captions[i] for i in rows], index_of,
                                 caption_emb, _pick(negatives[name], rows), text_of, seed)
            if train_set is not None and train_emb is not None:
                figures["memorisation"] = memorisation(emb[name][rows], s.images[rows].numpy(),
                                                       train_emb, train_set.images.numpy())
            entry[name] = figures
        real_rows = [i for i, g in enumerate(labels["real"]) if group in ("all", g)]
        entry["distribution"] = _distribution(real_set, gen_set, emb, mean, std, real_rows, seed)
        report["groups"][group] = entry
    return report


def _first_index(captions: Sequence[str]) -> dict[str, int]:
    """Each caption's first row: the generated image that stands for it."""
    first: dict[str, int] = {}
    for j, c in enumerate(captions):
        first.setdefault(c, j)
    return first


def _distribution(real_set: _Set, gen_set: _Set | None, emb: dict[str, np.ndarray],
                  mean: np.ndarray, std: np.ndarray, rows: list[int],
                  seed: int) -> dict[str, Any] | None:
    """FD and KID on standardised features of the real images `rows` (a group): real half A
    against real half B (the floor), and the generated images of A's captions against B. Real
    images of a caption that has no generated image are left out of both. None for groups
    under 4 images."""
    first_generated = _first_index(gen_set.captions) if gen_set is not None else {}
    if gen_set is not None:
        rows = [i for i in rows if real_set.captions[i] in first_generated]
    if len(rows) < 4:
        return None
    half_a, half_b = split_halves(len(rows), seed)
    a, b = np.array(rows)[half_a], np.array(rows)[half_b]
    real_features = (emb["real"] - mean) / std
    out: dict[str, Any] = {"num_images_per_half": len(a),
                           "real_vs_real": fd_kid(real_features[a], real_features[b], seed)}
    if gen_set is not None:
        paired = [first_generated[real_set.captions[i]] for i in a]
        out["generated_vs_real"] = fd_kid((emb["generated"][paired] - mean) / std,
                                          real_features[b], seed)
    return out


def report_markdown(report: dict[str, Any]) -> str:
    """A table per group: each figure of the real images (the ceiling) beside the generated."""
    lines = [f"# CLIP judge report\n\njudge `{report['judge']['path']}` "
             f"(sha256 {report['judge']['sha256'][:12]}), real `{report['sets']['real']}`, "
             f"generated `{report['sets']['generated']}`, training `{report['sets']['train']}`"]
    for group, entry in report["groups"].items():
        lines += ["", f"## {group}", "", "Shares with their 95% Wilson interval in brackets and "
                  "chance in parentheses.", "",
                  "| figure | real held-out (ceiling) | generated |",
                  "|---|---|---|"]
        rows = [("images", lambda f: f["num_images"]),
                ("CLIPScore", lambda f: f"{f['clip_score']:.2f}"),
                ("R-precision (chance)", lambda f: _rank(f["r_precision"]))]
        rows += [(f"hard negatives: {k}", lambda f, k=k: _rank(f[f"hard_negative_{k}"]))
                 for k in ("style", "tone", "all")]
        rows += [("near-copies of training images", lambda f: (
            f"{f['memorisation']['near_copy_share']:.3f}" if "memorisation" in f else "-"))]
        for label, get in rows:
            cells = [str(get(entry[n])) if n in entry else "-" for n in ("real", "generated")]
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
        dist = entry["distribution"]
        if dist is not None:
            gen = dist.get("generated_vs_real")
            floor = dist["real_vs_real"]
            for key in ("fd", "kid"):
                lines.append(f"| {key.upper()} vs real half ({dist['num_images_per_half']} each)"
                             f" | {floor[key]:.4f} (floor) | "
                             f"{'-' if gen is None else f'{gen[key]:.4f}'} |")
    return "\n".join(lines) + "\n"


def _rank(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "n/a"
    low, high = figure["interval_95"]
    return (f"{figure['value']:.3f} [{low:.2f}, {high:.2f}] ({figure['chance']:.3f}, "
            f"n={figure['num_images']})")


# ---------------------------------------------------------------------------------------------
# Real beside generated, for a README
# ---------------------------------------------------------------------------------------------
GRID_LABEL_HEIGHT = 24


def comparison_grid(real: str | Path, generated: str | Path, *, per_group: int = 4,
                    group_by: str = "split", image_size: int = 64, scale: int = 2,
                    seed: int = 0) -> tuple[Image.Image, list[dict[str, Any]]]:
    """A grid of held-out captions: per group of the real set, `per_group` captions drawn with
    `seed` among those that have a generated image; each cell is the real image (left) beside
    the first generated image of its caption (right), at `scale` times `image_size`, with the
    caption under it. Returns the grid and its cells (caption, group, row, column), in order."""
    from PIL import ImageDraw

    real_set = _Set(real, image_size, "real")
    gen_set = _Set(generated, image_size, "generated")
    first_generated = _first_index(gen_set.captions)
    by_group: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for i, (c, e) in enumerate(zip(real_set.captions, real_set.extras, strict=True)):
        if c in first_generated and c not in seen:
            seen.add(c)
            by_group[str(e.get(group_by, "all"))].append(i)
    if not by_group:
        raise ValueError(f"no caption of {generated} is a caption of {real}")
    rng = np.random.default_rng(seed)
    groups = sorted(by_group)
    picks = {g: sorted(rng.choice(by_group[g], size=min(per_group, len(by_group[g])),
                                  replace=False).tolist()) for g in groups}
    side = image_size * scale
    cell_w, cell_h = 2 * side + 4, side + GRID_LABEL_HEIGHT
    cols = max(len(p) for p in picks.values())
    grid = Image.new("RGB", (cols * (cell_w + 8), len(groups) * (cell_h + 8) + 8), "white")
    draw = ImageDraw.Draw(grid)
    cells = []
    for r, g in enumerate(groups):
        for c, i in enumerate(picks[g]):
            caption = real_set.captions[i]
            x, y = c * (cell_w + 8), 8 + r * (cell_h + 8)
            for k, image in enumerate((real_set.images[i],
                                       gen_set.images[first_generated[caption]])):
                tile = Image.fromarray(image.permute(1, 2, 0).numpy())
                grid.paste(tile.resize((side, side), Image.NEAREST), (x + k * (side + 4), y))
            text = caption if len(caption) <= 40 else caption[:39] + "…"
            draw.text((x, y + side + 2), text, fill="black")
            draw.text((x, y + side + 12), f"{g}: real | generated", fill="gray")
            cells.append({"caption": caption, "group": g, "row": r, "column": c})
    return grid, cells
