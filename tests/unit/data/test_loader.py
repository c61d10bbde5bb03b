"""Training data tensors: imagefolder reading, caption table, cached encodings, epoch order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pictor.data.loader import (
    EpochSampler,
    ImageFolderDataset,
    TextEmbeddingTable,
    encode_images_cached,
    read_imagefolder,
)


def _write_folder(root, n=6, size=8):
    root.mkdir(parents=True, exist_ok=True)
    captions = ["a red circle", "two stars", "a red circle", "a blue square", "two stars", "x"]
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            arr = np.full((size, size, 3), i * 40, dtype=np.uint8)
            Image.fromarray(arr).save(root / f"{i:03d}.png")
            f.write(json.dumps({"file_name": f"{i:03d}.png", "text": captions[i]}) + "\n")
    return captions[:n]


def test_imagefolder_values_and_errors(tmp_path):
    captions = _write_folder(tmp_path / "d")
    ds = ImageFolderDataset(tmp_path / "d")
    assert len(ds) == 6 and ds.captions == captions
    x = ds.load_all()
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32
    assert x[0].min() == -1.0 and torch.allclose(x[5], torch.full((3, 8, 8), 200 / 127.5 - 1))
    assert ImageFolderDataset(tmp_path / "d", image_size=4)[0]["image"].shape == (3, 4, 4)
    assert len(read_imagefolder(tmp_path / "d", max_images=2)) == 2
    with pytest.raises(ValueError, match="metadata.jsonl is missing"):
        read_imagefolder(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(ValueError, match="'file_name' and 'text'"):
        read_imagefolder(tmp_path / "bad")


class CountingEncoder:
    """A real (tiny, deterministic) encoder: token i of a caption embeds its i-th word length."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, captions):
        self.seen.extend(captions)
        words = [c.split() for c in captions]
        length = max(1, max(len(w) for w in words)) + 1  # +1 padding column
        emb = torch.zeros(len(captions), length, 2)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for b, ws in enumerate(words):
            for i, w in enumerate(ws):
                emb[b, i] = torch.tensor([len(w), i])
                mask[b, i] = True
            emb[b, len(ws):] = 99.0  # garbage at padding: must not leak
        return emb, mask


def test_text_table_encodes_unique_captions_once_and_caches(tmp_path):
    enc = CountingEncoder()
    caps = ["a red circle", "two stars", "a red circle", "two stars"]
    table = TextEmbeddingTable.build(caps, enc, "counting-v1", cache_dir=tmp_path, batch_size=2)
    assert sorted(enc.seen) == ["", "a red circle", "two stars"]
    assert table.emb.shape == (3, 3, 2)  # trimmed to the longest caption (3 words)
    emb, mask = table.encode(["two stars", ""])
    assert mask.tolist() == [[True, True, False], [False, False, False]]
    assert emb[0].tolist() == [[3, 0], [5, 1], [0, 0]]
    assert table.rows([""]).item() == table.empty_row
    with pytest.raises(ValueError, match="not in the embedding table"):
        table.rows(["a green star"])

    # second build: served from disk, the encoder is never loaded
    def never():
        raise AssertionError("encoder loaded despite a cache hit")

    again = TextEmbeddingTable.build(caps, None, "counting-v1", cache_dir=tmp_path,
                                     encode_loader=never)
    assert torch.equal(again.emb, table.emb) and torch.equal(again.mask, table.mask)
    # another encoder identity misses the cache
    enc2 = CountingEncoder()
    TextEmbeddingTable.build(caps, enc2, "counting-v2", cache_dir=tmp_path)
    assert enc2.seen


def test_encode_images_cached(tmp_path):
    _write_folder(tmp_path / "d")
    ds = ImageFolderDataset(tmp_path / "d")
    calls = []

    def unshuffle(x):
        calls.append(len(x))
        return torch.nn.functional.pixel_unshuffle(x, 2)

    z = encode_images_cached(ds, unshuffle, "unshuffle-2", cache_dir=tmp_path / "c", batch_size=4)
    assert z.shape == (6, 12, 4, 4) and calls == [4, 2]
    z2 = encode_images_cached(ds, unshuffle, "unshuffle-2", cache_dir=tmp_path / "c")
    assert torch.equal(z, z2) and calls == [4, 2]
    # new captions for the same images: the latents are reused
    meta = tmp_path / "d" / "metadata.jsonl"
    meta.write_text(meta.read_text().replace('"text": "', '"text": "new words for '))
    assert ImageFolderDataset(tmp_path / "d").captions != ds.captions
    z3 = encode_images_cached(ImageFolderDataset(tmp_path / "d"), unshuffle, "unshuffle-2",
                              cache_dir=tmp_path / "c")
    assert torch.equal(z, z3) and calls == [4, 2]
    # changed image bytes change the fingerprint: recomputed
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "d" / "005.png")
    encode_images_cached(ImageFolderDataset(tmp_path / "d"), unshuffle, "unshuffle-2",
                         cache_dir=tmp_path / "c")
    assert calls == [4, 2, 6]


def test_epoch_sampler_permutations_and_resume():
    s = EpochSampler(5, seed=3)
    batches = [s.next(3) for _ in range(4)]  # 12 indices = 2 epochs + 2
    flat = torch.cat(batches).tolist()
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert flat[:5] != flat[5:10]  # a fresh permutation per epoch
    assert s.position == {"epoch": 2, "index": 2}

    # resume from a saved position reproduces the continuation exactly
    ref = EpochSampler(5, seed=3)
    for _ in range(2):
        ref.next(3)
    resumed = EpochSampler(5, seed=3)
    resumed.set_position(ref.position)
    assert torch.equal(ref.next(4), resumed.next(4))
    assert EpochSampler(5, seed=4).next(5).tolist() != EpochSampler(5, seed=3).next(5).tolist()
