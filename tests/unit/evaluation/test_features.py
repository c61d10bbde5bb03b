"""The feature extractors: the shipped shapes CNN reads scenes right on fresh renders; labels
follow the scene; a short training run writes a loadable model folder; Inception loads only from
a local TorchScript file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pictor.data.shapes import Scene, ShapeSpec
from pictor.evaluation.feature_training import (
    NUM_LABELS,
    FeatureTrainConfig,
    heldout_accuracy,
    scene_labels,
    train_feature_extractor,
)
from pictor.evaluation.features import (
    FEATURES_FILE,
    ShapesFeatureNetConfig,
    default_features_dir,
    load_feature_extractor,
)
from pictor.networks.io import read_metadata


@pytest.fixture(scope="module")
def shipped():
    return load_feature_extractor("shapes")


def test_shipped_extractor_is_small_self_describing_and_documented(shipped):
    path = default_features_dir() / FEATURES_FILE
    assert path.stat().st_size < 2_000_000
    metadata = read_metadata(path)
    assert json.loads(metadata["config"])["feature_dim"] == shipped.dim == 128
    assert metadata["config_class"] == "ShapesFeatureNetConfig"
    readme = (default_features_dir() / "README.md").read_text()
    assert "Held-out accuracy" in readme


def test_shipped_extractor_reads_fresh_renders(shipped):
    """Held-out accuracy on renders no training step drew (test namespace, seeds from
    HELDOUT_SEED_OFFSET: the first 300 of the README's held-out set)."""
    accuracy = heldout_accuracy(shipped.net, 300)
    print(accuracy)
    for kind in ("clean", "degraded"):
        assert accuracy[kind]["count"] >= 0.97, accuracy
        assert accuracy[kind]["shapes_exact"] >= 0.9, accuracy
        assert accuracy[kind]["colors_exact"] >= 0.9, accuracy


def test_features_are_deterministic_and_resize_to_the_canvas(shipped):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    a, b = shipped.features([image, image]), shipped.features([image.resize((32, 32))])
    assert a.shape == (2, 128) and a.dtype == np.float64
    assert np.array_equal(a[0], a[1]) and b.shape == (1, 128)
    assert shipped.features([]).shape == (0, 128)


def test_scene_labels_follow_the_scene():
    scene = Scene((ShapeSpec("circle", "red", 4, 4, 16),          # top-left quadrant
                   ShapeSpec("star", "blue", 40, 40, 20)))         # bottom-right quadrant
    labels = scene_labels(scene)
    assert labels.shape == (NUM_LABELS,)
    count, kinds, colors = labels[:4], labels[4:8], labels[8:16]
    pairs, layout = labels[16:48].reshape(4, 8), labels[48:].reshape(4, 4)
    assert count.tolist() == [0, 1, 0, 0]
    assert kinds.tolist() == [1, 0, 0, 1]  # circle, square, triangle, star
    assert np.flatnonzero(colors).tolist() == [0, 5]  # red, blue
    assert np.argwhere(pairs).tolist() == [[0, 0], [3, 5]]
    assert np.argwhere(layout).tolist() == [[0, 0], [3, 3]]


def test_a_short_training_run_writes_a_loadable_folder(tmp_path):
    config = FeatureTrainConfig(num_steps=2, batch_size=4, num_heldout=8, num_standardize=16,
                                num_threads=1)
    small = ShapesFeatureNetConfig(channels=(8, 8, 16), feature_dim=16)
    summary = train_feature_extractor(tmp_path, config, small, progress=False)
    extractor = load_feature_extractor(tmp_path)
    assert extractor.dim == 16 and extractor.sha256 == summary["sha256"]
    assert set(summary["heldout_accuracy"]) == {"clean", "degraded"}
    assert "Held-out accuracy" in (tmp_path / "README.md").read_text()
    assert json.loads((tmp_path / "training_summary.json").read_text())["parameters"] > 0


class _StandIn(torch.nn.Module):
    """A TorchScript stand-in with the interface of NVIDIA's pt_inception (features kwarg)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # (B, 3)
        return torch.cat([pooled, pooled ** 2], dim=1) if return_features else pooled


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_inception_loads_only_from_a_local_torchscript_file(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.script(_StandIn()).save(str(path))
    extractor = load_feature_extractor(f"inception:{path}")
    image = Image.new("RGB", (64, 64), (255, 0, 0))
    features = extractor.features([image])
    assert extractor.dim == 6 and features.shape == (1, 6)
    assert features[0, :3] == pytest.approx([255.0, 0.0, 0.0])  # 299 px, [0, 255] inputs
    assert load_feature_extractor(path).dim == 6
    with pytest.raises(ValueError, match="TorchScript"):
        load_feature_extractor(f"inception:{tmp_path / 'missing.pt'}")
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="torchvision"):
        load_feature_extractor(f"inception:{tmp_path / 'w.safetensors'}")


def test_missing_extractor_says_how_to_make_one(tmp_path):
    with pytest.raises(ValueError, match="train-features"):
        load_feature_extractor(tmp_path / "nothing")
