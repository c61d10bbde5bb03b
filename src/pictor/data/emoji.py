"""`pictor data import emoji`: emoji packages -> a captioned imagefolder with a held-out split.

Output (`out/`):

    train/metadata.jsonl    the training split: `pictor data prepare out/train -o ...`
    train/<style>/<code>.png
    heldout/metadata.jsonl  every held-out split (pictor.data.emoji_split), never trained on
    heldout/<style>/<code>.png
    ATTRIBUTION             credits and licences the images require (also in train/, heldout/)
    rejects.jsonl           every entry not imported, with its reason (records.REASONS)
    import_config.json      sources (package, sha256), settings, counts per split and style

The two splits are separate imagefolders, so preparing and training on `train/` cannot pick
up a held-out image by forgetting a filter; each row still says its `split`.
A metadata row is {file_name, text, split, style, name, emoji (the identity's base code),
code, skin_tones, category, subcategory, license, package} in the format `pictor data
synth` writes and `pictor data prepare` reads (extra fields go into each shard record's extra).

Captions: "<name>, <style> style", e.g. "thumbs up: dark skin tone, Twemoji style". The name
of a code is its CLDR English name where a source gives one (OpenMoji's `annotation`),
else the emoji-datasource Unicode name in lower case ("thumbs up sign"), with the CLDR skin
tones appended ("<base name>: medium skin tone"; after a comma when the base name already has
a colon, as CLDR writes "kiss: woman, man, light skin tone"). One name per code serves every
style, so captions of one emoji differ only in their style words.

Images: 64 x 64 pixels (the shapes world's canvas and `pictor data prepare`'s default size),
RGB, transparency composited over white (255, 255, 255) unless `background` says otherwise.
emoji-datasource PNGs are 64 x 64 already; OpenMoji SVGs are rasterised at 64 x 64 by CairoSVG
in its safe mode (no entities, no external files or URLs); other sizes are resized bicubically
(pictor.data.prepare.fit_square). Each image is decoded by pictor.data.prepare.decode_image under
its limits, in a child process with a time and memory limit (pictor.data.isolation): a
missing, broken or hostile image is a rejected record, never the end of the job.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pictor.data.emoji_packages import (
    DATASOURCE_VENDORS,
    SKIN_TONES,
    STYLES,
    PackageFiles,
    file_sha256,
    normalize_hexcode,
    open_package,
    package_id,
    read_json,
    tones_of,
    valid_hexcode,
    valid_image_name,
)
from pictor.data.emoji_split import SPLITS, Drawing, SplitShares, assign_splits
from pictor.data.files import UnsafeFile
from pictor.data.isolation import run_isolated
from pictor.data.prepare import (
    PrepareOptions,
    RecordError,
    check_caption,
    decode_image,
    encode_png,
)

IMAGE_SIZE_PX = 64
DEFAULT_BACKGROUND = (255, 255, 255)
MAX_IMAGE_BYTES = 4 * 2**20  # the largest emoji image read (the packages' are < 40 KB)
MAX_IMAGE_PIXELS = 2048 * 2048
_TIMEOUT_SECONDS = 30.0
_MEMORY_BYTES = 1 << 30
_CHUNK = 256  # images per isolated child run (and progress step)


@dataclass
class Entry:
    """One drawing a package offers, before its image is read."""

    vendor: str  # key of STYLES
    package: str  # name@version
    code: str  # normalized hexcode of this drawing ("1F44B-1F3FB")
    identity: str  # normalized base code ("1F44B")
    name: str  # this package's name for it
    name_rank: int  # 0: a CLDR name (OpenMoji), 1: a Unicode name (emoji-datasource)
    category: str  # Unicode emoji group, as OpenMoji's slug ("people-body")
    subcategory: str  # Unicode emoji subgroup, as a slug ("hand-fingers-open", "sky-weather")
    image_path: str  # file inside the package
    tones: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{STYLES[self.vendor].style_id}/{self.code.lower()}.png"


def slug(text: str) -> str:
    """'People & Body' -> 'people-body', 'sky & weather' -> 'sky-weather': OpenMoji's form of
    the Unicode group names that emoji-datasource writes out, so both styles agree."""
    return "-".join(text.lower().replace("&", " ").split())


def reject(key: str, source: str, reason: str, detail: str) -> dict[str, Any]:
    return {"key": key, "source": source, "status": "skipped", "reason": reason,
            "detail": detail[:500]}


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def datasource_entries(files: PackageFiles, package: str) -> tuple[list[Entry], list[dict]]:
    """Entries of an emoji-datasource package (every open vendor whose img/<v>/64 it has)."""
    data = read_json(files, "emoji.json")
    if not isinstance(data, list):
        raise ValueError(f"{files.source}: emoji.json is not a list of emoji")
    vendors = [v for v in DATASOURCE_VENDORS
               if any(n.startswith(f"img/{v}/64/") for n in files.names)]
    if not vendors:
        raise ValueError(f"{files.source}: no img/<vendor>/64/ images of "
                         f"{' or '.join(DATASOURCE_VENDORS)}")
    entries, rejects = [], []
    for index, item in enumerate(data):
        where = f"{files.source}#emoji.json[{index}]"
        base = item.get("unified") if isinstance(item, dict) else None
        if not valid_hexcode(base) or not valid_image_name(item.get("image")) \
                or not _text(item.get("name")):
            rejects.append(reject(where, files.source, "bad_metadata",
                                  "no valid unified, image or name"))
            continue
        identity = normalize_hexcode(base)
        variants = [(base, item["image"])]
        skins = item.get("skin_variations")
        for tone_key, skin in (skins.items() if isinstance(skins, dict) else ()):
            if isinstance(skin, dict) and valid_hexcode(skin.get("unified")) \
                    and valid_image_name(skin.get("image")):
                variants.append((skin["unified"], skin["image"]))
            else:
                rejects.append(reject(f"{where}.skin_variations.{tone_key}"[:300],
                                      files.source, "bad_metadata", "no valid unified or image"))
        for vendor in vendors:
            for unified, image in variants:
                code = normalize_hexcode(unified)
                entries.append(Entry(
                    vendor, package, code, identity, item["name"].strip().lower(), 1,
                    slug(_text(item.get("category"))), slug(_text(item.get("subcategory"))),
                    f"img/{vendor}/64/{image}", tones_of(code) if code != identity else ()))
    return entries, rejects


def openmoji_entries(files: PackageFiles, package: str) -> tuple[list[Entry], list[dict]]:
    """Entries of an openmoji package: color/72x72/<hexcode>.png if present, else the SVG."""
    data = read_json(files, "data/openmoji.json")
    if not isinstance(data, list):
        raise ValueError(f"{files.source}: data/openmoji.json is not a list of emoji")
    entries, rejects = [], []
    for index, item in enumerate(data):
        where = f"{files.source}#data/openmoji.json[{index}]"
        hexcode = item.get("hexcode") if isinstance(item, dict) else None
        if not valid_hexcode(hexcode) or not _text(item.get("annotation")):
            rejects.append(reject(where, files.source, "bad_metadata",
                                  "no valid hexcode or annotation"))
            continue
        code = normalize_hexcode(hexcode)
        base = item.get("skintone_base_hexcode")
        identity = normalize_hexcode(base) if valid_hexcode(base) else code
        png = f"color/72x72/{hexcode}.png"
        image = png if png in files.names else f"color/svg/{hexcode}.svg"
        entries.append(Entry(
            "openmoji", package, code, identity, item["annotation"].strip(), 0,
            slug(_text(item.get("group"))), slug(_text(item.get("subgroups"))), image,
            tones_of(code) if code != identity else ()))
    return entries, rejects


def package_entries(files: PackageFiles, package: str) -> tuple[list[Entry], list[dict]]:
    """The entries of any supported package (`package`: its name@version), by its files."""
    if "emoji.json" in files.names:
        return datasource_entries(files, package)
    if "data/openmoji.json" in files.names:
        return openmoji_entries(files, package)
    raise ValueError(f"{files.source}: neither an emoji-datasource package (emoji.json) nor "
                     "openmoji (data/openmoji.json)")


# ---------------------------------------------------------------------------------------------
# Names and captions
# ---------------------------------------------------------------------------------------------


def toned_name(base_name: str, tones: tuple[str, ...]) -> str:
    """CLDR's form: 'thumbs up: dark skin tone', 'kiss: woman, man, light skin tone' (a tone
    shared by both people of a couple is named once, as CLDR does)."""
    if not tones:
        return base_name
    joiner = ", " if ":" in base_name else ": "
    return base_name + joiner + ", ".join(SKIN_TONES[t] for t in dict.fromkeys(tones))


def resolve_names(entries: list[Entry]) -> dict[str, str]:
    """code -> the one name every style's caption uses (module docstring)."""
    best: dict[str, tuple[int, str]] = {}
    for e in entries:
        if e.code not in best or e.name_rank < best[e.code][0]:
            best[e.code] = (e.name_rank, e.name)
    names = {code: name for code, (_, name) in best.items()}
    for e in entries:  # a toned drawing named only by its base's Unicode name
        if e.tones and best[e.code][0] == 1:
            base = names.get(e.identity, e.name)
            names[e.code] = toned_name(base, e.tones)
    return names


