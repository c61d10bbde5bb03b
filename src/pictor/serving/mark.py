"""The optional visible label: "AI-generated" stamped into a corner of the pixels.

The provenance record (iTXt JSON + XMP digital source type, pictor.provenance) is in every
served image anyway; metadata is dropped by many re-encoders and screenshots, a visible label
is not. It changes the pixels, so the record notes it (`extra["visible_mark"]`).
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

LABEL = "AI-generated"
SHORT_LABEL = "AI"  # for images too narrow for the full label (e.g. 16 x 16 test models)


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(8, height // 24)
    try:
        return ImageFont.load_default(size=size)  # FreeType build of Pillow: scalable
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def add_visible_mark(image: Image.Image, label: str = LABEL) -> Image.Image:
    """A copy of `image` (RGB) with `label` in white on a dark band at the bottom right; the
    short label when the full one does not fit, nothing when neither does."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out, "RGBA")
    font = _font(out.height)
    for text in (label, SHORT_LABEL):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left, bottom - top
        if width + 2 <= out.width and height + 2 <= out.height:
            x0, y0 = out.width - width - 2, out.height - height - 2
            draw.rectangle((x0 - 1, y0 - 1, out.width, out.height), fill=(0, 0, 0, 170))
            draw.text((x0 - left, y0 - top), text, font=font, fill=(255, 255, 255, 255))
            return out
    return out
