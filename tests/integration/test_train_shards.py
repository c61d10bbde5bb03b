"""A folder prepared by `pictor data prepare` and a shapes synth shard set both train with the
same trainer (tiny config, a few steps), and hold the same examples as the imagefolder; caption
embeddings stored by `prepare --with-embeddings` are the ones training would compute."""

from __future__ import annotations

import torch
from train_support import shared_data, tiny_config

from pictor.cli.main import main
from pictor.data.loader import open_dataset
from pictor.data.shards import read_manifest
from pictor.data.synth import synthesize
from pictor.training.distributed import DistInfo
from pictor.training.trainer import DiffusionTask, text_encoder_identity, train


def test_prepared_and_synth_shards_train_like_the_imagefolder(tmp_path_factory, tmp_path):
    folder, cache = shared_data(tmp_path_factory)  # 64 shapes images, seed 0, imagefolder
    synth_shards = tmp_path / "synth"
    synthesize(synth_shards, 64, seed=0, workers=1, progress=False, format="shards")
    prepared = tmp_path / "prepared"
    # the CLI, with the caption embeddings of the trainer's encoder stored beside the shards
    assert main(["data", "prepare", str(folder), "-o", str(prepared), "--workers", "1",
                 "--with-embeddings", "--quiet"]) == 0
    manifest = read_manifest(prepared)
    assert manifest.counts.written == 64 and manifest.counts.read == 64
    assert manifest.prepared["text_embeddings"][0]["identity"] == \
        text_encoder_identity("minilm", 32)

    reference = DiffusionTask(tiny_config(folder, cache, tmp_path / "r"), DistInfo())
    for data in (synth_shards, prepared):
        config = tiny_config(data, cache, tmp_path / data.name, "--training.max_steps=3",
                             "--training.checkpoint_every_steps=0")
        task = DiffusionTask(config, DistInfo())
        # the same images (16 x 16 after the tiny config's resize) and captions, in order
        assert torch.equal(task.x, reference.x)
        assert open_dataset(data).captions == open_dataset(folder).captions
        rows = task.text.rows(open_dataset(data).captions)
        ref_rows = reference.text.rows(open_dataset(folder).captions)
        length = min(task.text.emb.shape[1], reference.text.emb.shape[1])
        assert torch.allclose(task.text.emb[rows][:, :length],
                              reference.text.emb[ref_rows][:, :length], atol=1e-5)
        result = train(config)
        assert result.step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
        assert (tmp_path / data.name / "final" / "unet.safetensors").is_file()