def caption(name: str, vendor: str) -> str:
    return f"{name}, {STYLES[vendor].caption_name} style"


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def rasterize_svg(data: bytes, size: int) -> bytes:
    """SVG bytes -> RGBA PNG bytes of size x size, by CairoSVG in its safe mode."""
    try:
        import cairosvg
    except ImportError:
        raise RecordError("format_not_allowed", "SVG needs CairoSVG: pip install "
                          "'pictor[emoji]' (or cairosvg), or use 72x72 PNGs") from None
    try:
        return cairosvg.svg2png(bytestring=data, output_width=size, output_height=size,
                                unsafe=False)
    except MemoryError:
        raise RecordError("out_of_memory", "rendering the SVG") from None
    except Exception as error:  # any parse or render failure is this file's
        raise RecordError("corrupt_image", f"SVG: {type(error).__name__}: {error}") from None


def render(item: dict[str, Any], options: PrepareOptions) -> dict[str, Any]:
    """{key, data, svg} -> {key, png, reason, detail}: the 64 x 64 RGB PNG or why not."""
    try:
        data = item["data"]
        if item["svg"]:
            data = rasterize_svg(data, options.image_size)
        png = encode_png(decode_image(data, options).image, options.png_compress_level)
        return {"key": item["key"], "png": png, "reason": None, "detail": None}
    except RecordError as error:
        return {"key": item["key"], "png": None, "reason": error.reason, "detail": error.detail}


