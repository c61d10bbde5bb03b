"""The provenance record written into every generated PNG, and reading it back.

Every image pictor writes says that it is synthetic and what made it, in two machine-readable
places of the PNG:

1. an iTXt chunk with keyword ``pictor.provenance``: a versioned JSON record (prompt, negative
   prompt, seed, sampler, steps, guidance, model name and sha256, software version, time);
2. an XMP packet (iTXt keyword ``XML:com.adobe.xmp``, as Adobe's XMP spec part 3 places it in
   PNG) carrying the IPTC Digital Source Type ``trainedAlgorithmicMedia``, the vocabulary term
   that IPTC defines for "media created by a model trained on sampled content"; tools such as
   exiftool read it as ``XMP-iptcExt:DigitalSourceType``.

The record is what `pictor inspect` prints and what `pictor reproduce` regenerates from.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, PngImagePlugin

from pictor import __version__

SCHEMA = "pictor.provenance/1"
ITXT_KEY = "pictor.provenance"
XMP_KEY = "XML:com.adobe.xmp"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@dataclass
class ProvenanceRecord:
    """What made one image. Field names are the JSON keys of schema ``pictor.provenance/1``."""

    prompt: str
    seed: int  # the seed of this very image (a batch of n uses seed, seed + 1, ...)
    sampler: str  # canonical sampler name, e.g. "dpm++2m"
    num_steps: int
    guidance_scale: float
    model_name: str
    model_sha256: str  # sha256 over the model's weight files, see pipeline.model_digest
    negative_prompt: str = ""
    width: int = 64
    height: int = 64
    extra: dict[str, Any] = field(default_factory=dict)  # sampler options, guidance rescale, ...
    software: str = f"pictor {__version__}"
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    synthetic: bool = True
    digital_source_type: str = DIGITAL_SOURCE_TYPE
    schema: str = SCHEMA

    def to_json(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: kept as a \\u escape, never a crash
            text = json.dumps(asdict(self), sort_keys=True)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProvenanceRecord:
        """The record of a parsed JSON object; ValueError naming the first malformed field."""
        if not isinstance(data, dict):
            raise ValueError(f"provenance record is not a JSON object ({type(data).__name__})")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ValueError(
                f"unsupported provenance schema {schema!r}; this pictor reads {SCHEMA!r}"
            )
        known = set(cls.__dataclass_fields__)
        missing = {"prompt", "seed", "sampler", "num_steps", "guidance_scale", "model_name",
                   "model_sha256"} - set(data)
        if missing:
            raise ValueError(f"provenance record lacks fields: {', '.join(sorted(missing))}")
        for name, types in _FIELD_TYPES.items():
            value = data.get(name)
            if name in data and (not isinstance(value, types) or isinstance(value, bool)
                                 and bool not in types):
                raise ValueError(f"provenance record field {name!r} must be "
                                 f"{' or '.join(t.__name__ for t in types)}, got "
                                 f"{type(value).__name__}")
        return cls(**{k: v for k, v in data.items() if k in known})


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,), "negative_prompt": (str,), "seed": (int,), "sampler": (str,),
    "num_steps": (int,), "guidance_scale": (int, float), "model_name": (str,),
    "model_sha256": (str,), "width": (int,), "height": (int,), "extra": (dict,),
    "software": (str,), "created": (str,), "synthetic": (bool,),
    "digital_source_type": (str,),
}


def xml_text(text: str) -> str:
    """`text` escaped for XML 1.0 character data and attributes, every character XML 1.0 does
    not allow (controls but tab, newline and carriage return; lone surrogates; U+FFFE, U+FFFF)
    replaced by U+FFFD, so that the packet always parses (XML 1.0 section 2.2, Char)."""
    safe = "".join(ch if _xml_allowed(ord(ch)) else "\ufffd" for ch in text)
    return escape(safe, {'"': "&quot;"})


def _xml_allowed(code: int) -> bool:
    return (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
            or 0x10000 <= code <= 0x10FFFF)


def _xmp_packet(record: ProvenanceRecord) -> str:
    """A minimal XMP packet with the IPTC digital source type and a human-readable description."""
    description = xml_text(f"AI-generated by {record.software} ({record.model_name}): "
                           f"{record.prompt}")
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    Iptc4xmpExt:DigitalSourceType="{xml_text(record.digital_source_type)}"\n'
        f'    xmp:CreatorTool="{xml_text(record.software)}"\n'
        f'    xmp:CreateDate="{xml_text(record.created)}">\n'
        "   <dc:description><rdf:Alt>"
        f'<rdf:li xml:lang="x-default">{description}</rdf:li>'
        "</rdf:Alt></dc:description>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )


def png_info(record: ProvenanceRecord) -> PngImagePlugin.PngInfo:
    """PNG text chunks for `Image.save(..., pnginfo=...)`."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(ITXT_KEY, record.to_json())
    info.add_itxt(XMP_KEY, _xmp_packet(record))
    return info


def save_png(image: Image.Image, path: str | Path, record: ProvenanceRecord) -> Path:
    """Write `image` as a PNG that carries `record`. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=png_info(record))
    return path


def read_provenance(source: str | Path | Image.Image) -> ProvenanceRecord:
    """The record of a pictor PNG. ValueError when the image carries none."""
    image = source if isinstance(source, Image.Image) else Image.open(source)
    text = getattr(image, "text", None) or image.info
    raw = text.get(ITXT_KEY)
    if raw is None:
        where = source if not isinstance(source, Image.Image) else "this image"
        raise ValueError(
            f"{where} carries no pictor provenance record (no iTXt chunk {ITXT_KEY!r}); "
            "was it written by pictor, or re-saved by another program that dropped metadata?"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"provenance record is not valid JSON: {err}") from err
    return ProvenanceRecord.from_dict(data)


def read_digital_source_type(source: str | Path | Image.Image) -> str | None:
    """The IPTC DigitalSourceType from the image's XMP packet, or None."""
    import xml.etree.ElementTree as ET

    image = source if isinstance(source, Image.Image) else Image.open(source)
    text = getattr(image, "text", None) or image.info
    xmp = text.get(XMP_KEY)
    if not xmp:
        return None
    start, end = xmp.find("<x:xmpmeta"), xmp.find("</x:xmpmeta>")
    if start < 0 or end < start:
        raise ValueError("the XMP packet holds no x:xmpmeta element")
    try:
        root = ET.fromstring(xmp[start:end + len("</x:xmpmeta>")])
    except ET.ParseError as error:
        raise ValueError(f"the XMP packet is not well-formed XML ({error})") from None
    attr = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"
    for node in root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description"):
        if attr in node.attrib:
            return node.attrib[attr]
    return None
