"""The per-record transform: exact pixels for every colour mode, resize modes, caption rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from messy_files import cmyk_jpeg, encode, gray16_png, palette_alpha_png, photo, png_bomb
from PIL import Image

from pictor.data.prepare import (
    PrepareOptions,
    RecordError,
    check_caption,
    clean_caption,
    count_tokens,
    decode_image,
    prepare_record,
)
from pictor.data.records import empty_raw


def pixels(data: bytes, **options) -> np.ndarray:
    return np.asarray(decode_image(data, PrepareOptions(**options)).image)


def reason_of(data: bytes, **options) -> str:
    with pytest.raises(RecordError) as info:
        decode_image(data, PrepareOptions(**options))
    return info.value.reason


def test_16_bit_greyscale_is_scaled_with_rounding_not_clipped():
    data = gray16_png()
    v16 = np.asarray(Image.open(io.BytesIO(data))).astype(np.int64)  # (48, 48) up to 64484
    out = pixels(data, image_size=48)
    assert out.shape == (48, 48, 3)
    expected = np.floor(v16 * 255 / 65535 + 0.5).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 2], expected)
    assert out.max() == 251  # Pillow's convert("RGB") would give 255 almost everywhere


def test_cmyk_becomes_rgb():
    tiff = encode(Image.fromarray(np.array([[[0, 255, 255, 0], [0, 0, 0, 255]]], np.uint8),
                                  "CMYK"), "TIFF")
    out = np.asarray(decode_image(tiff, PrepareOptions(image_size=2, resize="pad",
                                                       background=(7, 7, 7))).image)
    # 2 x 1 padded to 2 x 2: row 0 or 1 holds the image; red and black, the rest background
    rows = [r for r in out.tolist() if r != [[7, 7, 7], [7, 7, 7]]]
    assert rows == [[[255, 0, 0], [0, 0, 0]]]
    jpeg = pixels(cmyk_jpeg(), image_size=60, resize="pad")  # 60 x 40 -> rows 10..49
    assert np.abs(jpeg[30, 10].astype(int) - (255, 0, 0)).max() < 12
    assert np.abs(jpeg[30, 50].astype(int) - (0, 0, 255)).max() < 12


def test_palette_transparency_composited_over_background():
    out = pixels(palette_alpha_png(), image_size=32, background=(10, 20, 30))
    assert (out[0, 0] == (10, 20, 30)).all() and (out[31, 31] == (10, 20, 30)).all()
    assert (out[8:24, 8:24] == (220, 40, 40)).all()
    assert (out[7, 8:24] == (10, 20, 30)).all()


def test_rgba_half_transparent_blends():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[...] = (200, 100, 0, 128)
    out = pixels(encode(Image.fromarray(rgba, "RGBA"), "PNG"), image_size=4, background=(0, 0, 0))
    # alpha_composite: 200 * 128 / 255 = 100.4 -> 100
    assert np.abs(out.astype(int) - (100, 50, 0)).max() <= 1


def test_exif_rotation_and_pad_keep_the_picture_upright():
    im = Image.new("RGB", (8, 4))
    im.paste((255, 0, 0), (0, 0, 4, 4))   # left half red
    im.paste((0, 0, 255), (4, 0, 8, 4))   # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display after rotating 90 degrees clockwise
    data = encode(im, "PNG", exif=exif.tobytes())
    decoded = decode_image(data, PrepareOptions(image_size=8, resize="pad",
                                                background=(0, 255, 0)))
    assert decoded.source_size == (4, 8)  # upright: 4 wide, 8 tall
    out = np.asarray(decoded.image)
    assert (out[:, :2] == (0, 255, 0)).all() and (out[:, 6:] == (0, 255, 0)).all()
    assert (out[:4, 2:6] == (255, 0, 0)).all() and (out[4:, 2:6] == (0, 0, 255)).all()


def test_center_crop_cuts_the_long_side_equally():
    im = Image.new("RGB", (16, 8), (0, 255, 0))
    im.paste((255, 0, 0), (4, 0, 12, 8))
    out = pixels(encode(im, "PNG"), image_size=8, resize="center-crop")
    assert (out == (255, 0, 0)).all()
    big = pixels(encode(photo(300, 200, seed=1), "JPEG"), image_size=64)  # JPEG draft path
    assert big.shape == (64, 64, 3)


def test_limits_formats_and_broken_files():
    assert reason_of(png_bomb()) == "too_many_pixels"  # Pillow's own bomb limit
    small = encode(photo(100, 100, seed=2), "PNG")
    assert reason_of(small, max_pixels=5_000) == "too_many_pixels"  # ours, from the header
    assert reason_of(encode(photo(32, 32, seed=3), "JPEG"), formats=("PNG",)) == \
        "format_not_allowed"
    assert reason_of(encode(photo(32, 32, seed=3), "ICO")) == "format_not_allowed"
    assert reason_of(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50) == "corrupt_image"
    jpeg = encode(photo(64, 64, seed=4), "JPEG")
    assert reason_of(jpeg[: len(jpeg) // 2]) == "truncated_image"
    with pytest.raises(ValueError, match="unknown image formats"):
        PrepareOptions(formats=("JPG",))
    with pytest.raises(ValueError, match="resize"):
        PrepareOptions(resize="stretch")


def test_caption_clean_up_and_checks():
    assert clean_caption("\ufeff  a\tred\u00a0circle\u200b\n\n") == "a red circle"
    assert clean_caption("cafe\u0301") == "caf\u00e9"  # NFC
    opts = PrepareOptions(max_caption_tokens=6)  # word rule: words + punctuation + 2
    assert check_caption(None, b"a red circle.", opts) == ("a red circle.", None)
    # invisible format characters are removed and the removal is noted (reported as cleaned)
    assert check_caption("a red\u200b circle\u202e", None, opts) == (
        "a red circle", "caption cleaned: removed U+200B, U+202E")
    assert count_tokens("a red circle.", None) == 6
    for caption, caption_bytes, reason in [
        (None, None, "missing_caption"),
        (None, b"a \xff circle", "caption_undecodable"),
        ("a \ufffd circle", None, "caption_undecodable"),
        (" \n\t ", None, "caption_empty"),
        ("a red circle and a blue", None, "caption_too_long"),
        ("x" * 100_001, None, "caption_too_long"),
        ("a red\x00 circle", None, "caption_control_chars"),
        (None, b"a \x1b[31mred\x1b[0m circle", "caption_control_chars"),
        ("a red \x85\x9b circle", None, "caption_control_chars"),  # C1 CSI; NEL is a space
        ("a red \ud800 circle", None, "caption_control_chars"),  # lone surrogate (from JSON)
    ]:
        with pytest.raises(RecordError) as info:
            check_caption(caption, caption_bytes, opts)
        assert info.value.reason == reason, caption


def test_token_count_uses_the_encoders_tokenizer():
    from pictor.text.encoders import minilm_path

    path = str(minilm_path())
    # [CLS] a red circle [SEP]; a made-up word splits into several WordPieces
    assert count_tokens("a red circle", path) == 5
    assert count_tokens("a red circle", None) == 5
    assert count_tokens("zxqv", path) > count_tokens("zxqv", None)
    opts = PrepareOptions(max_caption_tokens=5, tokenizer_path=path)
    assert check_caption("a red circle", None, opts) == ("a red circle", None)
    with pytest.raises(RecordError, match="6 tokens"):
        check_caption("a red circle and", None, opts)


def test_prepare_record_reports_every_failure_as_a_status():
    opts = PrepareOptions(image_size=16)
    ok = prepare_record(empty_raw(key="a", source="mem", image=encode(photo(20, 30, 1), "PNG"),
                                  caption="a red circle"), opts)
    assert ok["status"] == "ok" and ok["reason"] is None and (ok["width"], ok["height"]) == (16, 16)
    assert Image.open(io.BytesIO(ok["image"])).size == (16, 16)
    assert len(ok["sha256"]) == 64
    missing = prepare_record(empty_raw(key="b", source="/nonexistent/b.png", caption="x"), opts)
    assert (missing["status"], missing["reason"]) == ("skipped", "missing_file")
    listed = prepare_record(empty_raw(key="c", source="c", error="missing_caption",
                                      error_detail="no c.txt"), opts)
    assert (listed["reason"], listed["detail"]) == ("missing_caption", "no c.txt")
