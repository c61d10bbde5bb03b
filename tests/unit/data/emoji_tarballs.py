"""Small emoji packages in each real package's own format, built in a test's folder.

`emoji-datasource-<vendor>`: package/package.json, package/emoji.json (the real schema: name,
unified, image, category, subcategory, skin_variations{tone: {unified, image, ...}}, and the
fields the importer ignores) and package/img/<vendor>/64/<image> RGBA PNGs. `openmoji`:
package/data/openmoji.json (annotation, hexcode, group, subgroups, skintone,
skintone_base_hexcode, ...) and package/color/svg/<HEXCODE>.svg, as the npm package ships it
(17.0.0 has no PNGs). Each icon is a disc of its own colour on a transparent canvas, so no two
drawings share pixels. Nothing here touches a registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
TONE_NAMES = ("light", "medium-light", "medium", "medium-dark", "dark")

# (unified, Unicode name, CLDR name, category, subcategory, has skin tones)
EMOJI = [
    ("1F34E", "RED APPLE", "red apple", "Food & Drink", "food-fruit", False),
    ("1F600", "GRINNING FACE", "grinning face", "Smileys & Emotion", "face-smiling", False),
    ("2764-FE0F", "HEAVY BLACK HEART", "red heart", "Smileys & Emotion", "heart", False),
    ("1F408", "CAT", "cat", "Animals & Nature", "animal-mammal", False),
    ("1F415", "DOG", "dog", "Animals & Nature", "animal-mammal", False),
    ("1F697", "AUTOMOBILE", "automobile", "Travel & Places", "transport-ground", False),
    ("26BD", "SOCCER BALL", "soccer ball", "Activities", "sport", False),
    ("1F4A1", "ELECTRIC LIGHT BULB", "light bulb", "Objects", "light & video", False),
    ("1F44D", "THUMBS UP SIGN", "thumbs up", "People & Body", "hand-fingers-closed", True),
    ("1F44B", "WAVING HAND SIGN", "waving hand", "People & Body", "hand-fingers-open", True),
    ("1F44F", "CLAPPING HANDS SIGN", "clapping hands", "People & Body", "hands", True),
    ("1F64F", "PERSON WITH FOLDED HANDS", "folded hands", "People & Body", "hands", True),
]


def _colour(code: str, vendor: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{vendor}:{code}".encode()).digest()
    return digest[0], digest[1], digest[2]


def icon_png(code: str, vendor: str, size: int = 64) -> bytes:
    """A disc of the drawing's own colour on a transparent square."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse((size // 8, size // 8, size - size // 8, size - size // 8),
                               fill=(*_colour(code, vendor), 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def icon_svg(code: str) -> bytes:
    r, g, b = _colour(code, "openmoji")
    return (f'<svg id="emoji" viewBox="0 0 72 72" version="1.1" '
            f'xmlns="http://www.w3.org/2000/svg"><g id="color"><circle cx="36" cy="36" r="26" '
            f'fill="#{r:02x}{g:02x}{b:02x}"/></g></svg>').encode()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tone_suffix(code: str, tone: str) -> str:
    """The toned code: the modifier after the first code point (1F44D-1F3FF)."""
    first, *rest = code.split("-")
    return "-".join([first, tone, *rest])


def datasource_files(vendor: str, emoji=EMOJI) -> dict[str, bytes]:
    items, files = [], {}
    for order, (code, name, _, category, subcategory, toned) in enumerate(emoji):
        image = f"{code.lower()}.png"
        files[f"img/{vendor}/64/{image}"] = icon_png(code, vendor)
        skins = {}
        for tone in TONES if toned else ():
            unified = tone_suffix(code, tone)
            skins[tone] = {"unified": unified, "non_qualified": None,
                           "image": f"{unified.lower()}.png", "sheet_x": 0, "sheet_y": 0,
                           "added_in": "1.0", f"has_img_{vendor}": True}
            files[f"img/{vendor}/64/{unified.lower()}.png"] = icon_png(unified, vendor)
        item = {"name": name, "unified": code, "non_qualified": None, "docomo": None,
                "au": None, "softbank": None, "google": None, "image": image, "sheet_x": 0,
                "sheet_y": order, "short_name": name.lower().replace(" ", "_"),
                "short_names": [name.lower().replace(" ", "_")], "text": None, "texts": None,
                "category": category, "subcategory": subcategory, "sort_order": order,
                "added_in": "0.6", f"has_img_{vendor}": True}
        if skins:
            item["skin_variations"] = skins
        items.append(item)
    files["emoji.json"] = json.dumps(items).encode()
    files["package.json"] = json.dumps({"name": f"emoji-datasource-{vendor}",
                                        "version": "16.0.0"}).encode()
    return files


def openmoji_files(emoji=EMOJI, extras=(("E000", "openmoji"),)) -> dict[str, bytes]:
    """OpenMoji's format; `extras` are OpenMoji's own icons (extras-openmoji group)."""
    items, files = [], {}

    def add(hexcode, annotation, group, subgroup, skintone="", base=""):
        items.append({"emoji": "", "hexcode": hexcode, "group": group, "subgroups": subgroup,
                      "annotation": annotation, "tags": "", "openmoji_tags": "",
                      "openmoji_author": "test", "openmoji_date": "2018-04-18",
                      "skintone": skintone, "skintone_combination": "single" if base else "",
                      "skintone_base_emoji": "", "skintone_base_hexcode": base,
                      "unicode": 1, "order": len(items)})
        files[f"color/svg/{hexcode}.svg"] = icon_svg(hexcode)

    for code, _, cldr, category, subcategory, toned in emoji:
        hexcode = code.replace("-FE0F", "")
        group = "-".join(category.lower().replace("&", " ").split())
        add(hexcode, cldr, group, subcategory)
        for number, (tone, tone_name) in enumerate(zip(TONES, TONE_NAMES, strict=False), start=1):
            if toned:
                add(tone_suffix(hexcode, tone), f"{cldr}: {tone_name} skin tone", group,
                    subcategory, number, hexcode)
    for hexcode, annotation in extras:
        add(hexcode, annotation, "extras-openmoji", "brand")
    files["data/openmoji.json"] = json.dumps(items, ensure_ascii=False).encode()
    files["package.json"] = json.dumps({"name": "openmoji", "version": "17.0.0"}).encode()
    return files


def make_packages(folder: Path, *, broken: dict[str, bytes] | None = None,
                  missing: tuple[str, ...] = ()) -> list[Path]:
    """The three tarballs in `folder`. `broken` replaces files of the twitter package (path
    -> bytes); `missing` leaves files of it out."""
    folder.mkdir(parents=True, exist_ok=True)
    twitter = datasource_files("twitter")
    twitter.update(broken or {})
    for name in missing:
        del twitter[name]
    return [_tar(folder / "emoji-datasource-google-16.0.0.tgz", datasource_files("google")),
            _tar(folder / "emoji-datasource-twitter-16.0.0.tgz", twitter),
            _tar(folder / "openmoji-17.0.0.tgz", openmoji_files())]


def unpack(files: dict[str, bytes], folder: Path) -> Path:
    """The files as an unpacked package folder (folder/package/...)."""
    for name, data in files.items():
        path = folder / "package" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder
