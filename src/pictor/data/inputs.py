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

from pictor.data.files import UnsafeFile, open_binary
from pictor.data.prepare import extra_json, forbidden_character, is_utf8_safe
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
        # os.walk does not follow symlinked folders (a loop would never end); they are listed
        # as files, so each becomes a record refused with its reason instead of vanishing.
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        dirs[:] = [d for d in dirs if d not in links]
        for name in [*files, *links]:
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
    # not only regular files: a FIFO or device named .tar becomes a rejected record, not a gap
    tars = [n for n in names if n.lower().endswith(TAR_SUFFIX) and not (p / n).is_dir()]
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


def printable_name(name: str) -> str:
    """`name`, with bytes that were not UTF-8 (surrogate-escaped by os and tarfile; Arrow
    strings cannot hold them) written as \\x escapes."""
    return name if is_utf8_safe(name) else name.encode("utf-8", "surrogateescape").decode(
        "utf-8", "backslashreplace")


def split_undecodable(keys: list[str], root: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(keys whose names are UTF-8, a rejected record for each other one)."""
    good = [k for k in keys if is_utf8_safe(k)]
    bad = [empty_raw(key=printable_name(k), source=printable_name(_join(root, k)),
                     error="unsupported_file", error_detail="the file name is not UTF-8 "
                     "(shown with \\x escapes); rename the file")
           for k in keys if not is_utf8_safe(k)]
    return good, bad


def pair_records(spec: InputSpec) -> list[dict[str, Any]]:
    keys, out = split_undecodable(list_files(spec.root), spec.root)
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(stem(key), []).append(key)
    return out + [r for keys in groups.values() for r in pair_group(keys, spec.root)]


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


def bad_line_raw(where: str, line_no: int, problem: str) -> dict[str, Any]:
    """The rejected record of a metadata/manifest line that names no usable file."""
    return empty_raw(key=f"{where}:{line_no}", source=f"{where}:{line_no}", error="bad_metadata",
                     error_detail=f"line {line_no}: {problem}")


def row_to_raw(row: dict[str, Any], root: str, where: str, line_no: int) -> dict[str, Any]:
    """One metadata/manifest row -> a raw record (the file is read later, by the transform).

    where: the metadata file's name; line_no: the row's line (its row number in Parquet)."""
    path_col = _first_present(row, PATH_COLUMNS)
    text_col = _first_present(row, TEXT_COLUMNS)
    name = row.get(path_col) if path_col else None
    used = {path_col, text_col}
    if not isinstance(name, str) or not name.strip() or "\x00" in name \
            or not is_utf8_safe(name):
        return bad_line_raw(where, line_no, f"no usable {' or '.join(PATH_COLUMNS)} "
                            f"(found {ascii(name):.80})")
    extra = extra_json({k: v for k, v in row.items() if k not in used and v is not None})
    key = posixpath.normpath(name.strip())
    text = row.get(text_col) if text_col else None
    raw = empty_raw(key=key, source=_join(root, key), extra=extra)
    if text is None:
        raw.update(error="missing_caption", error_detail=f"no {' or '.join(TEXT_COLUMNS)} in "
                   f"{where} line {line_no}")
    else:
        _set_caption(raw, str(text))
    return raw


def _set_caption(raw: dict[str, Any], text: str) -> None:
    """A caption from JSON into a raw record; one with a lone surrogate (which Arrow cannot
    hold) is rejected here, as the transform rejects it (prepare.forbidden_character)."""
    if is_utf8_safe(text):
        raw["caption"] = text
    else:
        raw.update(error="caption_control_chars", error_detail=forbidden_character(text))


# A metadata or manifest line longer than this is a bad_metadata record, read in chunks and
# never held whole (a caption is at most prepare.MAX_CAPTION_CHARS characters anyway).
MAX_LINE_BYTES = 1 << 20


def _too_long(size: int) -> str:
    return f"{size} bytes > {MAX_LINE_BYTES} (the longest metadata line read)"


def parse_json_line(line: bytes, line_no: int) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) or (None, what is wrong) for one JSON Lines line (both engines use this)."""
    if len(line) > MAX_LINE_BYTES:
        return None, _too_long(len(line))
    if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]  # UTF-8 byte order mark
    try:
        row = json.loads(line.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        return None, f"not a JSON object ({type(error).__name__}: {error})"[:300]
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    return row, None


def _json_lines(f: Any) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line without its newline, its size) of a binary file; a line longer than
    MAX_LINE_BYTES is read in chunks and counted, never held (None in its place)."""
    line_no = 0
    while line := f.readline(MAX_LINE_BYTES + 1):
        line_no += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            size = len(line)
            while line and not line.endswith(b"\n"):
                line = f.readline(MAX_LINE_BYTES)
                size += len(line)
            yield line_no, None, size - line.endswith(b"\n")
            continue
        line = line[:-1] if line.endswith(b"\n") else line
        yield line_no, line, len(line)


def open_metadata(path: str, root: str | None) -> Any:
    """A metadata/manifest file opened for reading (a regular file inside `root`, see
    pictor.data.files); ValueError naming it otherwise."""
    try:
        return open_binary(path, root)
    except UnsafeFile as error:
        raise ValueError(f"{path}: {error.detail}") from None


def iter_rows(path: str, root: str | None) -> Iterator[tuple[int, dict[str, Any] | None,
                                                           str | None]]:
    """(line number, row, None) or (line number, None, problem) for each row of a JSONL, CSV
    or Parquet file; the file must be a regular file inside `root` (pictor.data.files).
    ValueError only when the file itself cannot be read."""
    suffix = Path(path).suffix.lower()
    with open_metadata(path, root) as f:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            index = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    index += 1
                    yield index, row, None
        elif suffix == ".csv":
            text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline="")
            reader = csv.DictReader(text)
            while True:
                first_line = reader.line_num + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    yield first_line, None, f"not a CSV record ({error})"
                    continue
                if None in row:
                    yield first_line, None, (f"{len(row) - 1 + len(row[None])} fields, the "
                                             f"header names {len(row) - 1}")
                else:
                    yield first_line, row, None
        else:
            for line_no, line, size in _json_lines(f):
                if line is None:
                    yield line_no, None, _too_long(size)
                elif line.strip():
                    row, problem = parse_json_line(line, line_no)
                    yield line_no, row, problem


def file_records(path: str, root: str, allowed_root: str | None) -> list[dict[str, Any]]:
    """Raw records of one metadata/manifest file: one per line, a bad line a bad_metadata
    record with its line number. ValueError when no valid row names the images' column."""
    where = posixpath.basename(path)
    out, columns = [], None
    for line_no, row, problem in iter_rows(path, allowed_root):
        if row is None:
            out.append(bad_line_raw(where, line_no, problem or ""))
            continue
        if columns is None:
            columns = list(row)
            check_columns(columns, path)
        out.append(row_to_raw(row, root, where, line_no))
    return out


def first_row(path: str, allowed_root: str | None) -> dict[str, Any] | None:
    """The first valid row of a metadata/manifest file (for check_columns), or None."""
    return next((row for _, row, _ in iter_rows(path, allowed_root) if row is not None), None)


def manifest_records(spec: InputSpec, allowed_root: str | None) -> list[dict[str, Any]]:
    return [r for path in spec.files for r in file_records(path, spec.root, allowed_root)]


def unlisted_image_raw(key: str, root: str, metadata_name: str) -> dict[str, Any]:
    """An image of an imagefolder that its metadata file does not name."""
    return empty_raw(key=key, source=_join(root, key), error="missing_caption",
                     error_detail=f"not named in {metadata_name}")


def imagefolder_records(spec: InputSpec, allowed_root: str | None) -> list[dict[str, Any]]:
    records = manifest_records(spec, allowed_root)
    listed = {r["key"] for r in records}
    metadata_name = posixpath.basename(spec.files[0])
    keys, undecodable = split_undecodable(unlisted_images(spec.root), spec.root)
    return records + undecodable + [unlisted_image_raw(k, spec.root, metadata_name)
                                    for k in keys if k not in listed]


def unlisted_images(root: str) -> list[str]:
    """Keys of the image files of a folder (by extension)."""
    return [k for k in list_files(root) if extension(k) in IMAGE_EXTENSIONS]


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
    key = printable_name(f"{prefix}/{sample}" if prefix else sample)
    sample = printable_name(sample)
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
        except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError, nesting
            pass  # unreadable sample metadata: the caption, if any, comes from .txt
    if image_ext is None:
        return empty_raw(key=key, source=f"{tar_source}#{sample}", extra=extra_json(extra),
                         error="missing_image", error_detail="sample has members "
                         f"{', '.join(sorted(members))} but no image")
    image = members[image_ext]
    raw = empty_raw(key=key, source=f"{tar_source}#{sample}.{image_ext}", extra=extra_json(extra),
                    caption_bytes=caption_bytes if isinstance(caption_bytes, bytes) else None)
    if caption is not None:
        _set_caption(raw, caption)
    if isinstance(image, str):  # the member was too large: its reason was put in its place
        raw.update(error="file_too_large", error_detail=image)
    else:
        raw["image"] = image
    if caption is None and raw["caption_bytes"] is None and raw["error"] is None:
        raw.update(error="missing_caption", error_detail="sample has no .txt and no json "
                   "caption/text")
    return raw


