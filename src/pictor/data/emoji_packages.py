"""The emoji packages pictor imports: pinned versions, fetching them, reading their formats.

Three npm packages, each a style of the same Unicode emoji (issue 25):

| package                          | style      | images                        | licence      |
|----------------------------------|------------|-------------------------------|--------------|
| emoji-datasource-google@16.0.0   | Noto Emoji | img/google/64/<image>  (PNG)  | Apache-2.0   |
| emoji-datasource-twitter@16.0.0  | Twemoji    | img/twitter/64/<image> (PNG)  | CC-BY-4.0    |
| openmoji@17.0.0                  | OpenMoji   | color/svg/<hexcode>.svg       | CC-BY-SA-4.0 |

emoji-datasource-* hold `emoji.json`: a list of {name (the Unicode name, upper case), unified
(hex code points joined by "-"), image, category, subcategory, skin_variations: {tone key:
{unified, image, ...}}}. openmoji holds `data/openmoji.json`: a list of {annotation (the CLDR
English name, "waving hand: light skin tone"), hexcode, group, subgroups, skintone,
skintone_base_hexcode, ...}; its npm package ships SVGs only (no `color/72x72` PNGs, checked on
17.0.0), which are rasterised by CairoSVG (pictor.data.emoji); a folder holding the 72x72 PNGs of
an OpenMoji release is read too, PNGs first.

`fetch_packages` runs `npm pack NAME@VERSION` and checks each tarball's sha256 against `PINS`
(measured on the registry's tarballs on 2026-12-05). `open_package` reads a package as a user
has it: an npm tarball (`.tgz`) or an unpacked folder (holding package.json, or a `package/`
folder that does). Everything is read as hostile input would be: tarballs streamed, never
extracted, each member and file bounded (pictor.data.files for folders), JSON size-limited,
and a member or entry that is not what the format says becomes a rejected record, not an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pictor.data.files import UnsafeFile, open_binary, read_bounded, real_root


@dataclass(frozen=True)
class Pin:
    version: str  # the npm version fetched
    sha256: str  # hex digest of the tarball `npm pack` writes


PINS: dict[str, Pin] = {
    "emoji-datasource-google": Pin(
        "16.0.0", "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
    "emoji-datasource-twitter": Pin(
        "16.0.0", "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877"),
    "openmoji": Pin(
        "17.0.0", "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"),
}


@dataclass(frozen=True)
class Style:
    """One vendor's drawings: what captions say and what the images' licence is."""

    style_id: str  # folder name of its images in the imported data set
    caption_name: str  # the caption ends with ", <caption_name> style"
    license: str  # SPDX identifier of the images' licence
    credit: str  # the attribution line (ATTRIBUTION file)


STYLES: dict[str, Style] = {
    "google": Style("noto", "Noto Emoji", "Apache-2.0",
                    "Noto Emoji images, Copyright Google Inc., Apache License 2.0 "
                    "(https://www.apache.org/licenses/LICENSE-2.0); via the npm package "
                    "emoji-datasource-google (MIT, Cal Henderson)"),
    "twitter": Style("twemoji", "Twemoji", "CC-BY-4.0",
                     "Twemoji graphics, Copyright Twitter, Inc. and other contributors, "
                     "licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); "
                     "via the npm package emoji-datasource-twitter (MIT, Cal Henderson)"),
    "openmoji": Style("openmoji", "OpenMoji", "CC-BY-SA-4.0",
                      "OpenMoji, the open-source emoji and icon project, License: CC BY-SA 4.0 "
                      "(https://creativecommons.org/licenses/by-sa/4.0/); emoji designed by "
                      "OpenMoji, https://openmoji.org"),
}
DATASOURCE_VENDORS = ("google", "twitter")  # Apple's and Facebook's images are not open

MAX_JSON_BYTES = 64 * 2**20  # emoji.json is 1.9 MB, openmoji.json 2.3 MB
SKIN_TONES: dict[str, str] = {  # Fitzpatrick modifier -> CLDR name
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
_HEXCODE = re.compile(r"^[0-9A-F]{2,6}(-[0-9A-F]{2,6}){0,15}$")
_IMAGE_NAME = re.compile(r"^[0-9A-Za-z_.-]{1,200}\.(png|svg)$")


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


def tarball_name(package: str, version: str) -> str:
    """The file name `npm pack` gives a package's tarball."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_pinned(path: str | os.PathLike[str], package: str) -> None:
    """ValueError unless the tarball's sha256 is the one pinned for `package`."""
    found = file_sha256(path)
    if found != PINS[package].sha256:
        raise ValueError(f"{path}: sha256 {found} is not the pinned {PINS[package].sha256} of "
                         f"{package}@{PINS[package].version}; the file is damaged or another "
                         "build: delete it and fetch again")


