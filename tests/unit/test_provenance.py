import json

import numpy as np
import pytest
from PIL import Image

from pictor.provenance import (
    DIGITAL_SOURCE_TYPE,
    ITXT_KEY,
    ProvenanceRecord,
    read_digital_source_type,
    read_provenance,
    save_png,
)


def _record(**kw):
    base = dict(prompt="a red circle & <b>", seed=7, sampler="dpm++2m", num_steps=20,
                guidance_scale=5.0, model_name="shapes-v2", model_sha256="ab" * 32,
                negative_prompt="a blue square")
    base.update(kw)
    return ProvenanceRecord(**base)


def test_round_trip_keeps_every_field_and_pixels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    record = _record()
    path = save_png(Image.fromarray(pixels), tmp_path / "x.png", record)
    back = read_provenance(path)
    assert back == record
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), pixels)


def test_record_is_versioned_json_in_itxt(tmp_path):
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", _record())
    raw = Image.open(path).text[ITXT_KEY]
    data = json.loads(raw)
    assert data["schema"] == "pictor.provenance/1"
    assert data["synthetic"] is True
    # iTXt, not tEXt: the chunk type in the file itself
    assert b"iTXt" + ITXT_KEY.encode() in path.read_bytes()


def test_xmp_digital_source_type(tmp_path):
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", _record())
    assert read_digital_source_type(path) == DIGITAL_SOURCE_TYPE
    assert DIGITAL_SOURCE_TYPE.endswith("trainedAlgorithmicMedia")


def test_image_without_record_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(ValueError, match="no pictor provenance record"):
        read_provenance(path)
    assert read_digital_source_type(path) is None


def test_unknown_schema_is_rejected():
    with pytest.raises(ValueError, match="unsupported provenance schema"):
        ProvenanceRecord.from_dict({"schema": "other/9"})