def _failed(item: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    return {"key": item["key"], "png": None, "reason": reason, "detail": detail}


def render_all(items: list[dict[str, Any]], options: PrepareOptions,
               progress: bool) -> dict[str, dict[str, Any]]:
    from tqdm import tqdm

    out: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(items), unit="img", desc="emoji", disable=not progress) as bar:
        for start in range(0, len(items), _CHUNK):
            chunk = items[start:start + _CHUNK]
            for row in run_isolated(chunk, lambda item: render(item, options), _failed,
                                    timeout_seconds=_TIMEOUT_SECONDS,
                                    memory_bytes=_MEMORY_BYTES):
                out[row["key"]] = row
            bar.update(len(chunk))
    return out


# ---------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    sources: list[dict[str, Any]]  # {source, package, sha256 (tarballs), styles}
    image_size: int
    background: list[int]
    seed: int
    split_shares: dict[str, float]
    counts: dict[str, dict[str, int]]  # split -> style -> records
    identities: dict[str, int]  # split -> distinct identities
    rejected: dict[str, int]  # reason -> entries
    seconds: float = 0.0


def attribution_text(vendors: list[str], sources: list[dict[str, Any]]) -> str:
    lines = ["Images in this data set were made by others and are used under their licences.",
             "Each record's `license` field (metadata.jsonl) names the licence of its image.",
             "Changes to the originals: transparency composited over a background colour,",
             "OpenMoji's SVGs rasterised, images of another size resized, all to 64 x 64 px.",
             ""]
    for vendor in vendors:
        style = STYLES[vendor]
        lines.append(f"- {style.caption_name} ({style.license}): {style.credit}")
    lines += ["", "Packages:"] + [f"- {s['package']}" for s in sources]
    lines += ["", "OpenMoji's licence is ShareAlike: adapted material (e.g. changed OpenMoji "
              "images) is shared under CC BY-SA 4.0 with this credit.", ""]
    return "\n".join(lines)