_SAMPLE_MEMBERS = (*IMAGE_EXTENSIONS, CAPTION_EXTENSION, "json")  # the members that are read


def tar_records(tar_path: str, prefix: str, max_member_bytes: int,
                allowed_root: str | None = None) -> Iterator[dict[str, Any]]:
    """Raw records of one WebDataset tar, streamed (members of a sample are adjacent).

    The tar must be a regular file inside `allowed_root` (pictor.data.files); only members a
    sample uses are read (images, .txt, .json, each at most max_member_bytes), others are
    named only, so a sample holds a bounded number of bytes. A tar that breaks part-way yields
    the samples completed before the break and one corrupt_archive record for the rest (the
    sample being read included).
    """
    unreadable = printable_name(f"{prefix}/~unreadable" if prefix else "~unreadable")
    source = printable_name(tar_path)
    try:
        fileobj = open_binary(tar_path, allowed_root)
    except UnsafeFile as error:
        yield empty_raw(key=unreadable, source=source, error=error.reason,
                        error_detail=error.detail)
        return
    sample: str | None = None
    members: dict[str, bytes | str] = {}
    try:
        with fileobj, tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name, ext = _sample_of(member.name)
                if is_hidden(posixpath.basename(member.name)):
                    continue
                if name != sample:
                    if sample is not None:
                        yield _sample_raw(prefix, source, sample, members)
                    sample, members = name, {}
                if ext not in _SAMPLE_MEMBERS:
                    members[ext] = "not read"
                    continue
                if member.size > max_member_bytes:
                    members[ext] = f"{member.size} bytes > max_file_bytes={max_member_bytes}"
                    continue
                f = tar.extractfile(member)
                members[ext] = f.read(max_member_bytes + 1) if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as error:
        after = f" in or after sample {sample!r}" if sample is not None else ""
        yield empty_raw(key=unreadable, source=source, error="corrupt_archive",
                        error_detail=f"{type(error).__name__}: {error}{after}")
        return
    if sample is not None:
        yield _sample_raw(prefix, source, sample, members)


def tar_prefix(spec: InputSpec, tar_path: str) -> str:
    """The key prefix of a tar's samples: its path relative to the input root."""
    return Path(tar_path).relative_to(spec.root).as_posix()


def listing_records(spec: InputSpec, allowed_root: str | None) -> list[dict[str, Any]]:
    """Raw records of the file-naming layouts (every layout but webdataset), sorted by key.
    allowed_root: the folder metadata files must lie in (None: anywhere)."""
    if spec.layout == "imagefolder":
        records = imagefolder_records(spec, allowed_root)
    elif spec.layout == "pairs":
        records = pair_records(spec)
    elif spec.layout == "manifest":
        records = manifest_records(spec, allowed_root)
    else:
        raise ValueError(f"listing_records does not handle layout {spec.layout!r}")
    return sorted(records, key=lambda r: r["key"])
