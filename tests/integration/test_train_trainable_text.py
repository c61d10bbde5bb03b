"""`text.spec: trainable`: the small word-level encoder trains with the U-Net (Imagen's
comparison: a text encoder learned from the captions alone vs a frozen pretrained one)."""

from __future__ import annotations

import pytest
import torch
from test_train_tiny import fixed_batch_loss
from train_support import shared_data, tiny_config

from pictor.networks.io import load_module
from pictor.pipeline import load_pipeline, model_digest
from pictor.text.encoders import TEXT_ENCODER_FILE, TrainableTextEncoder, TrainableTextEncoderConfig
from pictor.training.distributed import DistInfo
from pictor.training.export import export_model
from pictor.training.trainer import DiffusionTask, TextConditionedUNet, train

TRAINABLE = ("--text.spec=trainable", "--text.trainable_dim=32", "--text.trainable_num_layers=1",
             "--text.trainable_num_heads=2", "--model.context_dim=32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def test_trainable_encoder_learns_with_the_unet_and_ships(data, tmp_path):
    config = tiny_config(*data, tmp_path / "run", *TRAINABLE)
    task = DiffusionTask(config, DistInfo())
    assert isinstance(task.model, TextConditionedUNet)
    assert task.emb.dtype == torch.long  # token ids, tokenized once per unique caption
    before_loss = fixed_batch_loss(task, task.model)
    encoder_before = {k: v.clone() for k, v in task.model.text_encoder.state_dict().items()}

    result = train(config)
    assert fixed_batch_loss(task, result.model) < 0.7 * before_loss
    encoder_after = result.model.text_encoder.state_dict()
    # the encoder received gradients: its token embeddings moved
    assert not torch.equal(encoder_before["token_embedding.weight"],
                           encoder_after["token_embedding.weight"])

    final = tmp_path / "run" / "final"
    saved = load_module(TrainableTextEncoder, TrainableTextEncoderConfig, final / TEXT_ENCODER_FILE)
    ema_encoder = result.ema_module.text_encoder
    for k, v in ema_encoder.state_dict().items():
        assert torch.equal(saved.state_dict()[k], v), k
    assert set(saved.config.vocabulary) >= {"red", "circle", "stars"}

    model_dir = export_model(tmp_path / "run", tmp_path / "model")
    assert (model_dir / TEXT_ENCODER_FILE).is_file()
    pipe = load_pipeline(model_dir)
    # the pipeline's conditioning equals the trained module's on a training caption
    emb, mask = pipe.encode_prompt("a red circle")
    ids, ids_mask = ema_encoder.tokenize(["a red circle"])
    ref, _ = ema_encoder.eval().encode_ids(ids, ids_mask)
    n = int(mask.sum())
    torch.testing.assert_close(emb[:, :n], ref[:, :n])
    image = pipe.generate("a red circle", num_steps=3, seed=1)[0]
    assert image.image.size == (16, 16)
    # the digest covers the text encoder's bytes, and a model without it is a clear error
    files = {"unet.safetensors", "text_encoder.safetensors"}
    assert files <= {p.name for p in model_dir.iterdir()}
    before = model_digest(model_dir)
    with torch.no_grad():
        ema_encoder.token_embedding.weight[0, 0] += 1.0
    from pictor.networks.io import save_module
    save_module(ema_encoder, ema_encoder.config, model_dir / TEXT_ENCODER_FILE)
    assert model_digest(model_dir) != before
    (model_dir / TEXT_ENCODER_FILE).unlink()
    with pytest.raises(ValueError, match=TEXT_ENCODER_FILE):
        load_pipeline(model_dir)
