"""What a request to the MLflow model may ask for (pictor.serving.mlflow_requests): defaults,
clear refusals, and the response-size bound that keeps answers inside Model Serving's 16 MB."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from PIL import Image

from pictor.prompts import MAX_PROMPT_CHARS
from pictor.provenance import ProvenanceRecord
from pictor.serving.mlflow_requests import (
    MODEL_SERVING_PAYLOAD_BYTES,
    ImageRequest,
    ServingLimits,
    check_limits,
    decode_image,
    max_response_bytes,
    parse_requests,
    png_base64,
)

LIMITS = ServingLimits()


def test_defaults_fill_missing_and_nan_columns():
    # a pandas frame of rows with different columns gives NaN where a row has none
    rows = [{"prompt": "a red circle"},
            {"prompt": "two stars", "seed": float("nan"), "n": 2.0, "steps": None,
             "guidance": 6, "sampler": "euler"}]
    assert parse_requests(rows, LIMITS) == [
        ImageRequest("a red circle"),
        ImageRequest("two stars", seed=0, steps=20, guidance=6.0, sampler="euler", n=2)]


@pytest.mark.parametrize("rows, message", [
    ([], "no rows"),
    ([{"seed": 1}], "row 0: prompt is required"),
    ([{"prompt": "a", "colour": "red"}], "unknown column(s) colour"),
    ([{"prompt": "a"}, {"prompt": "a\x00b"}], "row 1: prompt holds NUL"),
    ([{"prompt": "a", "seed": 1.5}], "row 0: seed must be an integer, got 1.5"),
    ([{"prompt": "a", "seed": "x"}], "row 0: seed must be an integer, got 'x'"),
    ([{"prompt": "a", "guidance": float("inf")}], "guidance must be a number, got inf"),
    ([{"prompt": "a", "n": 0}], "n must be >= 1"),
    ([{"prompt": "a", "steps": 201}], "steps must lie in [1, 200]"),
    ([{"prompt": "a", "n": 40}, {"prompt": "b", "n": 25}], "asks for 65 images"),
    ([{"prompt": "a", "n": 40, "steps": 100}], "asks for 4000 image-steps"),
])
def test_bad_requests_are_refused_with_the_reason(rows, message):
    with pytest.raises(ValueError) as err:
        parse_requests(rows, LIMITS)
    assert message in str(err.value)


def test_the_caps_are_inclusive():
    rows = [{"prompt": "a", "n": 32, "steps": 50}, {"prompt": "b", "n": 32, "steps": 50}]
    assert sum(r.n for r in parse_requests(rows, LIMITS)) == LIMITS.max_images


def test_the_response_bound_holds_for_the_worst_image_and_prompt():
    """Incompressible pixels and the longest prompt of the characters that grow most when
    escaped (an astral emoji: 4 UTF-8 bytes, a 12-byte JSON escape; a quote: &quot; in XMP)."""
    size = 64
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    prompt = ("\U0001F600\"" * MAX_PROMPT_CHARS)[:MAX_PROMPT_CHARS]
    record = ProvenanceRecord(prompt=prompt, seed=2**63 - 1, sampler="dpm++2m-karras",
                              num_steps=200, guidance_scale=-1.2345678901234567e-300,
                              model_name="m" * 64, model_sha256="f" * 64, width=size,
                              height=size, extra={"compute_dtype": "bfloat16",
                                                  "device": "cpu: some long processor name",
                                                  "guidance_interval": [1.0, None],
                                                  "layout": True,
                                                  "layout_rules": ["relation", "count"]})
    row = {"row": 63, "image": png_base64(Image.fromarray(pixels), record),
           "record": record.to_json()}
    sent = len(json.dumps(row).encode())  # ensure_ascii: the longest escaping of the record
    bound = max_response_bytes(size, size, MAX_PROMPT_CHARS)
    assert sent <= bound
    assert bound < 3 * sent  # and not so loose that it would cap n for nothing
    image, data = decode_image(row)
    assert np.array_equal(np.asarray(image), pixels) and data["prompt"] == prompt
    assert base64.b64decode(row["image"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_limits_past_the_payload_size_are_refused_at_export():
    check_limits(LIMITS, 64)  # the defaults fit the shipped 64 x 64 model
    per_image = max_response_bytes(64, 64, MAX_PROMPT_CHARS)
    fits = MODEL_SERVING_PAYLOAD_BYTES // per_image
    check_limits(ServingLimits(max_images=fits), 64)
    with pytest.raises(ValueError, match=f"use at most {fits}"):
        check_limits(ServingLimits(max_images=fits + 1), 64)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        check_limits(ServingLimits(max_steps=0), 64)
