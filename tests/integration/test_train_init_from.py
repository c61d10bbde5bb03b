"""training.init_from: a run starts from another model's U-Net weights (a model folder, a run
folder or the file), tensors matched by name and shape, new parts keeping their initialisation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_support import shared_data, tiny_config

from pictor.training.distributed import DistInfo
from pictor.training.trainer import DiffusionTask, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def test_init_from_a_run_and_add_a_text_adapter(data, tmp_path):
    first = tiny_config(*data, tmp_path / "a", "--training.max_steps=2",
                        "--training.checkpoint_every_steps=0")
    train(first)
    saved = load_file(str(tmp_path / "a" / "final" / "unet.safetensors"))
    for source in (tmp_path / "a", tmp_path / "a" / "final" / "unet.safetensors"):
        config = tiny_config(*data, tmp_path / "b", f"--training.init_from={source}",
                             "--model.text_adapter_layers=1")
        model = DiffusionTask(config, DistInfo()).model
        state = model.state_dict()
        new = sorted(k for k in state if k not in saved)
        assert new and all(k.startswith("text_adapter.") for k in new)
        assert all(torch.equal(state[k], saved[k]) for k in saved)
    # the adapter starts as the identity, so the new model predicts what the old one did
    old = DiffusionTask(tiny_config(*data, tmp_path / "c", f"--training.init_from={tmp_path / 'a'}"),
                        DistInfo()).model
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0])
    ctx, mask = torch.randn(2, 4, 384), torch.ones(2, 4, dtype=torch.bool)
    torch.testing.assert_close(model(x, t, ctx, mask), old(x, t, ctx, mask))


def test_init_from_errors(data, tmp_path):
    config = tiny_config(*data, tmp_path / "b", f"--training.init_from={tmp_path / 'nothing'}")
    with pytest.raises(FileNotFoundError, match="no U-Net weights"):
        DiffusionTask(config, DistInfo())
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"encoder.weight": torch.zeros(2)}, str(other))
    config = tiny_config(*data, tmp_path / "b", f"--training.init_from={other}")
    with pytest.raises(ValueError, match="shares no tensor"):
        DiffusionTask(config, DistInfo())