def fetch_packages(out_dir: str | os.PathLike[str], packages: Iterable[str] = tuple(PINS),
                   npm: str = "npm") -> list[Path]:
    """The pinned tarballs in `out_dir`, each sha256-checked: a tarball already there with the
    right digest is kept, else `npm pack` fetches it. ValueError on any mismatch."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for package in packages:
        if package not in PINS:
            raise ValueError(f"no pinned version of {package!r}; pinned: {', '.join(PINS)}")
        pin = PINS[package]
        path = out / tarball_name(package, pin.version)
        if not (path.is_file() and file_sha256(path) == pin.sha256):
            if shutil.which(npm) is None:
                raise ValueError(f"{npm!r} is not on PATH: install Node.js (Debian: apt-get "
                                 "install npm), or pass tarballs you have with --from")
            subprocess.run([npm, "pack", f"{package}@{pin.version}", "--pack-destination",
                            str(out), "--silent"], check=True, stdout=subprocess.DEVNULL)
        check_pinned(path, package)
        paths.append(path)
    return paths


def copy_pinned(tarball: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """A user's tarball of a pinned package, checked and copied into `out_dir`."""
    name = Path(tarball).name
    package = next((p for p, pin in PINS.items() if tarball_name(p, pin.version) == name), None)
    if package is None:
        expected = ", ".join(tarball_name(p, pin.version) for p, pin in PINS.items())
        raise ValueError(f"{tarball}: not one of the pinned tarballs ({expected}); import it "
                         "directly with `pictor data import emoji` instead")
    check_pinned(tarball, package)
    target = Path(out_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(tarball).resolve() != target.resolve():
        shutil.copyfile(tarball, target)
    return target


# ---------------------------------------------------------------------------------------------
# Reading a package: tarball or folder
# ---------------------------------------------------------------------------------------------


class PackageFiles:
    """The files of one package, by path relative to its root ("img/google/64/1f600.png")."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: set[str] = set()

    def read_many(self, paths: Iterable[str], max_bytes: int) -> dict[str, bytes | UnsafeFile]:
        raise NotImplementedError


def _strip_top(name: str) -> str | None:
    """A tar member's path without its top folder ("package/"), or None if unsafe/hidden."""
    parts = posixpath.normpath(name).split("/")
    if len(parts) < 2 or parts[0] in ("", "..") or ".." in parts:
        return None
    return "/".join(parts[1:])


METADATA_FILES = ("package.json", "emoji.json", "data/openmoji.json")


class TarPackage(PackageFiles):
    """An npm tarball, streamed (never extracted): one pass lists it and keeps its metadata
    files (METADATA_FILES), one more per read_many of other files."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._kept: dict[str, bytes | UnsafeFile] = {}
        for name, data in self._members(set(METADATA_FILES), MAX_JSON_BYTES):
            self.names.add(name)
            if data is not None:
                self._kept[name] = data

    def _members(self, wanted: set[str] | None = None, max_bytes: int = 0):
        with open_binary(self.source, None) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                name = _strip_top(member.name) if member.isfile() else None
                if name is None:
                    continue
                if wanted is None or name not in wanted:
                    yield name, None
                elif member.size > max_bytes:
                    yield name, UnsafeFile("file_too_large", f"{member.size} bytes > "
                                           f"{max_bytes}")
                else:
                    yield name, tar.extractfile(member).read(max_bytes + 1)  # type: ignore[union-attr]

    def read_many(self, paths: Iterable[str], max_bytes: int) -> dict[str, bytes | UnsafeFile]:
        wanted = set(paths)
        found = {p: self._kept[p] for p in wanted if p in self._kept}
        rest = wanted - set(found)
        for name, data in self._members(rest, max_bytes) if rest else ():
            if data is not None:
                found[name] = data
        return {p: found.get(p, UnsafeFile("missing_file", f"{p} is not in {self.source}"))
                for p in wanted}


class FolderPackage(PackageFiles):
    """An unpacked package: files read confined to its folder (pictor.data.files)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.root = real_root(root)
        for folder, _, files in os.walk(self.root):
            rel = os.path.relpath(folder, self.root)
            self.names.update(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
                              for f in files)

    def read_many(self, paths: Iterable[str], max_bytes: int) -> dict[str, bytes | UnsafeFile]:
        out: dict[str, bytes | UnsafeFile] = {}
        for p in paths:
            try:
                out[p] = read_bounded(os.path.join(self.root, p), max_bytes, self.root)
            except UnsafeFile as error:
                out[p] = error
        return out


def open_package(source: str | os.PathLike[str]) -> PackageFiles:
    """A tarball (.tgz, .tar.gz, .tar) or a package folder; ValueError for anything else."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "package.json").is_file() and (path / "package").is_dir():
            path = path / "package"
        return FolderPackage(str(path))
    if path.is_file() and path.name.endswith((".tgz", ".tar.gz", ".tar")):
        try:
            return TarPackage(str(path))
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ValueError(f"{path}: not a readable tarball ({type(error).__name__}: "
                             f"{error})") from None
        except UnsafeFile as error:
            raise ValueError(f"{path}: {error.detail}") from None
    raise ValueError(f"{path}: expected an npm tarball (.tgz) or an unpacked package folder")


def read_json(files: PackageFiles, name: str) -> Any:
    """A JSON file of the package (at most MAX_JSON_BYTES); ValueError naming it otherwise."""
    data = files.read_many([name], MAX_JSON_BYTES)[name]
    if isinstance(data, UnsafeFile):
        raise ValueError(f"{files.source}: cannot read {name}: {data.detail}")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{files.source}: {name} is not JSON ({type(error).__name__}: "
                         f"{error})"[:400]) from None


def package_id(files: PackageFiles) -> str:
    """name@version from package.json, or the source's file name when it has none."""
    if "package.json" in files.names:
        try:
            meta = read_json(files, "package.json")
            if isinstance(meta, dict) and isinstance(meta.get("name"), str):
                return f"{meta['name']}@{meta.get('version', '?')}"
        except ValueError:
            pass
    return Path(files.source).name


def normalize_hexcode(code: str) -> str:
    """Upper case, variation selector 16 (FE0F) dropped: how the packages' codes are matched
    (emoji-datasource writes 2764-FE0F, OpenMoji 2764)."""
    return "-".join(c for c in code.upper().split("-") if c != "FE0F")


def tones_of(code: str) -> tuple[str, ...]:
    """The skin-tone modifiers in a (normalized) code, in order; () for the swatches
    themselves (1F3FB alone is the emoji 'light skin tone', not a toned emoji)."""
    points = code.split("-")
    tones = tuple(p for p in points if p in SKIN_TONES)
    return () if len(tones) == len(points) else tones


def valid_hexcode(value: Any) -> bool:
    return isinstance(value, str) and bool(_HEXCODE.match(value.upper()))


def valid_image_name(value: Any) -> bool:
    return isinstance(value, str) and bool(_IMAGE_NAME.match(value)) and ".." not in value
