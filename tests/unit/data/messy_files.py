"""Real image files of every kind `pictor data prepare` must survive (a test helper, not tests).

`make_messy_pairs(root)` writes an image + same-name .txt folder and returns what must happen
to each key: `EXPECTED_WRITTEN` keys end up in shards, `EXPECTED_REASONS` maps every other key
to its skip reason. Everything is made with Pillow and zlib, in well under a second.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_CAPTIONS = {
    "good_0.jpg": "a red circle",
    "good_1.png": "two stars",
    "sub/good_2.webp": "a blue square and a yellow triangle",
    "good_3.jpg": "  a   wide\tpicture\n",  # cleaned to "a wide picture"
    "tall.png": "a tall picture",
}

EXPECTED_WRITTEN = sorted([
    *GOOD_CAPTIONS, "cmyk.jpg", "gray16.png", "palette_alpha.png", "exif_rotated.jpg",
])

EXPECTED_REASONS = {
    "corrupt.jpg": "corrupt_image",
    "truncated.jpg": "truncated_image",
    "zero.png": "empty_file",
    "bomb.png": "too_many_pixels",
    "icon.png": "format_not_allowed",
    "empty_caption.png": "caption_empty",
    "huge_caption.png": "caption_too_long",
    "bad_utf8.png": "caption_undecodable",
    "good_0_copy.jpg": "duplicate",
    "no_caption.png": "missing_caption",
    "orphan.txt": "missing_image",
    "notes.md": "unsupported_file",
}


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, photo-like RGB image (JPEG-friendly gradients plus a little noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([128 + 100 * np.sin(x / (7 + seed) + c) * np.cos(y / 11 + 2 * c)
                     for c in range(3)], axis=-1)
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (900 M for the default) in ~100 KB: zeros
    compress ~1000:1. Pillow would need ~1 GB to decode it."""
    chunk = png_chunk
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def cmyk_jpeg() -> bytes:
    arr = np.zeros((40, 60, 4), np.uint8)
    arr[:, :30] = (0, 255, 255, 0)    # red in CMYK
    arr[:, 30:] = (255, 255, 0, 0)    # blue
    return encode(Image.fromarray(arr, "CMYK"), "JPEG", quality=95)


def gray16_png() -> bytes:
    arr = (np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) * 28).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")  # mode I;16


def palette_alpha_png() -> bytes:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 220, 40, 40] + [0] * (254 * 3))
    im.paste(1, (8, 8, 24, 24))
    return encode(im, "PNG", transparency=0)


def exif_rotated_jpeg() -> bytes:
    im = photo(80, 40, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    return encode(im, "JPEG", quality=90, exif=exif.tobytes())


def make_messy_pairs(root: Path) -> Path:
    """Write the folder (see the module docstring) and return root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)

    def put(name: str, data: bytes, caption: bytes | str | None) -> None:
        (root / name).write_bytes(data)
        if caption is not None:
            raw = caption.encode() if isinstance(caption, str) else caption
            (root / name).with_suffix(".txt").write_bytes(raw)

    sizes = {"good_0.jpg": (96, 96), "good_1.png": (64, 64), "sub/good_2.webp": (50, 70),
             "good_3.jpg": (160, 48), "tall.png": (40, 120)}
    for i, (name, caption) in enumerate(GOOD_CAPTIONS.items()):
        fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        put(name, encode(photo(*sizes[name], seed=i), fmt), caption)
    put("cmyk.jpg", cmyk_jpeg(), "a cmyk picture")
    put("gray16.png", gray16_png(), "a grey gradient")
    put("palette_alpha.png", palette_alpha_png(), "a red square")
    put("exif_rotated.jpg", exif_rotated_jpeg(), "a rotated photo")

    good_jpeg = (root / "good_0.jpg").read_bytes()
    rng = np.random.default_rng(0)
    put("corrupt.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(2000), "noise")
    put("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "half a picture")
    put("zero.png", b"", "nothing")
    put("bomb.png", png_bomb(), "a bomb")
    put("icon.png", encode(photo(32, 32, seed=9), "ICO"), "an icon")
    small = encode(photo(24, 24, seed=7), "PNG")
    put("empty_caption.png", small, " \t\n\u200b ")
    put("huge_caption.png", encode(photo(24, 24, seed=8), "PNG"), "a red circle " * 5000)
    put("bad_utf8.png", encode(photo(24, 24, seed=10), "PNG"), b"a red \xff\xfe circle")
    put("good_0_copy.jpg", good_jpeg, "the same bytes again")
    put("no_caption.png", encode(photo(24, 24, seed=11), "PNG"), None)
    (root / "orphan.txt").write_text("a caption without its image")
    (root / "notes.md").write_text("not data")
    (root / ".hidden.png").write_bytes(small)  # ignored, like Spark does
    return root


def make_imagefolder(root: Path) -> Path:
    """An imagefolder (metadata.jsonl) with a missing file, a null caption, extra fields, a row
    without file_name and an image the metadata does not name."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (root / f"{i}.png").write_bytes(encode(photo(30, 30, seed=20 + i), "PNG"))
    (root / "unlisted.png").write_bytes(encode(photo(30, 30, seed=30), "PNG"))
    rows = [
        {"file_name": "0.png", "text": "a red circle", "category": "colors", "seed": 7},
        {"file_name": "1.png", "text": None},
        {"file_name": "./2.png", "text": "two stars"},
        {"file_name": "gone.png", "text": "a file that is not there"},
        {"text": "a row without file_name"},
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


IMAGEFOLDER_WRITTEN = ["0.png", "2.png"]
IMAGEFOLDER_REASONS = {"1.png": "missing_caption", "gone.png": "missing_file",
                       "unlisted.png": "missing_caption", "metadata.jsonl:5": "bad_metadata"}


def write_tar(path: Path, members: list[tuple[str, bytes]], cut_last: bool = False) -> None:
    """A tar of `members`; cut_last: the file ends 100 bytes into the last member's data."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if cut_last:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            data = data[: tar.getmembers()[-1].offset_data + 100]
    path.write_bytes(data)


def make_webdataset(root: Path) -> Path:
    """Two WebDataset shards: samples with .txt or .json captions, one without a caption, one
    without an image; the second tar is cut off in its second sample."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    jpg = encode(photo(40, 30, seed=40), "JPEG")
    write_tar(root / "a.tar", [
        ("s000.jpg", jpg), ("s000.txt", b"a red circle"),
        ("s001.png", encode(photo(30, 30, seed=41), "PNG")),
        ("s001.json", json.dumps({"caption": "two stars", "width": 30}).encode()),
        ("s002.jpg", encode(photo(30, 40, seed=42), "JPEG")),
        ("s003.txt", b"a caption alone"),
    ])
    second = encode(photo(30, 30, seed=43), "PNG")
    members = [("s100.png", second), ("s100.txt", b"a blue square"),
               ("s101.txt", b"cut"), ("s101.png", encode(photo(64, 64, seed=44), "PNG"))]
    write_tar(root / "b.tar", members, cut_last=True)
    return root


WEBDATASET_WRITTEN = ["a.tar/s000", "a.tar/s001", "b.tar/s100"]
WEBDATASET_REASONS = {"a.tar/s002": "missing_caption", "a.tar/s003": "missing_image",
                      "b.tar/~unreadable": "corrupt_archive"}