def drop_seen_pixels(good: list[Entry], splits: list[str], rendered: dict[str, dict],
                     rejects: list[dict[str, Any]]) -> tuple[list[Entry], list[str]]:
    """Held-out drawings whose pixels a training drawing has too (OpenMoji draws "person
    walking" and "man walking" alike; Noto's Ceuta & Melilla flag is Spain's) are rejected, so
    no held-out image is ever trained on under another caption. Dropping held-out records
    keeps every promise of pictor.data.emoji_split (they are about training records)."""
    trained = {rendered[e.key]["png"]: e.key
               for e, s in zip(good, splits, strict=True) if s == "train"}
    kept_entries, kept_splits = [], []
    for e, s in zip(good, splits, strict=True):
        twin = trained.get(rendered[e.key]["png"]) if s != "train" else None
        if twin is None:
            kept_entries.append(e)
            kept_splits.append(s)
        else:
            rejects.append(reject(e.key, e.key, "duplicate", f"{s} image with the same "
                                  f"pixels as the training image {twin}"))
    return kept_entries, kept_splits


def _prepare_out(out: Path, overwrite: bool) -> None:
    for name in ("train", "heldout"):
        if (out / name / "metadata.jsonl").exists():
            if not overwrite:
                raise ValueError(f"{out / name} holds an imported data set: choose a new "
                                 "folder or pass overwrite=True (CLI --overwrite)")
            shutil.rmtree(out / name)


def _read_packages(sources: list[str], rejects: list[dict[str, Any]]
                   ) -> tuple[list[tuple[PackageFiles, list[Entry]]], list[dict[str, Any]]]:
    """(each source's files and entries, what import_config.json says of each source)."""
    packages, info = [], []
    for source in sources:
        files = open_package(source)
        package = package_id(files)
        found, bad = package_entries(files, package)
        rejects += bad
        packages.append((files, found))
        info.append({"source": str(source), "package": package,
                     "sha256": file_sha256(source) if Path(source).is_file() else None,
                     "styles": sorted({STYLES[e.vendor].style_id for e in found})})
    return packages, info


def _read_images(packages: list[tuple[PackageFiles, list[Entry]]],
                 rejects: list[dict[str, Any]]) -> tuple[dict[str, Entry], list[dict[str, Any]]]:
    """(key -> entry, the render items {key, data, svg}) of every entry whose file was read."""
    kept: dict[str, Entry] = {}
    items = []
    for files, found in packages:
        unique = []
        for e in found:
            if e.key in kept:
                rejects.append(reject(e.key, files.source, "duplicate",
                                      f"{e.code} again (from {e.package})"))
            else:
                kept[e.key] = e
                unique.append(e)
        data = files.read_many({e.image_path for e in unique}, MAX_IMAGE_BYTES)
        for e in unique:
            blob = data[e.image_path]
            if isinstance(blob, UnsafeFile):
                reason = "missing_image" if blob.reason == "missing_file" else blob.reason
                rejects.append(reject(e.key, f"{files.source}#{e.image_path}", reason,
                                      blob.detail))
            else:
                items.append({"key": e.key, "data": blob,
                              "svg": e.image_path.endswith(".svg")})
    return kept, items


