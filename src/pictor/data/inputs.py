"""Input layouts of `pictor data prepare` and the raw records they hold.

Four layouts are recognised (`detect_input`):

| layout      | what INPUT is                                          | caption from           |
|-------------|--------------------------------------------------------|------------------------|
| imagefolder | folder with `metadata.jsonl` or `metadata.csv`          | the row's `text`       |
|             | (Hugging Face imagefolder: `file_name`, `text`)         | (or `caption`)         |
| pairs       | folder of images, each with a same-name `.txt` file     | `a/b.jpg` <- `a/b.txt` |
| manifest    | a `.parquet`, `.jsonl` or `.csv` file (or a folder of    | `text` or `caption`    |
|             | `.parquet` files) with a `path` or `file_name` column   |                        |
| webdataset  | a `.tar` file or a folder of them (WebDataset shards)    | the sample's `.txt`,   |
|             |                                                         | or `.json` caption/text|

Every record gets a `key`, unique and sortable: its path relative to the input root (a
manifest's path as written; `<tar path>/<sample key>` inside tars). Shards are sorted by key
and de-duplication keeps the smallest key, so the output does not depend on the engine or the
number of workers. Files and folders whose names start with `.` or `_` are ignored, as Spark
and Hadoop do. Nothing else is dropped silently: an image without a caption, a caption without
an image and a file that is neither become skipped records with their reason.

The functions here turn listings into raw records (pictor.data.records.RAW_SCHEMA dicts); both
engines call them (Spark on the driver or inside mapInArrow), so they agree. Paths are local or
mounted filesystem paths (NFS, /dbfs, /Volumes): executors read the bytes themselves.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pictor.data.prepare import extra_json
from pictor.data.records import empty_raw

LAYOUTS = ("imagefolder", "pairs", "manifest", "webdataset")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_EXTENSION = "txt"
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
PATH_COLUMNS = ("path", "file_name")  # manifest column naming each image, first found wins
TEXT_COLUMNS = ("text", "caption")    # column holding the caption, first found wins
MANIFEST_SUFFIXES = (".parquet", ".jsonl", ".csv")
TAR_SUFFIX = ".tar"


@dataclass(frozen=True)
class InputSpec:
    layout: str               # one of LAYOUTS
    root: str                 # absolute folder the keys are relative to
    files: tuple[str, ...] = ()  # metadata file, manifest files or tar files (absolute)


def is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def extension(key: str) -> str:
    """Lower-case extension without the dot ("" when none): a/b.JPG -> jpg."""
    base = posixpath.basename(key)
    return base.rsplit(".", 1)[1].lower() if "." in base[1:] else ""


def stem(key: str) -> str:
    """The key without its extension: a/b.jpg -> a/b (the pairing rule of the pairs layout)."""
    ext = extension(key)
    return key[: -len(ext) - 1] if ext else key


def list_files(root: str | Path) -> list[str]:
    """Keys (posix paths relative to root) of every non-hidden file under root, sorted."""
    root = Path(root)
    keys = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        rel = Path(folder).relative_to(root).as_posix()
        for name in files:
            if not is_hidden(name):
                keys.append(name if rel == "." else f"{rel}/{name}")
    return sorted(keys)


def detect_input(path: str | Path) -> InputSpec:
    """The layout of INPUT (see the module docstring); ValueError when it is none of them."""
    p = Path(path).expanduser().absolute()
    if p.is_file():
        if p.suffix.lower() in MANIFEST_SUFFIXES:
            return InputSpec("manifest", str(p.parent), (str(p),))
        if p.suffix.lower() == TAR_SUFFIX:
            return InputSpec("webdataset", str(p.parent), (str(p),))
        raise ValueError(f"{p}: a file INPUT must be a manifest ({', '.join(MANIFEST_SUFFIXES)})"
                         f" or a WebDataset {TAR_SUFFIX} shard")
    if not p.is_dir():
        raise ValueError(f"{p} does not exist")
    for name in METADATA_FILES:
        if (p / name).is_file():
            return InputSpec("imagefolder", str(p), (str(p / name),))
    names = [n for n in sorted(os.listdir(p)) if not is_hidden(n)]
    tars = [n for n in names if n.lower().endswith(TAR_SUFFIX) and (p / n).is_file()]
    if tars:
        return InputSpec("webdataset", str(p), tuple(str(p / n) for n in tars))
    parquets = [n for n in names if n.lower().endswith(".parquet")]
    if parquets and len(parquets) == len(names):
        return InputSpec("manifest", str(p), tuple(str(p / n) for n in parquets))
    if not names:
        raise ValueError(f"{p} is empty")
    return InputSpec("pairs", str(p))


def _join(root: str, key: str) -> str:
    return key if posixpath.isabs(key) else posixpath.join(root, key)


# ----------------------------------------------------------------------------------------------
# pairs: image + same-name .txt
# ----------------------------------------------------------------------------------------------


def pair_group(keys: list[str], root: str) -> list[dict[str, Any]]:
    """Raw records of the files sharing one stem (e.g. a/b.jpg, a/b.txt)."""
    keys = sorted(keys)
    images = [k for k in keys if extension(k) in IMAGE_EXTENSIONS]
    captions = [k for k in keys if extension(k) == CAPTION_EXTENSION]
    others = [k for k in keys if k not in images and k not in captions]
    out = [empty_raw(key=k, source=_join(root, k), error="unsupported_file",
                     error_detail=f"extension {extension(k) or '(none)'!r} is neither an image "
                     f"({', '.join(IMAGE_EXTENSIONS)}) nor .{CAPTION_EXTENSION}")
           for k in others]
    for k in images:
        if captions:
            out.append(empty_raw(key=k, source=_join(root, k),
                                 caption_source=_join(root, captions[0])))
        else:
            out.append(empty_raw(key=k, source=_join(root, k), error="missing_caption",
                                 error_detail=f"no {stem(k)}.{CAPTION_EXTENSION}"))
    if captions and not images:
        out.append(empty_raw(key=captions[0], source=_join(root, captions[0]),
                             error="missing_image", error_detail=f"no image named "
                             f"{stem(captions[0])}.<{'|'.join(IMAGE_EXTENSIONS)}>"))
    return out


def pair_records(spec: InputSpec) -> list[dict[str, Any]]:
    groups: dict[str, list[str]] = {}
    for key in list_files(spec.root):
        groups.setdefault(stem(key), []).append(key)
    return [r for keys in groups.values() for r in pair_group(keys, spec.root)]


# ----------------------------------------------------------------------------------------------
# imagefolder and manifests: rows naming files
# ----------------------------------------------------------------------------------------------


def _first_present(row: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in row:
            return name
    return None


def check_columns(columns: list[str], where: str) -> None:
    """ValueError unless the columns name the images (path/file_name)."""
    if not any(c in columns for c in PATH_COLUMNS):
        raise ValueError(f"{where}: needs a column naming the images ({' or '.join(PATH_COLUMNS)})"
                         f"; found {', '.join(columns) or 'none'}")


def row_to_raw(row: dict[str, Any], root: str, where: str) -> dict[str, Any]:
    """One metadata/manifest row -> a raw record (the file is read later, by the transform)."""
    path_col = _first_present(row, PATH_COLUMNS)
    text_col = _first_present(row, TEXT_COLUMNS)
    name = row.get(path_col) if path_col else None
    used = {path_col, text_col}
    extra = extra_json({k: v for k, v in row.items() if k not in used and v is not None})
    if not isinstance(name, str) or not name.strip():
        return empty_raw(key=f"{where}#{name!r}", source=where, extra=extra, error="bad_metadata",
                         error_detail=f"row without a usable {' or '.join(PATH_COLUMNS)}")
    key = posixpath.normpath(name.strip())
    text = row.get(text_col) if text_col else None
    raw = empty_raw(key=key, source=_join(root, key), extra=extra,
                    caption=None if text is None else str(text))
    if text is None:
        raw.update(error="missing_caption", error_detail=f"no {' or '.join(TEXT_COLUMNS)} in "
                   f"{posixpath.basename(where)}")
    return raw


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a JSONL, CSV or Parquet file as dicts; ValueError naming a malformed line."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    data = Path(path).read_bytes()
    text = data.decode("utf-8-sig", errors="replace")
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_no}: not a JSON object ({error})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def manifest_records(spec: InputSpec) -> list[dict[str, Any]]:
    out = []
    for path in spec.files:
        rows = read_rows(path)
        if rows:
            check_columns(list(rows[0]), path)
        out.extend(row_to_raw(row, spec.root, posixpath.basename(path)) for row in rows)
    return out


def unlisted_image_raw(key: str, root: str, metadata_name: str) -> dict[str, Any]:
    """An image of an imagefolder that its metadata file does not name."""
    return empty_raw(key=key, source=_join(root, key), error="missing_caption",
                     error_detail=f"not named in {metadata_name}")


def imagefolder_records(spec: InputSpec) -> list[dict[str, Any]]:
    records = manifest_records(spec)
    listed = {r["key"] for r in records}
    metadata_name = posixpath.basename(spec.files[0])
    records += [unlisted_image_raw(k, spec.root, metadata_name) for k in list_files(spec.root)
                if extension(k) in IMAGE_EXTENSIONS and k not in listed]
    return records


# ----------------------------------------------------------------------------------------------
# WebDataset tar shards
# ----------------------------------------------------------------------------------------------


def _sample_of(member_name: str) -> tuple[str, str]:
    """WebDataset naming: dir/abc.seg.jpg -> (dir/abc, seg.jpg): the key ends at the first dot
    of the base name, the rest is the extension."""
    folder, base = posixpath.split(member_name)
    if "." not in base:
        return member_name, ""
    head, ext = base.split(".", 1)
    return posixpath.join(folder, head), ext.lower()


def _sample_raw(prefix: str, tar_source: str, sample: str,
                members: dict[str, bytes | str]) -> dict[str, Any]:
    key = f"{prefix}/{sample}" if prefix else sample
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    extra: dict[str, Any] = {}
    caption: str | None = None
    caption_bytes = members.get(CAPTION_EXTENSION)
    if "json" in members and isinstance(members["json"], bytes):
        try:
            meta = json.loads(members["json"].decode("utf-8"))
            if isinstance(meta, dict):
                text_col = _first_present(meta, TEXT_COLUMNS)
                if caption_bytes is None and text_col is not None:
                    caption = str(meta.pop(text_col))
                extra = {k: v for k, v in meta.items() if v is not None}
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass  # unreadable sample metadata: the caption, if any, comes from .txt
    if image_ext is None:
        return empty_raw(key=key, source=f"{tar_source}#{sample}", extra=extra_json(extra),
                         error="missing_image", error_detail="sample has members "
                         f"{', '.join(sorted(members))} but no image")
    image = members[image_ext]
    raw = empty_raw(key=key, source=f"{tar_source}#{sample}.{image_ext}", extra=extra_json(extra),
                    caption=caption, caption_bytes=caption_bytes if isinstance(
                        caption_bytes, bytes) else None)
    if isinstance(image, str):  # the member was too large: its reason was put in its place
        raw.update(error="file_too_large", error_detail=image)
    else:
        raw["image"] = image
    if caption is None and raw["caption_bytes"] is None and raw["error"] is None:
        raw.update(error="missing_caption", error_detail="sample has no .txt and no json "
                   "caption/text")
    return raw


def tar_records(tar_path: str, prefix: str, max_member_bytes: int) -> Iterator[dict[str, Any]]:
    """Raw records of one WebDataset tar, streamed (members of a sample are adjacent).

    A tar that breaks part-way yields the samples completed before the break and one
    corrupt_archive record for the rest (the sample being read included).
    """
    sample: str | None = None
    members: dict[str, bytes | str] = {}
    try:
        with tarfile.open(tar_path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name, ext = _sample_of(member.name)
                if is_hidden(posixpath.basename(member.name)):
                    continue
                if name != sample:
                    if sample is not None:
                        yield _sample_raw(prefix, tar_path, sample, members)
                    sample, members = name, {}
                if member.size > max_member_bytes:
                    members[ext] = f"{member.size} bytes > max_file_bytes={max_member_bytes}"
                    continue
                f = tar.extractfile(member)
                members[ext] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as error:
        after = f" in or after sample {sample!r}" if sample is not None else ""
        yield empty_raw(key=f"{prefix}/~unreadable" if prefix else "~unreadable",
                        source=tar_path, error="corrupt_archive",
                        error_detail=f"{type(error).__name__}: {error}{after}")
        return
    if sample is not None:
        yield _sample_raw(prefix, tar_path, sample, members)


def tar_prefix(spec: InputSpec, tar_path: str) -> str:
    """The key prefix of a tar's samples: its path relative to the input root."""
    return Path(tar_path).relative_to(spec.root).as_posix()


def listing_records(spec: InputSpec) -> list[dict[str, Any]]:
    """Raw records of the file-naming layouts (every layout but webdataset), sorted by key."""
    if spec.layout == "imagefolder":
        records = imagefolder_records(spec)
    elif spec.layout == "pairs":
        records = pair_records(spec)
    elif spec.layout == "manifest":
        records = manifest_records(spec)
    else:
        raise ValueError(f"listing_records does not handle layout {spec.layout!r}")
    return sorted(records, key=lambda r: r["key"])
