"""The per-record transform of `pictor data prepare`: raw bytes + caption -> a training record.

Every engine runs exactly this code (the local process pool and Spark's mapInArrow), so they
agree record for record. One raw record (pictor.data.records.RAW_SCHEMA) becomes one prepared
record (PREPARED_SCHEMA) with a status and, when skipped, one reason. The checks run in this
order and the first failure is the reason:

1. the listing's own verdict (`error`: missing_caption, missing_image, unsupported_file, ...);
2. the source bytes: read them (pictor.data.files: regular files inside the input folder
   only, never more than max_file_bytes: missing_file, not_regular_file, outside_root,
   file_too_large), sha256 of them (exact de-duplication happens later, across records),
   empty_file;
3. the caption: decode (caption_undecodable), control characters and lone surrogates
   (caption_control_chars), clean up (invisible format characters removed and noted in the
   ok record's `detail`), caption_empty, caption_too_long;
4. the image (decode_image): format allow-list, pixel limit, decode (corrupt / truncated),
   EXIF orientation, colour modes to 8-bit sRGB RGB, alpha over a background, then a square of
   image_size by centre-crop or by padding (keeps the aspect ratio), stored as PNG.

Captions go before images because they are cheap: a record rejected for its caption is never
decoded. No per-record failure raises: any exception while decoding becomes corrupt_image with
the exception text as its detail (out_of_memory for a failed allocation), and `prepare_batch`
runs each record under a time and memory limit in a process of its own (pictor.data.isolation:
timeout, worker_crashed), so one bad file never stops a job.

Colour handling, in the order applied:
- 16-bit (I;16*, I) greyscale is scaled to 8 bit with rounding, v8 = round(v16 * 255 / 65535)
  (Pillow's own convert() would clip every value above 255 to white);
- an embedded ICC profile (CMYK print profiles, Adobe RGB, Display P3) is converted to sRGB with
  LittleCMS; without one CMYK is converted by Pillow's formula;
- palette images with transparency, LA and RGBA are composited over `background`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from pictor.data.files import UnsafeFile, read_bounded
from pictor.data.isolation import run_isolated
from pictor.data.records import (
    PREPARED_SCHEMA,
    REASONS,
    STATUS_OK,
    STATUS_SKIPPED,
)

# Pillow format names. JPEG covers camera JPEGs that Pillow reports as MPO (multi-picture).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
RESIZE_MODES = ("center-crop", "pad")
_JPEG_FORMATS = ("JPEG", "MPO")
# Past this many characters a caption is too long for any encoder we support, whatever its
# tokens; it is rejected without running the tokenizer over megabytes of text.
MAX_CAPTION_CHARS = 100_000
# Word-level rule used when no tokenizer is available: words and punctuation marks, plus the
# begin and end tokens every encoder adds. WordPiece and BPE split rare words further, so the
# rule undercounts for unusual vocabulary; it is exact for the shapes world's captions.
_WORD_RULE = re.compile(r"\w+|[^\w\s]")
WORD_RULE_SPECIAL_TOKENS = 2


@dataclass(frozen=True)
class PrepareOptions:
    """How records are prepared; saved into the shard manifest."""

    # Side of the square output images, in pixels (64 is the shapes-world canvas).
    image_size: int = 64
    # "center-crop": scale the short side to image_size and cut the long side's overflow
    # equally from both ends; "pad": scale the long side to image_size and fill the rest with
    # `background`, keeping the whole picture and its aspect ratio.
    resize: str = "center-crop"
    # RGB behind transparent pixels and padding.
    background: tuple[int, int, int] = (255, 255, 255)
    # Largest width x height decoded; beyond it the record is too_many_pixels (checked from the
    # header, before any pixel is decoded). 2**26 = 8192 x 8192.
    max_pixels: int = 2**26
    # Largest source file accepted, in bytes (64 MiB).
    max_file_bytes: int = 64 * 2**20
    # Pillow formats that may be decoded; others are format_not_allowed and never parsed.
    formats: tuple[str, ...] = ALLOWED_FORMATS
    # Token budget of the text encoder (special tokens included); longer captions are
    # caption_too_long. Matches the trainer's text.max_length default.
    max_caption_tokens: int = 32
    # Folder of a Hugging Face tokenizer (the chosen text encoder's); None: the word rule above.
    tokenizer_path: str | None = None
    # PNG zlib level of the stored images (1: fast; the images are small either way).
    png_compress_level: int = 1
    # Longest a record may take (read, decode, resize); past it its process is killed and the
    # record is a timeout (pictor.data.isolation). Legitimate 8192^2 images take ~2 s.
    record_timeout_seconds: float = 60.0
    # Memory a record may add to its worker (address space, RLIMIT_AS); past it the record is
    # out_of_memory. The largest legitimate record (max_pixels CMYK JPEG with an ICC profile)
    # needs ~1 GiB.
    max_record_memory_bytes: int = 2 * 2**30
    # Resolved input folder that every file read must lie in (pictor.data.files); None: any
    # path (--allow-outside-root). Set by the prepare job from its INPUT.
    allowed_root: str | None = None

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, "
                             f"got {self.resize!r}")
        if len(self.background) != 3 or not all(0 <= int(c) <= 255 for c in self.background):
            raise ValueError(f"background must be three integers in [0, 255], got "
                             f"{self.background!r}")
        if self.max_pixels < 1 or self.max_file_bytes < 1 or self.max_caption_tokens < 1:
            raise ValueError("max_pixels, max_file_bytes and max_caption_tokens must be >= 1")
        if not self.record_timeout_seconds > 0 or self.max_record_memory_bytes < 2**20:
            raise ValueError("record_timeout_seconds must be > 0 and max_record_memory_bytes "
                             ">= 1 MiB")
        Image.init()  # registers every plugin, so Image.OPEN lists all formats
        unknown = [f for f in self.formats if f not in Image.OPEN]
        if unknown or not self.formats:
            raise ValueError(f"unknown image formats {unknown}; use Pillow format names such "
                             f"as {', '.join(ALLOWED_FORMATS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "resize": self.resize,
                "background": list(self.background), "max_pixels": self.max_pixels,
                "max_file_bytes": self.max_file_bytes, "formats": list(self.formats),
                "max_caption_tokens": self.max_caption_tokens,
                "tokenizer": self.tokenizer_path or "word-rule",
                "png_compress_level": self.png_compress_level,
                "record_timeout_seconds": self.record_timeout_seconds,
                "max_record_memory_bytes": self.max_record_memory_bytes,
                "confined_to_input": self.allowed_root is not None}


class RecordError(Exception):
    """A record is skipped: `reason` (a key of records.REASONS) and a human `detail`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------------------
# Bytes
# ----------------------------------------------------------------------------------------------


def local_path(source: str) -> str:
    """A filesystem path from a path or a file: URI (Spark lists files as file:/a/b)."""
    if source.startswith("file://"):
        return source[len("file://"):]
    if source.startswith("file:"):
        return source[len("file:"):]
    return source


def read_source(source: str, max_bytes: int, root: str | None = None) -> bytes:
    """The bytes of a regular file inside `root` (None: anywhere), at most max_bytes of them;
    any other case is a RecordError (pictor.data.files says which)."""
    try:
        return read_bounded(local_path(source), max_bytes, root)
    except UnsafeFile as error:
        raise RecordError(error.reason, error.detail) from None


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------

_SRGB_PROFILE: Any = None
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 or 270 degrees


def _srgb_profile() -> Any:
    global _SRGB_PROFILE
    if _SRGB_PROFILE is None:
        from PIL import ImageCms

        _SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB_PROFILE


def _identify(data: bytes) -> str | None:
    """Pillow's name for the format of `data` over all plugins (header only), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.format
    except Exception:
        return None


def _open(data: bytes, formats: tuple[str, ...]) -> Image.Image:
    Image.init()
    return Image.open(io.BytesIO(data), formats=list(formats))


def _draft_size(width: int, height: int, size: int, resize: str) -> tuple[int, int] | None:
    """JPEG DCT-domain downscaling request: keep >= 2x the final size on the side that sets the
    scale (Pillow's thumbnail() uses the same reducing_gap=2.0), None when not worth it."""
    side = min(width, height) if resize == "center-crop" else max(width, height)
    scale = 2.0 * size / side
    if scale >= 0.5:  # draft only reduces by 1/2, 1/4, 1/8
        return None
    return math.ceil(width * scale), math.ceil(height * scale)


def to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 8-bit sRGB RGB, alpha composited over `background`."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float64)  # (H, W)
        if im.mode == "F":
            v8 = np.clip(np.rint(arr), 0, 255)
        else:  # 16-bit range: v8 = round(v * 255 / 65535)
            v8 = np.floor(np.clip(arr, 0, 65535) * 255.0 / 65535.0 + 0.5)
        im = Image.fromarray(v8.astype(np.uint8), "L")
    icc = im.info.get("icc_profile")
    if icc and im.mode in ("RGB", "RGBA", "CMYK"):
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
            im = ImageCms.profileToProfile(im, src, _srgb_profile(), outputMode=out_mode)
        except Exception:  # a broken or exotic profile: fall back to Pillow's conversion
            pass
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")


def fit_square(im: Image.Image, size: int, resize: str,
               background: tuple[int, int, int]) -> Image.Image:
    """An RGB image -> size x size by centre-crop or by padding (bicubic, antialiased)."""
    if im.size == (size, size):
        return im
    if resize == "center-crop":
        return ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
    return ImageOps.pad(im, (size, size), method=Image.Resampling.BICUBIC, color=background)


@dataclass
class DecodedImage:
    image: Image.Image          # size x size RGB
    format: str                 # Pillow format of the source
    source_size: tuple[int, int]  # (width, height) of the source after EXIF rotation


def _decode_error(reason: str, error: Exception) -> RecordError:
    """The RecordError of an exception raised while decoding: a failed allocation is the
    memory limit's doing (pictor.data.isolation), anything else the file's."""
    if isinstance(error, MemoryError):
        return RecordError("out_of_memory", f"{type(error).__name__} (max_record_memory_bytes)")
    return RecordError(reason, f"{type(error).__name__}: {error}")


def decode_image(data: bytes, options: PrepareOptions) -> DecodedImage:
    """Source bytes -> a square RGB image (see the module docstring); RecordError on failure."""
    try:
        with warnings.catch_warnings():
            # Our own limit (max_pixels) is checked below; Pillow raises DecompressionBombError
            # by itself only past 2x its MAX_IMAGE_PIXELS.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open(data, options.formats)
    except Image.DecompressionBombError as error:
        raise RecordError("too_many_pixels", str(error)) from None
    except UnidentifiedImageError:
        found = _identify(data)
        if found is not None and found not in options.formats:
            raise RecordError("format_not_allowed", f"{found} is not one of "
                              f"{', '.join(options.formats)}") from None
        raise RecordError("corrupt_image", "not a decodable image of an allowed format "
                          f"({', '.join(options.formats)})") from None
    except Exception as error:
        raise _decode_error("corrupt_image", error) from None
    with im:
        width, height = im.size
        if width * height > options.max_pixels:
            raise RecordError("too_many_pixels", f"{width} x {height} = {width * height} "
                              f"pixels > max_pixels={options.max_pixels}")
        if width < 1 or height < 1:
            raise RecordError("corrupt_image", f"size {width} x {height}")
        fmt = im.format or "unknown"
        if fmt not in options.formats and not (fmt == "MPO" and "JPEG" in options.formats):
            raise RecordError("format_not_allowed", f"{fmt} is not one of "
                              f"{', '.join(options.formats)}")
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
        except Exception:
            orientation = 1
        try:
            if fmt in _JPEG_FORMATS:
                request = _draft_size(width, height, options.image_size, options.resize)
                if request is not None:
                    im.draft(None, request)
            # The address-space limit of the record's process cannot see memory it reuses from
            # what it inherited (Pillow decodes in 16 MB blocks, which a long-lived parent's free
            # heap can hold): refuse a decode that cannot fit before it starts.
            decoded = im.size[0] * im.size[1] * 4  # Pillow stores a pixel in up to 4 bytes
            if decoded > options.max_record_memory_bytes:
                raise RecordError("out_of_memory", f"decoding {im.size[0]} x {im.size[1]} needs "
                                  f"~{decoded} bytes > max_record_memory_bytes="
                                  f"{options.max_record_memory_bytes}")
            im.load()
        except RecordError:
            raise
        except Exception as error:
            reason = "truncated_image" if "truncated" in str(error).lower() else "corrupt_image"
            raise _decode_error(reason, error) from None
        try:
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im
            rgb = to_rgb(upright, options.background)
            out = fit_square(rgb, options.image_size, options.resize, options.background)
        except Exception as error:
            raise _decode_error("corrupt_image", error) from None
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return DecodedImage(out, fmt, (width, height))


def encode_png(im: Image.Image, compress_level: int = 1) -> bytes:
    """PNG bytes of an RGB image without ancillary chunks (no ICC, EXIF or text)."""
    clean = Image.frombytes("RGB", im.size, im.tobytes())
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

_ZERO_WIDTH_JOINER = "\u200d"  # kept: it glues emoji sequences


def clean_caption(text: str) -> str:
    """NFC-normalised, control and format characters removed, whitespace runs -> one space."""
    text = unicodedata.normalize("NFC", text)
    chars = []
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Cc", "Zs", "Zl", "Zp"):
            chars.append(" ")  # tabs, newlines, no-break and other spaces
        elif category in ("Cf", "Co", "Cs") and ch != _ZERO_WIDTH_JOINER:
            continue  # BOM, zero-width spaces, bidi marks, private use, lone surrogates
        else:
            chars.append(ch)
    return " ".join("".join(chars).split())


def decode_caption(caption: str | None, caption_bytes: bytes | None) -> str:
    """The caption text of a record (not yet cleaned); RecordError when absent or undecodable."""
    if caption is None and caption_bytes is None:
        raise RecordError("missing_caption", "no caption for this image")
    if caption is None:
        try:
            caption = caption_bytes.decode("utf-8-sig")  # type: ignore[union-attr]
        except UnicodeDecodeError as error:
            bad = error.object[error.start:error.start + 1].hex()
            raise RecordError("caption_undecodable", f"byte 0x{bad} at position "
                              f"{error.start} is not UTF-8") from None
    if "\ufffd" in caption:
        raise RecordError("caption_undecodable", "holds U+FFFD (bytes replaced by an earlier, "
                          "failed decode)")
    return caption


_TOKENIZERS: dict[str, Any] = {}  # per process: loading a tokenizer takes ~0.1-1 s


def load_tokenizer(path: str) -> Any:
    """The Hugging Face tokenizer in folder `path` (cached per process, never downloaded)."""
    if path not in _TOKENIZERS:
        import transformers

        _TOKENIZERS[path] = transformers.AutoTokenizer.from_pretrained(path,
                                                                       local_files_only=True)
    return _TOKENIZERS[path]


def count_tokens(text: str, tokenizer_path: str | None) -> int:
    """Tokens of `text` including special tokens: the tokenizer's count, else the word rule."""
    if tokenizer_path is None:
        return len(_WORD_RULE.findall(text)) + WORD_RULE_SPECIAL_TOKENS
    tokenizer = load_tokenizer(tokenizer_path)
    return len(tokenizer(text, add_special_tokens=True, truncation=False,
                         verbose=False)["input_ids"])


# Control characters that are whitespace: cleaned to a space. Every other control character
# (NUL, ESC, DEL, C1 controls) and every lone surrogate rejects the caption: they come from
# binary garbage or from an attempt to smuggle terminal or markup control into the data.
_WHITESPACE_CONTROLS = "\t\n\v\f\r\x85"


def forbidden_character(text: str) -> str | None:
    """A description of the first control character or lone surrogate of `text`, or None."""
    for position, ch in enumerate(text):
        category = unicodedata.category(ch)
        if (category == "Cc" and ch not in _WHITESPACE_CONTROLS) or category == "Cs":
            return f"U+{ord(ch):04X} at character {position}"
    return None


def removed_characters(text: str) -> list[str]:
    """The format and private-use characters that clean_caption removes, as U+XXXX (sorted)."""
    return sorted({f"U+{ord(ch):04X}" for ch in unicodedata.normalize("NFC", text)
                   if unicodedata.category(ch) in ("Cf", "Co") and ch != _ZERO_WIDTH_JOINER})


def check_caption(caption: str | None, caption_bytes: bytes | None,
                  options: PrepareOptions) -> tuple[str, str | None]:
    """(decoded, cleaned and checked caption, a note on invisible characters removed or None);
    RecordError otherwise."""
    decoded = decode_caption(caption, caption_bytes)
    bad = forbidden_character(decoded)
    if bad is not None:
        raise RecordError("caption_control_chars", bad)
    text = clean_caption(decoded)
    if not text:
        raise RecordError("caption_empty", "empty after removing whitespace and control "
                          "characters")
    if len(text) > MAX_CAPTION_CHARS:
        raise RecordError("caption_too_long", f"{len(text)} characters > {MAX_CAPTION_CHARS}")
    num_tokens = count_tokens(text, options.tokenizer_path)
    if num_tokens > options.max_caption_tokens:
        rule = "tokenizer" if options.tokenizer_path else "word rule"
        raise RecordError("caption_too_long", f"{num_tokens} tokens ({rule}) > "
                          f"max_caption_tokens={options.max_caption_tokens}")
    removed = removed_characters(decoded)
    note = f"caption cleaned: removed {', '.join(removed)}" if removed else None
    return text, note


# ----------------------------------------------------------------------------------------------
# One record, one batch
# ----------------------------------------------------------------------------------------------


def prepare_record(raw: dict[str, Any], options: PrepareOptions) -> dict[str, Any]:
    """One raw record (RAW_SCHEMA dict) -> one prepared record (PREPARED_SCHEMA dict). An ok
    record's `detail` notes invisible caption characters removed (None when there were none)."""
    out: dict[str, Any] = {name: None for name in PREPARED_SCHEMA.names}
    out.update(key=raw["key"], source=raw["source"], extra=raw.get("extra"))
    try:
        if raw.get("error"):
            raise RecordError(raw["error"], raw.get("error_detail") or "")
        data = raw.get("image")
        if data is None:
            data = read_source(raw["source"], options.max_file_bytes, options.allowed_root)
        out["sha256"] = hashlib.sha256(data).hexdigest()
        if not data:
            raise RecordError("empty_file", "0 bytes")
        if len(data) > options.max_file_bytes:
            raise RecordError("file_too_large", f"{len(data)} bytes > "
                              f"max_file_bytes={options.max_file_bytes}")
        caption_bytes = raw.get("caption_bytes")
        if raw.get("caption") is None and caption_bytes is None and raw.get("caption_source"):
            caption_bytes = read_source(raw["caption_source"], options.max_file_bytes,
                                        options.allowed_root)
        out["caption"], note = check_caption(raw.get("caption"), caption_bytes, options)
        decoded = decode_image(data, options)
        png = encode_png(decoded.image, options.png_compress_level)
    except RecordError as error:
        out.update(status=STATUS_SKIPPED, reason=error.reason, detail=error.detail)
        return out
    except MemoryError as error:  # hashing, caption or PNG encoding under the memory limit
        failure = _decode_error("corrupt_image", error)
        out.update(status=STATUS_SKIPPED, reason=failure.reason, detail=failure.detail)
        return out
    out.update(image=png, width=decoded.image.width, height=decoded.image.height,
               source_format=decoded.format, source_width=decoded.source_size[0],
               source_height=decoded.source_size[1], status=STATUS_OK, detail=note)
    return out


def failed_record(raw: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    """The prepared record of a raw record whose transform hung or crashed."""
    out: dict[str, Any] = {name: None for name in PREPARED_SCHEMA.names}
    out.update(key=raw["key"], source=raw["source"], extra=raw.get("extra"),
               status=STATUS_SKIPPED, reason=reason, detail=detail)
    return out


def prepare_batch(batch: pa.RecordBatch | pa.Table, options: PrepareOptions) -> pa.RecordBatch:
    """A batch of raw records -> the batch of prepared records, same order; each record runs
    under the time and memory limits of pictor.data.isolation."""
    rows = run_isolated(batch.to_pylist(), lambda raw: prepare_record(raw, options),
                        failed_record,
                        timeout_seconds=options.record_timeout_seconds,
                        memory_bytes=options.max_record_memory_bytes)
    return pa.RecordBatch.from_pylist(rows, schema=PREPARED_SCHEMA)


def prepare_batches(batches: Iterable[pa.RecordBatch],
                    options: PrepareOptions) -> Iterator[pa.RecordBatch]:
    """The mapInArrow form: an iterator of raw batches -> an iterator of prepared batches."""
    for batch in batches:
        if batch.num_rows:
            yield prepare_batch(batch, options)


def extra_json(values: dict[str, Any]) -> str | None:
    """Other metadata of a record as compact JSON (None when there is none). Lone surrogates
    (JSON input may hold them; Arrow strings may not) are kept as \\u escapes."""
    if not values:
        return None
    text = json.dumps(values, sort_keys=True, ensure_ascii=False)
    return text if is_utf8_safe(text) else json.dumps(values, sort_keys=True)


def is_utf8_safe(text: str) -> bool:
    """False when `text` holds a lone surrogate (not encodable as UTF-8, so not in Arrow)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
