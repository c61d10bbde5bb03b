"""The pieces of the CLIP trainer: the symmetric InfoNCE loss against its direct formula, the
augmentation's shifts, the towers' outputs and the safetensors round trip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pictor.config import OptimizerConfig, load_config
from pictor.evaluation.clip_training import (
    ClipTrainConfig,
    _optimizer,
    clip_loss,
    shift_images,
    to_uint8,
    validate_clip_config,
)
from pictor.evaluation.features import load_feature_extractor
from pictor.networks.clip import ClipConfig, ClipModel
from pictor.networks.codec import file_sha256
from pictor.networks.io import load_module, read_metadata, save_module

SMALL = ClipConfig(channels=(8, 16), embed_dim=16, text_dim=12, text_heads=2, text_hidden=16)


def direct_infonce(logits: np.ndarray, targets: np.ndarray) -> float:
    """1/2 (mean_i -sum_j q_ij log softmax_j(logits_i.) + the same on the columns), written out
    with explicit sums (CLIP Fig. 3 with soft targets q)."""
    b = logits.shape[0]
    rows = cols = 0.0
    for i in range(b):
        log_z_row = math.log(sum(math.exp(logits[i, j]) for j in range(b)))
        log_z_col = math.log(sum(math.exp(logits[j, i]) for j in range(b)))
        rows -= sum(targets[i, j] * (logits[i, j] - log_z_row) for j in range(b))
        cols -= sum(targets[i, j] * (logits[j, i] - log_z_col) for j in range(b))
    return (rows / b + cols / b) / 2


def test_clip_loss_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(6, 6))
    got = float(clip_loss(torch.from_numpy(logits)))
    assert got == pytest.approx(direct_infonce(logits, np.eye(6)), rel=1e-10)
    # with distinct ids it is CLIP's loss exactly
    assert float(clip_loss(torch.from_numpy(logits), torch.arange(6))) == pytest.approx(got)
    # a repeated caption (ids 0 and 3 equal) is a shared positive, not a negative
    ids = torch.tensor([0, 1, 2, 0, 4, 5])
    same = (ids[:, None] == ids[None, :]).double().numpy()
    expected = direct_infonce(logits, same / same.sum(1, keepdims=True))
    assert float(clip_loss(torch.from_numpy(logits), ids)) == pytest.approx(expected, rel=1e-10)


def test_clip_loss_of_perfect_and_uninformative_logits():
    # identical logits everywhere: both cross-entropies are log B
    assert float(clip_loss(torch.zeros(8, 8))) == pytest.approx(math.log(8))
    # a large margin on the diagonal: the loss goes to 0
    assert float(clip_loss(50 * torch.eye(8))) < 1e-12
    with pytest.raises(ValueError, match=r"\(B, B\)"):
        clip_loss(torch.zeros(4, 5))


def test_shift_images_translates_each_image_within_the_bound():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    same = shift_images(x, 0, g)
    assert torch.equal(to_uint8(same), x)
    shifted = shift_images(x, 2, g)
    assert shifted.shape == (16, 3, 12, 12)
    padded = torch.nn.functional.pad(x.float() / 127.5 - 1, (2,) * 4, mode="replicate")
    for i in range(16):  # each output is one of the 25 crops of its edge-padded input
        crops = [padded[i, :, dy:dy + 12, dx:dx + 12] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(shifted[i], c) for c in crops)
    assert not all(torch.equal(shifted[i], padded[i, :, 2:14, 2:14]) for i in range(16))


def test_towers_give_unit_vectors_and_ignore_padding_tokens():
    torch.manual_seed(0)
    model = ClipModel(SMALL).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    emb, mask = torch.randn(3, 5, 12), torch.tensor([[1, 1, 1, 0, 0]] * 3).bool()
    img, txt = model.encode_image(x), model.encode_text(emb, mask)
    assert img.shape == txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=1), torch.ones(3)) and torch.allclose(txt.norm(dim=1),
                                                                            torch.ones(3))
    changed = emb.clone()
    changed[:, 3:] = 100.0  # padding positions must not matter
    assert torch.allclose(model.encode_text(changed, mask), txt, atol=1e-6)
    assert model(x, emb, mask).shape == (3, 3)
    assert float(model.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)


def test_weight_decay_reaches_weight_matrices_only():
    model = ClipModel(SMALL)
    groups = _optimizer(model, OptimizerConfig(weight_decay=0.05)).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "image_tower.proj.weight" in names and "text_head.attn.in_proj_weight" in names
    assert not names & {"logit_scale", "text_head.query", "image_tower.proj.bias"}
    assert all(p.ndim >= 2 for p in groups[0]["params"])  # no gains or biases (norms included)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))


def test_clip_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    model = ClipModel(SMALL).eval()
    model.feature_mean.normal_()
    path = tmp_path / "clip.safetensors"
    save_module(model, SMALL, path, extra_metadata={"train_config": "{}"})
    loaded = load_module(ClipModel, ClipConfig, path).eval()
    assert loaded.config == SMALL and read_metadata(path)["train_config"] == "{}"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded.image_features(x), model.image_features(x))
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle
    # the same file serves the distribution metrics as a feature extractor
    extractor = load_feature_extractor(f"clip:{tmp_path}")
    images = [Image.new("RGB", (64, 64), (40, 200, 90)), Image.new("RGB", (64, 64), (250, 5, 5))]
    x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    assert extractor.dim == 16 and extractor.sha256 == file_sha256(path)
    assert torch.allclose(torch.from_numpy(extractor.features(images)).float(),
                          loaded.image_features(x.float() / 127.5 - 1), atol=1e-6)


def test_config_validation_names_the_fix(tmp_path):
    repo = Path(__file__).resolve().parents[3]
    # configs/clip.yaml spells out the built-in defaults, so --config is optional
    assert load_config(repo / "configs" / "clip.yaml", ClipTrainConfig) == ClipTrainConfig()
    config = load_config(None, ClipTrainConfig, ["--training.batch_size=8"])
    assert config.model.channels == (32, 64, 128, 256) and config.training.batch_size == 8
    for override, message in [("--training.batch_size=1", "negatives"),
                              ("--data.image_size=32", "model.image_size"),
                              ("--model.text_encoder=trainable", "frozen")]:
        with pytest.raises(ValueError, match=message):
            validate_clip_config(load_config(None, ClipTrainConfig, [override]))
    with pytest.raises(ValueError, match="unknown|valid"):
        load_config(None, ClipTrainConfig, ["--training.no_such_key=1"])
