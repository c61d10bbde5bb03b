"""Training-side reading of shards: ShardDataset, open_dataset, stored embeddings and latents."""

from __future__ import annotations

import pytest
import torch

from pictor.data.loader import (
    ImageFolderDataset,
    ShardDataset,
    TextEmbeddingTable,
    encode_images_cached,
    open_dataset,
    precompute_prepared,
    prepared_latents,
    prepared_text_table,
)
from pictor.data.synth import synthesize


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same 12 shapes images as an imagefolder and as shards (same seed)."""
    base = tmp_path_factory.mktemp("formats")
    synthesize(base / "folder", 12, seed=3, workers=1, progress=False)
    synthesize(base / "shards", 12, seed=3, workers=1, progress=False, format="shards")
    return base / "folder", base / "shards"


def test_shards_and_imagefolder_give_the_same_tensors(both):
    folder, shards = both
    a, b = open_dataset(folder), open_dataset(shards)
    assert isinstance(a, ImageFolderDataset) and isinstance(b, ShardDataset)
    assert a.captions == b.captions and len(b) == 12
    assert torch.equal(a.load_all(), b.load_all())  # (12, 3, 64, 64), byte-identical PNGs
    small = ShardDataset(shards, image_size=16, max_images=5)
    assert small.load_all().shape == (5, 3, 16, 16) and small.captions == a.captions[:5]
    assert torch.equal(next(small.iter_image_batches(3)), small.load_all()[:3])
    assert small.fingerprint() != b.fingerprint()
    with pytest.raises(ValueError, match="neither manifest.json"):
        open_dataset(folder.parent)


def test_cli_synth_writes_shards(tmp_path, capsys):
    from pictor.cli.main import main

    out = tmp_path / "s"
    assert main(["data", "synth", "--num-images", "5", "--out", str(out), "--format", "shards",
                 "--workers", "1", "--quiet"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    dataset = ShardDataset(out)
    assert len(dataset) == 5 and dataset.manifest.counts.written == 5
    assert main(["data", "synth", "--num-images", "5", "--out", str(out), "--format", "shards",
                 "--quiet"]) == 2  # a finished set is not overwritten by accident


class WordLengthEncoder:
    """A real, tiny, deterministic text encoder: token i embeds the length of word i."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, captions):
        self.seen.extend(captions)
        length = max(1, max(len(c.split()) for c in captions))
        emb = torch.zeros(len(captions), length, 2)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for i, c in enumerate(captions):
            for j, w in enumerate(c.split()):
                emb[i, j] = torch.tensor([len(w), 1.0])
                mask[i, j] = True
        return emb, mask


def test_stored_embeddings_and_latents_are_reused(both, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(both[1], shards)
    encoder = WordLengthEncoder()
    halve = lambda x: torch.nn.functional.avg_pool2d(x, 2)  # (B, 3, 64, 64) -> (B, 3, 32, 32)
    precompute_prepared(shards, text_encode=encoder, text_identity="words",
                        image_encode=halve, image_identity="halve", batch_size=5)
    dataset = ShardDataset(shards)
    stored = prepared_text_table(dataset, "words")
    assert stored is not None and set(stored.captions) == set(dataset.captions) | {""}
    assert prepared_text_table(dataset, "another encoder") is None

    # training with extra (validation) prompts encodes only what is not stored
    encoder.seen.clear()
    table = TextEmbeddingTable.build(dataset.captions + ["a new prompt here"], encoder, "words",
                                     prepared=stored)
    assert encoder.seen == ["a new prompt here"]
    reference = TextEmbeddingTable.build(dataset.captions + ["a new prompt here"],
                                         WordLengthEncoder(), "words")
    assert table.captions == reference.captions
    assert torch.equal(table.emb, reference.emb) and torch.equal(table.mask, reference.mask)

    latents = prepared_latents(dataset, "halve")
    assert latents is not None and torch.equal(latents, halve(dataset.load_all()))
    never = lambda x: (_ for _ in ()).throw(AssertionError("encoder must not run"))
    assert torch.equal(encode_images_cached(dataset, never, "halve"), latents)
    assert prepared_latents(ShardDataset(shards, image_size=32), "halve") is None
    assert prepared_latents(ShardDataset(shards, max_images=4), "halve").shape[0] == 4
