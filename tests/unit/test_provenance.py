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


HOSTILE_TEXT = "a\x00b\x1b[31m\x07\x7f\x85 \ud800 \ufffe & <x> \"q\" 'a' ]]> \U0001F600 \u202e"


def test_labels_always_parse_whatever_the_record_holds(tmp_path):
    """Control characters, NUL, a lone surrogate, U+FFFE and markup in every text field: the
    XMP packet is well-formed XML 1.0 (the label reads back) and the JSON record round-trips
    exactly (it escapes what it must)."""
    import xml.etree.ElementTree as ET

    from pictor.provenance import XMP_KEY

    record = _record(prompt=HOSTILE_TEXT, negative_prompt=HOSTILE_TEXT,
                     model_name=HOSTILE_TEXT, software=HOSTILE_TEXT, created=HOSTILE_TEXT)
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", record)
    assert read_digital_source_type(path) == DIGITAL_SOURCE_TYPE
    assert read_provenance(path) == record
    xmp = Image.open(path).text[XMP_KEY]
    body = xmp[xmp.index("<x:xmpmeta"):xmp.index("</x:xmpmeta>") + len("</x:xmpmeta>")]
    description = ET.fromstring(body).find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")
    assert description.text.endswith("a\ufffdb\ufffd[31m\ufffd\x7f\x85 \ufffd \ufffd & <x> "
                                     "\"q\" 'a' ]]> \U0001F600 \u202e")


@pytest.mark.parametrize("data, problem", [
    ([1, 2], "not a JSON object"),
    ({"schema": "pictor.provenance/1", "prompt": "a", "seed": "7", "sampler": "ddim",
      "num_steps": 2, "guidance_scale": 1.0, "model_name": "m", "model_sha256": "0"},
     "field 'seed' must be int, got str"),
    ({"schema": "pictor.provenance/1", "prompt": 5, "seed": 7, "sampler": "ddim",
      "num_steps": 2, "guidance_scale": 1.0, "model_name": "m", "model_sha256": "0"},
     "field 'prompt' must be str"),
    ({"schema": "pictor.provenance/1", "prompt": "a", "seed": True, "sampler": "ddim",
      "num_steps": 2, "guidance_scale": 1.0, "model_name": "m", "model_sha256": "0"},
     "field 'seed' must be int, got bool"),
    ({"schema": "pictor.provenance/1", "prompt": "a", "seed": 7, "sampler": "ddim",
      "num_steps": 2, "guidance_scale": 1.0, "model_name": "m", "model_sha256": "0",
      "extra": []}, "field 'extra' must be dict"),
])
def test_malformed_records_are_value_errors_naming_the_field(data, problem):
    with pytest.raises(ValueError, match=problem):
        ProvenanceRecord.from_dict(data)


def test_malformed_xmp_is_a_value_error(tmp_path):
    from PIL import PngImagePlugin

    from pictor.provenance import XMP_KEY

    for xmp in ("<x:xmpmeta><rdf:RDF>\x01</x:xmpmeta>", "no packet at all"):
        info = PngImagePlugin.PngInfo()
        info.add_itxt(XMP_KEY, xmp)
        path = tmp_path / "bad.png"
        Image.new("RGB", (4, 4)).save(path, pnginfo=info)
        with pytest.raises(ValueError, match="XMP packet"):
            read_digital_source_type(path)