def _write_folders(out: Path, good: list[Entry], splits: list[str], pngs: dict[str, bytes],
                   captions: dict[str, str], names: dict[str, str], attribution: str) -> None:
    """train/ and heldout/: PNGs, metadata.jsonl, ATTRIBUTION (module docstring)."""
    metadata = {}
    try:
        for folder in ("train", "heldout"):
            (out / folder).mkdir(parents=True, exist_ok=True)
            (out / folder / "ATTRIBUTION").write_text(attribution, encoding="utf-8")
            metadata[folder] = open(out / folder / "metadata.jsonl", "w", encoding="utf-8")
        for e, split in zip(good, splits, strict=True):
            folder = "train" if split == "train" else "heldout"
            path = out / folder / e.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pngs[e.key])
            style = STYLES[e.vendor]
            row = {"file_name": e.key, "text": captions[e.key], "split": split,
                   "style": style.style_id, "name": names[e.code], "emoji": e.identity,
                   "code": e.code, "skin_tones": [SKIN_TONES[t] for t in e.tones],
                   "category": e.category, "subcategory": e.subcategory,
                   "license": style.license, "package": e.package}
            metadata[folder].write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        for f in metadata.values():
            f.close()
    (out / "ATTRIBUTION").write_text(attribution, encoding="utf-8")


def import_emoji(sources: list[str], out_dir: str, *, seed: int = 0,
                 background: tuple[int, int, int] = DEFAULT_BACKGROUND,
                 shares: SplitShares = SplitShares(), overwrite: bool = False,
                 progress: bool = True) -> ImportSummary:
    """Import emoji packages (tarballs or folders) into `out_dir` (module docstring); `seed`
    and `shares` decide the held-out split (pictor.data.emoji_split)."""
    start = time.perf_counter()
    if not sources:
        raise ValueError("give at least one package: a .tgz tarball or an unpacked folder")
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    options = PrepareOptions(image_size=IMAGE_SIZE_PX, background=background,
                             formats=("PNG",), max_pixels=MAX_IMAGE_PIXELS,
                             max_file_bytes=MAX_IMAGE_BYTES)
    rejects: list[dict[str, Any]] = []
    packages, source_info = _read_packages(sources, rejects)
    kept, items = _read_images(packages, rejects)
    rendered = render_all(items, options, progress)
    names = resolve_names([e for _, found in packages for e in found])
    good, captions = [], {}
    for item in items:
        row, e = rendered[item["key"]], kept[item["key"]]
        try:
            if row["png"] is None:
                raise RecordError(row["reason"], row["detail"] or "")
            captions[e.key], _ = check_caption(caption(names[e.code], e.vendor), None, options)
            good.append(e)
        except RecordError as error:
            rejects.append(reject(e.key, f"{e.package}#{e.image_path}", error.reason,
                                  error.detail))
    good.sort(key=lambda e: e.key)
    splits = assign_splits([Drawing(e.identity, e.tones, STYLES[e.vendor].style_id)
                            for e in good], seed, shares)
    good, splits = drop_seen_pixels(good, splits, rendered, rejects)
    vendors = sorted({e.vendor for e in good}, key=list(STYLES).index)
    _write_folders(out, good, splits, {k: r["png"] for k, r in rendered.items()}, captions,
                   names, attribution_text(vendors, source_info))
    rejects.sort(key=lambda r: r["key"])
    with open(out / "rejects.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
    by_split = [(s, [e for e, sp in zip(good, splits, strict=True) if sp == s]) for s in SPLITS]
    summary = ImportSummary(
        sources=source_info, image_size=IMAGE_SIZE_PX, background=list(background), seed=seed,
        split_shares=asdict(shares),
        counts={s: dict(sorted(Counter(STYLES[e.vendor].style_id for e in es).items()))
                for s, es in by_split},
        identities={s: len({e.identity for e in es}) for s, es in by_split},
        rejected=dict(sorted(Counter(r["reason"] for r in rejects).items())),
        seconds=round(time.perf_counter() - start, 1))
    (out / "import_config.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary
