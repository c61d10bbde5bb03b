"""What one request to pictor's MLflow model (pictor.serving.mlflow_model) may ask for, and
the rows of its answer. No mlflow import here: the CLI and the unit tests use it without one.

One request is a table (`{"dataframe_records": [...]}` or `{"inputs": [...]}`), one row per
prompt:

    prompt   str    required
    seed     long   optional, default 0; image i of the row uses seed + i
    steps    long   optional, default 20
    guidance double optional, default 4
    sampler  str    optional, default dpm++2m
    n        long   optional, default 1; images for this row

The answer has one row per image: `row` (the input row it answers), `image` (base64 PNG that
carries its provenance record: iTXt JSON + XMP digital source type, pictor.provenance) and
`record` (the same record as a JSON string, so a client that never decodes PNG metadata still
sees that the image is synthetic, and with which prompt, seed and model).

Model Serving limits (Databricks docs, "Model Serving limits and regions"): 16 MB payload per
request and per response, 297 s per request, 4 GB of memory on CPU endpoints. ServingLimits
caps the work of one request so that an answer stays inside them (docs/databricks.md has the
measured figures); a request past a cap is refused with 400 before anything is generated.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from pictor.prompts import MAX_PROMPT_CHARS, check_prompt
from pictor.provenance import png_info

# Databricks Model Serving: payload size per request and per response, in bytes (16 MB, read
# as 10^6 bytes: the stricter reading).
MODEL_SERVING_PAYLOAD_BYTES = 16_000_000
MODEL_SERVING_TIMEOUT_SECONDS = 297
MODEL_SERVING_CPU_MEMORY_BYTES = 4 * 1024**3

INPUT_COLUMNS = ("prompt", "seed", "steps", "guidance", "sampler", "n")
OUTPUT_COLUMNS = ("row", "image", "record")


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask for; saved in the MLmodel file (model_config)."""

    # Images in one request, summed over its rows. 64 images of the 64 x 64 shipped model took
    # 44 s at 20 steps on 2 loaded cores here (docs/databricks.md); their worst-case response
    # (max_response_bytes) is ~7 MB of the 16 MB allowed.
    max_images: int = 64
    # Images x sampler steps in one request: the work that decides its time. 64 x 50 keeps a
    # request well inside the 297 s timeout on the 2 cores measured here.
    max_image_steps: int = 64 * 50
    # Steps of one row (the pipeline also refuses more than the schedule's timesteps).
    max_steps: int = 200

    def check(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limit {name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class ImageRequest:
    """One row of a request, defaults filled in."""

    prompt: str
    seed: int = 0
    steps: int = 20
    guidance: float = 4.0
    sampler: str = "dpm++2m"
    n: int = 1


def max_response_bytes(width: int, height: int, max_prompt_chars: int) -> int:
    """An upper bound on the bytes one image adds to a response, for a width x height RGB image
    and a prompt of at most max_prompt_chars characters.

    PNG: the raw scanlines height * (1 + 3 width) (filter byte + RGB), stored uncompressed in
    the worst case (zlib adds 5 bytes per 65,535-byte block), plus chunk headers; the record's
    JSON in iTXt (a prompt character is at most 4 bytes of UTF-8, or a 2-byte escape) and the
    XMP packet (a character is at most 6 bytes as an XML entity, &quot;), each with 2 kB for
    the fixed fields. Base64 makes 4 bytes of every 3. The record column repeats the JSON, and
    the response's own JSON escaping makes each of its bytes at most 6 (a \\uXXXX escape).
    """
    record_json = 2048 + 4 * max_prompt_chars
    xmp = 2048 + 6 * max_prompt_chars
    raw = height * (1 + 3 * width)
    png = 1024 + raw + 5 * (raw // 65535 + 1) + record_json + xmp
    return 4 * math.ceil(png / 3) + 6 * record_json + 64  # + the row's JSON keys and index


def check_limits(limits: ServingLimits, image_size: int) -> None:
    """ValueError unless a request at `limits` answers within Model Serving's payload size."""
    limits.check()
    per_image = max_response_bytes(image_size, image_size, MAX_PROMPT_CHARS)
    if limits.max_images * per_image > MODEL_SERVING_PAYLOAD_BYTES:
        fits = MODEL_SERVING_PAYLOAD_BYTES // per_image
        raise ValueError(
            f"max_images={limits.max_images}: a response of that many {image_size}x{image_size} "
            f"images can reach {limits.max_images * per_image:,} bytes (worst case "
            f"{per_image:,} per image), past Model Serving's {MODEL_SERVING_PAYLOAD_BYTES:,}; "
            f"use at most {fits}")


def _missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a column the row leaves out."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and NA are not equal to themselves
    except (TypeError, ValueError):
        return False


def _number(value: Any, name: str, row: int, integer: bool) -> float:
    """value as a finite number (an integer when asked); ValueError naming the column."""
    kind = "an integer" if integer else "a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or (
            integer and not number.is_integer()):
        raise ValueError(f"row {row}: {name} must be {kind}, got {value!r}")
    return number


def parse_requests(records: list[dict[str, Any]], limits: ServingLimits) -> list[ImageRequest]:
    """The rows of a request with defaults filled in; ValueError saying what is wrong (unknown
    column, bad value, a cap of `limits` passed) before any image is made."""
    if not records:
        raise ValueError("the request has no rows; send at least one {\"prompt\": ...}")
    requests = []
    for i, record in enumerate(records):
        unknown = sorted(set(record) - set(INPUT_COLUMNS))
        if unknown:
            raise ValueError(f"row {i}: unknown column(s) {', '.join(unknown)}; the columns are "
                             f"{', '.join(INPUT_COLUMNS)}")
        given = {k: v for k, v in record.items() if not _missing(v)}
        if "prompt" not in given:
            raise ValueError(f"row {i}: prompt is required")
        try:
            check_prompt(given["prompt"])
        except ValueError as err:
            raise ValueError(f"row {i}: {err}") from None
        values: dict[str, Any] = {"prompt": given["prompt"]}
        for name in ("seed", "steps", "n"):
            if name in given:
                values[name] = int(_number(given[name], name, i, integer=True))
        if "guidance" in given:
            values["guidance"] = _number(given["guidance"], "guidance", i, integer=False)
        if "sampler" in given:
            values["sampler"] = str(given["sampler"])
        request = ImageRequest(**values)
        if request.n < 1:
            raise ValueError(f"row {i}: n must be >= 1, got {request.n}")
        if not 1 <= request.steps <= limits.max_steps:
            raise ValueError(f"row {i}: steps must lie in [1, {limits.max_steps}], "
                             f"got {request.steps}")
        requests.append(request)
    images = sum(r.n for r in requests)
    if images > limits.max_images:
        raise ValueError(f"the request asks for {images} images; this endpoint makes at most "
                         f"{limits.max_images} per request (Model Serving's 16 MB and 297 s "
                         "limits); split it into several requests")
    work = sum(r.n * r.steps for r in requests)
    if work > limits.max_image_steps:
        raise ValueError(f"the request asks for {work} image-steps (n x steps summed over rows); "
                         f"this endpoint runs at most {limits.max_image_steps} per request so "
                         "that it answers within Model Serving's 297 s; use fewer images or "
                         "steps, or split it")
    return requests


def png_base64(image: Any, record: Any) -> str:
    """The image as a PNG carrying `record` (pictor.provenance), base64 encoded."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(record))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(PIL image, record dict) of one answer row: what a client does with a response."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(row["image"])))
    image.load()
    return image, json.loads(row["record"])
