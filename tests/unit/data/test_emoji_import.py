"""`pictor data import emoji` on small packages in each real package's format (emoji_tarballs):
captions, skin tones, licences, ATTRIBUTION, images, rejects, the held-out split's promises, and
`pictor data prepare` reading the result. Nothing here fetches from a registry."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections import Counter

import pytest
from emoji_tarballs import datasource_files, icon_png, make_packages, openmoji_files, unpack
from PIL import Image

from pictor.cli.main import main
from pictor.data.emoji import Entry, drop_seen_pixels, import_emoji
from pictor.data.emoji_packages import PINS, Pin, copy_pinned, fetch_packages, file_sha256
from pictor.data.emoji_split import HELDOUT_SPLITS, Drawing, SplitShares, check
from pictor.data.shards import read_shards

# Shares large enough that 13 identities fill every held-out split (the defaults are 2/10/15%).
SHARES = SplitShares(unseen=0.15, style=0.4, composition=0.7)
BROKEN = "img/twitter/64/1f415.png"  # the dog, cut after 60 bytes
MISSING = "img/twitter/64/1f697.png"  # the car, left out of the tarball


def read_rows(out) -> list[dict]:
    return [json.loads(line) for folder in ("train", "heldout")
            for line in (out / folder / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    good = datasource_files("twitter")[BROKEN]
    tarballs = make_packages(root / "npm", broken={BROKEN: good[:60]}, missing=(MISSING,))
    out = root / "out"
    summary = import_emoji([str(t) for t in tarballs], str(out), shares=SHARES,
                           progress=False)
    rows = read_rows(out)
    return out, summary, rows, {(r["style"], r["code"]): r for r in rows}


def test_captions_are_the_cldr_name_and_the_style(imported):
    _, _, _, by = imported
    assert by["noto", "1F34E"]["text"] == "red apple, Noto Emoji style"
    assert by["twemoji", "1F600"]["text"] == "grinning face, Twemoji style"
    # emoji-datasource calls it HEAVY BLACK HEART (and writes 2764-FE0F); OpenMoji's CLDR name
    # serves every style
    assert by["noto", "2764"]["text"] == "red heart, Noto Emoji style"
    assert by["openmoji", "2764"]["text"] == "red heart, OpenMoji style"
    assert by["openmoji", "E000"]["text"] == "openmoji, OpenMoji style"
    assert by["twemoji", "1F600"]["category"] == "smileys-emotion"
    assert by["twemoji", "1F600"]["subcategory"] == "face-smiling"
    assert by["openmoji", "E000"]["category"] == "extras-openmoji"
    # emoji-datasource writes Unicode's "light & video", OpenMoji "light-video"
    assert by["noto", "1F4A1"]["subcategory"] == by["openmoji", "1F4A1"]["subcategory"] \
        == "light-video"


def test_skin_tone_captions(imported):
    _, _, _, by = imported
    row = by["twemoji", "1F44D-1F3FF"]
    assert row["text"] == "thumbs up: dark skin tone, Twemoji style"
    assert row["skin_tones"] == ["dark skin tone"] and row["emoji"] == "1F44D"
    assert by["openmoji", "1F44B-1F3FC"]["text"] == \
        "waving hand: medium-light skin tone, OpenMoji style"
    assert by["noto", "1F44B"]["skin_tones"] == []


def test_names_from_emoji_datasource_alone(tmp_path):
    """Without OpenMoji the names are the Unicode names in lower case, tones in CLDR form."""
    source = make_packages(tmp_path / "npm")[0]
    import_emoji([str(source)], str(tmp_path / "out"), progress=False)
    by = {r["code"]: r for r in read_rows(tmp_path / "out")}
    assert by["1F34E"]["text"] == "red apple, Noto Emoji style"
    assert by["1F44D-1F3FF"]["text"] == "thumbs up sign: dark skin tone, Noto Emoji style"
    assert by["1F44D-1F3FF"]["category"] == "people-body"


def test_licence_per_record_and_attribution(imported):
    out, _, rows, _ = imported
    licences = {"noto": "Apache-2.0", "twemoji": "CC-BY-4.0", "openmoji": "CC-BY-SA-4.0"}
    assert {r["style"] for r in rows} == set(licences)
    assert all(r["license"] == licences[r["style"]] for r in rows)
    packages = {r["style"]: r["package"] for r in rows}
    assert packages == {"noto": "emoji-datasource-google@16.0.0",
                        "twemoji": "emoji-datasource-twitter@16.0.0",
                        "openmoji": "openmoji@17.0.0"}
    for folder in (out, out / "train", out / "heldout"):
        text = (folder / "ATTRIBUTION").read_text()
        for needle in ("Apache License 2.0", "CC BY 4.0", "CC BY-SA 4.0", "Twemoji",
                       "OpenMoji", "Noto Emoji", "openmoji@17.0.0", "ShareAlike"):
            assert needle in text, (folder, needle)


def test_images_are_64px_rgb_over_white(imported):
    out, _, rows, _ = imported
    for row in rows[:: max(1, len(rows) // 10)]:
        folder = "train" if row["split"] == "train" else "heldout"
        with Image.open(out / folder / row["file_name"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
            assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent corner -> white
            assert im.getpixel((32, 32)) != (255, 255, 255)  # the disc


def test_background_is_the_one_asked_for(tmp_path):
    source = unpack(openmoji_files(), tmp_path / "openmoji")
    import_emoji([str(source)], str(tmp_path / "out"), background=(0, 0, 0), progress=False)
    row = read_rows(tmp_path / "out")[0]
    folder = "train" if row["split"] == "train" else "heldout"
    with Image.open(tmp_path / "out" / folder / row["file_name"]) as im:
        assert im.getpixel((0, 0)) == (0, 0, 0)


def test_bad_images_are_rejected_with_a_reason_not_the_job(imported):
    out, summary, _, by = imported
    rejects = {r["key"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text()
                                        .splitlines())}
    assert rejects["twemoji/1f415.png"]["reason"] in ("truncated_image", "corrupt_image")
    assert rejects["twemoji/1f697.png"]["reason"] == "missing_image"
    assert ("twemoji", "1F415") not in by and ("twemoji", "1F697") not in by
    assert ("noto", "1F415") in by and ("openmoji", "1F697") in by
    assert sum(sum(c.values()) for c in summary.counts.values()) == len(by)


def test_held_out_split_keeps_its_promises(imported):
    out, summary, rows, _ = imported
    train = [r for r in rows if r["split"] == "train"]
    for split in HELDOUT_SPLITS:
        assert any(r["split"] == split for r in rows), split
    # (a) style transfer: never trained in this style, trained in another
    for r in (r for r in rows if r["split"] == "heldout_style"):
        assert not any(t["emoji"] == r["emoji"] and t["style"] == r["style"] for t in train)
        assert any(t["emoji"] == r["emoji"] and t["style"] != r["style"] for t in train)
    # (b) composition: the pair never trained, the emoji and each tone trained elsewhere
    for r in (r for r in rows if r["split"] == "heldout_composition"):
        assert r["skin_tones"]
        assert not any(t["emoji"] == r["emoji"] and t["skin_tones"] == r["skin_tones"]
                       for t in train)
        assert any(t["emoji"] == r["emoji"] for t in train)
        for tone in r["skin_tones"]:
            assert any(tone in t["skin_tones"] and t["emoji"] != r["emoji"] for t in train)
    # (c) unseen: nothing of the emoji trained, in any style or tone
    unseen = {r["emoji"] for r in rows if r["split"] == "heldout_unseen"}
    assert unseen and not unseen & {t["emoji"] for t in train}
    # held-out rows live in heldout/ only; counts in import_config.json match
    assert all(r["split"] == "train" for r in map(json.loads, (out / "train" / "metadata.jsonl")
                                                  .read_text().splitlines()))
    config = json.loads((out / "import_config.json").read_text())
    assert {s: sum(c.values()) for s, c in config["counts"].items()} == \
        {s: sum(r["split"] == s for r in rows) for s in config["counts"]}
    drawings = [Drawing(r["emoji"], tuple(r["skin_tones"]), r["style"]) for r in rows]
    assert check(drawings, [r["split"] for r in rows]) == []


def test_held_out_images_never_share_pixels_with_training():
    def entry(code):
        return Entry("openmoji", "openmoji@17.0.0", code, code, code, 0, "g", "s", "x.svg")

    good = [entry("A"), entry("B"), entry("C")]
    rendered = {"openmoji/a.png": {"png": b"same"}, "openmoji/b.png": {"png": b"same"},
                "openmoji/c.png": {"png": b"other"}}
    rejects: list[dict] = []
    kept, splits = drop_seen_pixels(good, ["train", "heldout_unseen", "heldout_unseen"],
                                    rendered, rejects)
    assert [e.code for e in kept] == ["A", "C"] and splits == ["train", "heldout_unseen"]
    assert rejects[0]["key"] == "openmoji/b.png" and rejects[0]["reason"] == "duplicate"


def test_prepare_accepts_both_folders(imported, tmp_path):
    out, _, rows, _ = imported
    for folder in ("train", "heldout"):
        shards = tmp_path / folder
        assert main(["data", "prepare", str(out / folder), "-o", str(shards), "--text-encoder",
                     "none", "--workers", "1", "--quiet"]) == 0
        table = read_shards(shards, ["caption", "extra"])
        expected = [r for r in rows if (r["split"] == "train") == (folder == "train")]
        assert table.num_rows == len(expected)
        extras = [json.loads(e) for e in table.column("extra").to_pylist()]
        assert {e["split"] for e in extras} <= ({"train"} if folder == "train"
                                                else set(HELDOUT_SPLITS))
        assert all(e["license"] in ("Apache-2.0", "CC-BY-4.0", "CC-BY-SA-4.0") for e in extras)
        assert sorted(table.column("caption").to_pylist()) == sorted(r["text"]
                                                                      for r in expected)


def test_a_folder_imports_as_its_tarball_does(tmp_path):
    files = datasource_files("google")
    tarball = make_packages(tmp_path / "npm")[0]
    import_emoji([str(tarball)], str(tmp_path / "a"), progress=False)
    import_emoji([str(unpack(files, tmp_path / "folder"))], str(tmp_path / "b"),
                 progress=False)
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")
    row = read_rows(tmp_path / "a")[0]
    folder = "train" if row["split"] == "train" else "heldout"
    assert (tmp_path / "a" / folder / row["file_name"]).read_bytes() == \
        (tmp_path / "b" / folder / row["file_name"]).read_bytes()


def test_a_folder_is_read_as_hostile_input(tmp_path):
    """A symlink out of the package and a FIFO are rejected records, never read."""
    files = datasource_files("google")
    root = unpack(files, tmp_path / "folder") / "package"
    apple = root / "img/google/64/1f34e.png"
    apple.unlink()
    apple.symlink_to("/etc/hostname")
    cat = root / "img/google/64/1f408.png"
    cat.unlink()
    os.mkfifo(cat)
    assert stat.S_ISFIFO(os.stat(cat).st_mode)
    import_emoji([str(tmp_path / "folder")], str(tmp_path / "out"), progress=False)
    rejects = {r["key"]: r["reason"] for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl")
                                                  .read_text().splitlines())}
    assert rejects == {"noto/1f34e.png": "outside_root", "noto/1f408.png": "not_regular_file"}


def test_a_refused_output_and_a_bad_source_are_clear_errors(imported, tmp_path):
    out = imported[0]
    source = imported[1].sources[0]["source"]
    with pytest.raises(ValueError, match="holds an imported data set"):
        import_emoji([source], str(out), progress=False)
    (tmp_path / "x.tgz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a readable tarball"):
        import_emoji([str(tmp_path / "x.tgz")], str(tmp_path / "out"), progress=False)
    assert main(["data", "import", "emoji", str(tmp_path / "x.tgz"), "-o",
                 str(tmp_path / "out")]) == 2


def test_fetch_checks_the_pinned_sha256(tmp_path, monkeypatch):
    """npm is a stand-in script here: it writes a tarball as `npm pack` would."""
    tarball = make_packages(tmp_path / "built")[2]
    npm = tmp_path / "npm"
    npm.write_text(f'#!/bin/sh\n# npm pack NAME@VERSION --pack-destination DIR --silent\n'
                   f'cp {tarball} "$4/openmoji-17.0.0.tgz"\n')
    npm.chmod(0o755)
    with pytest.raises(ValueError, match="sha256 .* is not the pinned"):
        fetch_packages(tmp_path / "a", ["openmoji"], npm=str(npm))
    monkeypatch.setitem(PINS, "openmoji", Pin("17.0.0", file_sha256(tarball)))
    assert fetch_packages(tmp_path / "b", ["openmoji"], npm=str(npm)) == \
        [tmp_path / "b" / "openmoji-17.0.0.tgz"]
    # a tarball already there with the pinned digest is kept: npm is not called again
    assert fetch_packages(tmp_path / "b", ["openmoji"], npm="/nonexistent/npm")
    assert copy_pinned(tarball, tmp_path / "c") == tmp_path / "c" / "openmoji-17.0.0.tgz"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "openmoji-17.0.0.tgz").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="not the pinned"):
        copy_pinned(tmp_path / "other" / "openmoji-17.0.0.tgz", tmp_path / "d")


def test_hostile_entries_and_members_are_rejected(tmp_path, monkeypatch):
    """Entries that break the schema, an image path that climbs out, a member past the size
    limit, a 2049x2049 PNG, an SVG with XML entities (a billion-laughs shape), a symlink member
    to /etc/passwd and a member named ../: each is a rejected record or ignored; the good
    entries are imported."""
    import pictor.data.emoji as emoji

    google = datasource_files("google")
    items = json.loads(google["emoji.json"])
    items += ["not an object", {"unified": "1F600"},
              {"unified": "1F601", "name": "ESCAPE", "image": "../../../../etc/passwd"},
              {"unified": "ZZZZ", "name": "BAD", "image": "zzzz.png"}]
    google["emoji.json"] = json.dumps(items).encode()
    google["img/google/64/1f34e.png"] = b"\0" * 20000  # larger than the limit set below
    big = io.BytesIO()
    Image.new("RGB", (2049, 2049)).save(big, format="PNG")  # 4.2 megapixels in 13 KB
    google["img/google/64/1f600.png"] = big.getvalue()
    del google["img/google/64/1f408.png"]  # the cat becomes a symlink member, below
    openmoji = openmoji_files()
    openmoji["color/svg/1F408.svg"] = (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><text>&b;</text></svg>')
    sources = [tmp_path / "google.tgz", tmp_path / "openmoji.tgz"]
    for path, files in zip(sources, (google, openmoji), strict=True):
        with tarfile.open(path, "w:gz") as tar:
            for name, data in {**files, "../../escaped.png": b"x"}.items():
                info = tarfile.TarInfo(f"package/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("package/img/google/64/1f408.png")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    monkeypatch.setattr(emoji, "MAX_IMAGE_BYTES", 16384)
    import_emoji([str(p) for p in sources], str(tmp_path / "out"), progress=False)
    rejects = [json.loads(line) for line in
               (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    reasons = Counter(r["reason"] for r in rejects)
    assert reasons == {"bad_metadata": 4, "file_too_large": 1, "corrupt_image": 1,
                       "too_many_pixels": 1, "missing_image": 1}, rejects
    by = {r["key"]: r["reason"] for r in rejects}
    assert by["noto/1f34e.png"] == "file_too_large" and by["openmoji/1f408.png"] == \
        "corrupt_image"
    assert by["noto/1f600.png"] == "too_many_pixels" and by["noto/1f408.png"] == \
        "missing_image"
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 2 * (12 + 4 * 5) + 1 - 4  # every other drawing, both styles
    assert not (tmp_path / "escaped.png").exists()


def test_openmoji_72px_pngs_are_read_before_svgs_and_resized(tmp_path):
    """A folder of an OpenMoji release holds color/72x72/<HEXCODE>.png: those are used."""
    files = openmoji_files()
    files["color/72x72/1F34E.png"] = icon_png("1F34E", "png", size=72)
    import_emoji([str(unpack(files, tmp_path / "openmoji"))], str(tmp_path / "out"),
                 shares=SplitShares(0, 0, 0), progress=False)
    with Image.open(tmp_path / "out" / "train" / "openmoji" / "1f34e.png") as im:
        assert im.size == (64, 64)
        expected = Image.open(io.BytesIO(icon_png("1F34E", "png", size=72))).getpixel((36, 36))
        assert im.getpixel((32, 32)) == expected[:3]


def test_the_commands_fetch_and_import(tmp_path, monkeypatch, capsys):
    """`pictor data fetch-emoji --from` and `pictor data import emoji` as a user types them."""
    tarball = make_packages(tmp_path / "built")[0]
    monkeypatch.setitem(PINS, "emoji-datasource-google",
                        Pin("16.0.0", file_sha256(tarball)))
    assert main(["data", "fetch-emoji", "-o", str(tmp_path / "npm"), "--from",
                 str(tarball)]) == 0
    fetched = tmp_path / "npm" / "emoji-datasource-google-16.0.0.tgz"
    assert fetched.read_bytes() == tarball.read_bytes()
    assert main(["data", "import", "emoji", str(fetched), "-o", str(tmp_path / "out"),
                 "--seed", "1", "--background", "0,0,0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "heldout_unseen" in printed and "rejected 0" in printed
    config = json.loads((tmp_path / "out" / "import_config.json").read_text())
    assert config["seed"] == 1 and config["background"] == [0, 0, 0]
    assert config["sources"][0]["sha256"] == file_sha256(tarball)
    assert main(["data", "import", "emoji", str(fetched), "-o", str(tmp_path / "out"),
                 "--quiet"]) == 2  # an earlier import is kept unless --overwrite
    assert main(["data", "import", "emoji", str(fetched), "-o", str(tmp_path / "out"),
                 "--quiet", "--overwrite"]) == 0
