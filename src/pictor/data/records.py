"""The one record schema of prepared data: image, caption, metadata, and what became of it.

Every engine of `pictor data prepare` (local process pool, Spark) and `pictor data synth
--format shards` speak these Arrow schemas, so that one reader serves them all.

    RAW_SCHEMA       what an input layout yields per candidate record, before the transform
    PREPARED_SCHEMA  what the per-record transform (pictor.data.prepare) returns: every raw
                     record comes out exactly once, with a status and, when skipped, a reason
    SHARD_SCHEMA     the columns of a training shard (records whose status is "ok")
    REJECT_SCHEMA    the columns of `rejects.jsonl` (every other record)

Images in shards are PNG bytes (lossless, so both engines write the same pixels, and a
64 x 64 image costs a few KB); `extra` is a JSON object of whatever other metadata the input
carried (e.g. the shapes world's category and example seed).
"""

from __future__ import annotations

import pyarrow as pa

# ----------------------------------------------------------------------------------------------
# Statuses and reasons
# ----------------------------------------------------------------------------------------------

STATUS_OK = "ok"                # written to a shard
STATUS_SKIPPED = "skipped"      # not written; `reason` says why
STATUS_DUPLICATE = "duplicate"  # same source bytes as a record with a smaller key (written)
STATUSES = (STATUS_OK, STATUS_SKIPPED, STATUS_DUPLICATE)

# reason -> what it means (the report prints these). Reasons are stable identifiers: tests,
# dashboards and users grep for them.
REASONS: dict[str, str] = {
    # the file itself
    "missing_file": "the file named by the input does not exist or cannot be read",
    "empty_file": "the file has zero bytes",
    "file_too_large": "the file is larger than max_file_bytes",
    "unsupported_file": "a file that is neither an image nor a caption (by its extension)",
    "not_regular_file": "a device, FIFO, socket or folder where a file was expected",
    "outside_root": "the path resolves outside the input folder (see --allow-outside-root)",
    # the image
    "format_not_allowed": "an image format outside the allow-list (e.g. PSD, ICO)",
    "corrupt_image": "Pillow cannot decode the bytes as an image of an allowed format",
    "truncated_image": "the image data ends early (an interrupted download or copy)",
    "too_many_pixels": "width x height above max_pixels (a decompression bomb or a huge scan)",
    "corrupt_archive": "a WebDataset tar that cannot be read (from this point on)",
    "missing_image": "a caption without an image of the same name",
    # the caption
    "missing_caption": "an image without a caption (.txt file, metadata row or tar member)",
    "caption_undecodable": "the caption bytes are not UTF-8 (or hold U+FFFD from a bad decode)",
    "caption_empty": "the caption is empty after clean-up",
    "caption_too_long": "more tokens than the text encoder's budget (max_caption_tokens)",
    "caption_control_chars": "the caption holds control characters (NUL, ESC, ...) or lone "
                             "surrogates",
    # the input listing
    "bad_metadata": "a metadata or manifest line that does not parse, or names no file",
    # the transform itself
    "timeout": "preparing the record took longer than record_timeout_seconds",
    "out_of_memory": "preparing the record needed more than max_record_memory_bytes",
    "worker_crashed": "the process preparing the record died (a crash or the OOM killer)",
    # de-duplication
    "duplicate": "the same source bytes as a record with a smaller key",
}

# ----------------------------------------------------------------------------------------------
# Arrow schemas
# ----------------------------------------------------------------------------------------------

RAW_SCHEMA = pa.schema([
    ("key", pa.string()),             # unique, sortable id: path relative to the input root
    ("source", pa.string()),          # where the image came from (path, or tar#member)
    ("image", pa.binary()),           # source bytes; null: read them from `source`
    ("caption", pa.string()),         # caption text (metadata/manifest inputs)
    ("caption_bytes", pa.binary()),   # caption file bytes (.txt inputs), decoded by the transform
    ("caption_source", pa.string()),  # caption file to read when both caption fields are null
    ("extra", pa.string()),           # JSON object of other metadata, or null
    ("error", pa.string()),           # a reason decided by the listing (e.g. missing_caption)
    ("error_detail", pa.string()),    # its human-readable detail
])

SHARD_SCHEMA = pa.schema([
    ("key", pa.string()),             # as in RAW_SCHEMA; shards are sorted by it
    ("caption", pa.string()),         # cleaned caption
    ("image", pa.binary()),           # PNG bytes, RGB, 8 bit, width x height
    ("width", pa.int32()),            # = height = the prepared image_size
    ("height", pa.int32()),
    ("sha256", pa.string()),          # hex digest of the *source* bytes (exact de-duplication)
    ("source", pa.string()),
    ("source_format", pa.string()),   # Pillow format name: JPEG, PNG, ...
    ("source_width", pa.int32()),     # size of the decoded source, after EXIF rotation
    ("source_height", pa.int32()),
    ("extra", pa.string()),
])

PREPARED_SCHEMA = pa.schema([
    *SHARD_SCHEMA,
    ("status", pa.string()),          # one of STATUSES
    ("reason", pa.string()),          # a key of REASONS, or null when ok
    ("detail", pa.string()),          # human-readable specifics (exception text, token count)
])

REJECT_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("sha256", pa.string()),
])

SHARD_COLUMNS = tuple(SHARD_SCHEMA.names)
REJECT_COLUMNS = tuple(REJECT_SCHEMA.names)


def empty_raw(**values: object) -> dict[str, object]:
    """A raw record (dict over RAW_SCHEMA) with every field null except `values`."""
    unknown = set(values) - set(RAW_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown raw record fields {sorted(unknown)}; valid: {RAW_SCHEMA.names}")
    return {name: values.get(name) for name in RAW_SCHEMA.names}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly the columns of `schema`, in its order and types (Spark writes
    nullable int32s and its own metadata; this makes every engine's output compare equal)."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing}; expected {schema.names}")
    return table.select(schema.names).cast(schema).replace_schema_metadata(None)
