"""A corpus of hostile inputs for `pictor data prepare` (a test helper, not tests).

Made of real files: FIFOs, a Unix socket, symlinks to /dev/zero, /dev/urandom and /etc,
symlink loops and chains, a sparse 10 GB file, names with newlines, malformed metadata lines,
a JSON nesting bomb, a line over the length limit, and images that are empty, one pixel, huge
in a tiny file or over the memory budget. Each `make_*` returns the input path and what must
become of every record: key -> reason, or None for written. `HOSTILE_OPTIONS` are the limits
the expectations assume.

`make_hostile_pairs` and `make_hostile_imagefolder` put their outside-the-root targets in
`base/outside/`, so nothing outside the test's own folder is ever read even if a check fails
(the /dev and /etc links are refused before they are opened).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import zlib
from pathlib import Path

from messy_files import encode, photo, png_chunk, write_tar
from PIL import Image

from pictor.data.prepare import PrepareOptions

MAX_FILE_BYTES = 2**20
HOSTILE_OPTIONS = PrepareOptions(image_size=16, max_file_bytes=MAX_FILE_BYTES,
                                 max_record_memory_bytes=96 * 2**20, record_timeout_seconds=30)


def png_header_only(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header claims width x height pixels (no pixel data to speak of)."""
    chunk = png_chunk
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def png_over_budget(side: int = 6000) -> bytes:
    """A valid side x side RGB PNG (108 MB decoded for 6000) in ~100 KB: under max_pixels,
    over HOSTILE_OPTIONS' 96 MiB memory budget."""
    chunk = png_chunk
    row = b"\x00" * (1 + 3 * side)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 100) for _ in range(side // 100)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _outside(base: Path) -> Path:
    out = base / "outside"
    out.mkdir(parents=True, exist_ok=True)
    (out / "secret.png").write_bytes(encode(photo(20, 20, seed=99), "PNG"))
    (out / "secret.txt").write_text("a caption from outside the input folder")
    return out


def make_hostile_pairs(base: Path) -> tuple[Path, dict[str, str | None]]:
    """An image + .txt folder of 41 hostile or odd records (see the module docstring)."""
    outside = _outside(base)
    root = base / "pairs"
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    expected: dict[str, str | None] = {}

    def image(name: str, data: bytes | None, caption: str | bytes | None,
              reason: str | None) -> None:
        if data is not None:
            (root / name).write_bytes(data)
        if caption is not None:
            raw = caption.encode() if isinstance(caption, str) else caption
            (root / name).with_suffix(".txt").write_bytes(raw)
        expected[name] = reason

    good = encode(photo(24, 24, seed=1), "PNG")
    # written
    image("good.png", good, "a red circle", None)
    image("one_pixel.png", encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "a dot", None)
    image("new\nline.png", encode(photo(20, 20, seed=2), "PNG"), "a name with a newline", None)
    image("名前 ünïcode.png", encode(photo(20, 20, seed=3), "PNG"), "a unicode name", None)
    image("cleaned.png", encode(photo(20, 20, seed=4), "PNG"), "a blue\u200b square\u202e",
          None)  # invisible characters removed and counted
    (root / ".chain_target.png").write_bytes(encode(photo(20, 20, seed=5), "PNG"))
    previous = ".chain_target.png"
    for i in range(5):  # a short chain of symlinks inside the root is fine
        os.symlink(previous, root / f".chain{i}")
        previous = f".chain{i}"
    os.symlink(previous, root / "chain_ok.png")
    image("chain_ok.png", None, "at the end of a short symlink chain", None)
    # not regular files
    os.mkfifo(root / "fifo.png")
    image("fifo.png", None, "a FIFO as the image", "not_regular_file")
    image("fifo_caption.png", encode(photo(20, 20, seed=6), "PNG"), None, "not_regular_file")
    os.mkfifo(root / "fifo_caption.txt")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(root / "socket.png"))
    sock.close()  # the socket file stays
    image("socket.png", None, "a socket as the image", "not_regular_file")
    os.symlink("sub", root / "dir_link.png")
    image("dir_link.png", None, "a folder as the image", "not_regular_file")
    # outside the root (devices, /etc, ../)
    for name, target in [("zero.png", "/dev/zero"), ("urandom.png", "/dev/urandom"),
                         ("etc.png", "/etc/hostname"),
                         ("parent_link.png", str(outside / "secret.png"))]:
        os.symlink(target, root / name)
        image(name, None, "points outside", "outside_root")
    image("zero_caption.png", encode(photo(20, 20, seed=7), "PNG"), None, "outside_root")
    os.symlink("/dev/zero", root / "zero_caption.txt")
    image("etc_caption.png", encode(photo(20, 20, seed=8), "PNG"), None, "outside_root")
    os.symlink("/etc/hostname", root / "etc_caption.txt")
    # broken links
    os.symlink("loop.png", root / "loop.png")
    image("loop.png", None, "a symlink to itself", "missing_file")
    previous = "deep.png"
    for i in range(60):  # longer than the kernel's 40 links
        os.symlink(f".deep{i}", root / previous)
        previous = f".deep{i}"
    (root / previous).write_bytes(encode(photo(20, 20, seed=17), "PNG"))
    # resolved by realpath (no kernel limit of 40), inside the root: fine
    image("deep.png", None, "at the end of 60 symlinks", None)
    os.symlink("nowhere.png", root / "dangling.png")
    image("dangling.png", None, "a dangling symlink", "missing_file")
    # sizes
    image("empty.png", b"", "nothing", "empty_file")
    image("huge_dims.png", png_header_only(100_000, 100_000), "ten gigapixels", "too_many_pixels")
    image("over_budget.png", png_over_budget(), "36 megapixels", "out_of_memory")
    image("big_file.png", os.urandom(MAX_FILE_BYTES + 10), "too many bytes", "file_too_large")
    with open(root / "sparse.png", "wb") as f:  # 10 GB reported, nothing on disk
        f.truncate(10 * 2**30)
    image("sparse.png", None, "a sparse 10 GB file", "file_too_large")
    image("big_caption.png", encode(photo(20, 20, seed=9), "PNG"), "word " * (MAX_FILE_BYTES // 4),
          "file_too_large")
    # captions
    image("nul_caption.png", encode(photo(20, 20, seed=10), "PNG"), "a red\x00circle",
          "caption_control_chars")
    image("esc_caption.png", encode(photo(20, 20, seed=11), "PNG"),
          "a \x1b]0;owned\x07 red circle", "caption_control_chars")
    image("bad_utf8.png", encode(photo(20, 20, seed=12), "PNG"), b"a \xc3\x28 circle",
          "caption_undecodable")
    image("no_caption.png", encode(photo(20, 20, seed=13), "PNG"), None, "missing_caption")
    # contents
    image("garbage.png", os.urandom(3000), "noise", "corrupt_image")
    jpeg = encode(photo(96, 96, seed=14), "JPEG")
    image("truncated.jpg", jpeg[: len(jpeg) // 2], "half", "truncated_image")
    image("icon.png", encode(photo(16, 16, seed=15), "ICO"), "an icon", "format_not_allowed")
    image("good_dup.png", good, "the same bytes as good.png", "duplicate")
    (root / os.fsdecode(b"latin1 \xe9t\xe9.png")).write_bytes(encode(photo(20, 20, 16), "PNG"))
    expected["latin1 \\xe9t\\xe9.png"] = "unsupported_file"  # a name that is not UTF-8
    (root / "orphan.txt").write_text("a caption alone")
    expected["orphan.txt"] = "missing_image"
    (root / "run.sh").write_text("rm -rf /\n")
    expected["run.sh"] = "unsupported_file"
    return root, expected


def make_hostile_imagefolder(base: Path) -> tuple[Path, dict[str, str | None]]:
    """A folder whose metadata.jsonl holds malformed lines and paths that leave the folder."""
    outside = _outside(base)
    root = base / "imagefolder"
    root.mkdir(parents=True)
    for name, seed in [("good.png", 30), ("u2028.png", 31), ("crlf.png", 32), ("sur.png", 33)]:
        (root / name).write_bytes(encode(photo(20, 20, seed=seed), "PNG"))
    os.symlink(outside / "secret.png", root / "sneaky.png")
    os.mkfifo(root / "fifo.png")
    lines = [
        (json.dumps({"file_name": "good.png", "text": "a red circle", "n": 1}).encode(), None),
        (b'{"file_name": "oops.png", "text": ', "bad_metadata"),
        (b"[1, 2]", "bad_metadata"),
        (b"[" * 200_000 + b"]" * 200_000, "bad_metadata"),  # nesting bomb (RecursionError)
        (json.dumps({"file_name": "long.png", "text": "x" * (2**20 + 5)}).encode(),
         "bad_metadata"),  # over MAX_LINE_BYTES
        (b'{"file_name": 5, "text": "a number"}', "bad_metadata"),
        (b'{"file_name": "a\\u0000b.png", "text": "a NUL"}', "bad_metadata"),
        (b"\xff\xfe\x00garbage", "bad_metadata"),
        (b"", None),  # blank lines are not records
        (json.dumps({"file_name": "../outside/secret.png", "text": "x"}).encode(),
         "outside_root"),
        (json.dumps({"file_name": "/etc/hostname", "text": "x"}).encode(), "outside_root"),
        (json.dumps({"file_name": "sneaky.png", "text": "x"}).encode(), "outside_root"),
        (json.dumps({"file_name": "fifo.png", "text": "x"}).encode(), "not_regular_file"),
        # a raw U+2028 inside a JSON string: one line for JSON Lines, two for str.splitlines
        (json.dumps({"file_name": "u2028.png", "text": "a red\u2028circle"},
                    ensure_ascii=False).encode(), None),
        (json.dumps({"file_name": "crlf.png", "text": "a CRLF line"}).encode() + b"\r", None),
        (b'{"file_name": "\\udcff.png", "text": "a surrogate file name"}', "bad_metadata"),
        (b'{"file_name": "sur.png", "text": "a \\ud800 surrogate"}', "caption_control_chars"),
    ]
    (root / "metadata.jsonl").write_bytes(b"".join(line + b"\n" for line, _ in lines))
    expected: dict[str, str | None] = {}
    for line_no, (line, reason) in enumerate(lines, start=1):
        if not line:
            continue
        if reason == "bad_metadata":
            expected[f"metadata.jsonl:{line_no}"] = reason
        else:
            name = json.loads(line)["file_name"]
            expected[os.path.normpath(name)] = reason
    return root, expected


def make_hostile_webdataset(base: Path) -> tuple[Path, dict[str, str | None]]:
    """Tar shards: a good one (with a member escaping by name and a NUL caption), a FIFO named
    .tar and a symlink to a tar outside the folder."""
    outside = _outside(base)
    root = base / "webdataset"
    root.mkdir(parents=True)
    write_tar(root / "good.tar", [
        ("s0.png", encode(photo(20, 20, seed=40), "PNG")), ("s0.txt", b"a red circle"),
        ("../../escape.png", encode(photo(20, 20, seed=41), "PNG")),
        ("../../escape.txt", b"a member named outside"),  # a key, never a path on disk
        ("s2.png", encode(photo(20, 20, seed=42), "PNG")), ("s2.txt", b"a\x00b"),
        ("s3.png", encode(photo(20, 20, seed=43), "PNG")),
        ("s3.json", b"[" * 100_000 + b"]" * 100_000),
    ])
    os.mkfifo(root / "fifo.tar")
    write_tar(outside / "other.tar", [("t.png", b"x"), ("t.txt", b"x")])
    os.symlink(outside / "other.tar", root / "link.tar")
    expected = {"good.tar/s0": None, "good.tar/../../escape": None,
                "good.tar/s2": "caption_control_chars", "good.tar/s3": "missing_caption",
                "fifo.tar/~unreadable": "not_regular_file",
                "link.tar/~unreadable": "outside_root"}
    return root, expected
