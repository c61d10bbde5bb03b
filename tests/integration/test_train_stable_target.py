"""Stable Target Field in the trainer (training.stable_target_references): references share the
example's caption, the loss equals the plain one where the noise is low, and a run trains."""

from __future__ import annotations

import math

import pytest
import torch
from train_support import MICRO_MODEL, shared_data, tiny_config

from pictor.data.loader import open_dataset
from pictor.training.distributed import DistInfo
from pictor.training.trainer import DiffusionTask, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def test_references_share_the_caption_and_low_noise_loss_is_the_plain_one(data, tmp_path):
    stf = DiffusionTask(tiny_config(*data, tmp_path / "a", "--training.stable_target_references=4",
                                    *MICRO_MODEL), DistInfo())
    plain = DiffusionTask(tiny_config(*data, tmp_path / "b", *MICRO_MODEL), DistInfo())
    captions = open_dataset(data[0], image_size=64).captions
    n = stf.num_examples
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(n)
    draws = stf.draw(n, gen)
    assert draws["references"].shape == (n, 3)
    drop = torch.zeros(n, dtype=torch.bool)
    refs = stf.groups.references(idx, draws["references"], drop)
    assert torch.equal(refs[:, 0], idx)
    for i in range(n):
        assert {captions[j] for j in refs[i].tolist()} == {captions[i]}
    # the extreme uniforms stay inside the caption's group
    edge = stf.groups.references(idx, torch.full((n, 3), 1 - 1e-12, dtype=torch.float64), drop)
    assert all({captions[j] for j in edge[i].tolist()} == {captions[i]} for i in range(n))
    # a dropped caption draws from the whole data set
    many = stf.groups.references(torch.zeros(2000, dtype=torch.long),
                                 torch.rand((2000, 3), generator=gen, dtype=torch.float64),
                                 torch.ones(2000, dtype=torch.bool))
    assert len(set(many[:, 1:].flatten().tolist())) == n

    # at t = 0 the references' weights collapse on the example: the plain loss
    draws["t"][:] = 0
    draws["drop"][:] = False
    plain.model.load_state_dict(stf.model.state_dict())
    with torch.no_grad():
        a = float(stf.loss(stf.model, idx, draws))
        b = float(plain.loss(plain.model, idx, {k: v for k, v in draws.items()
                                                if k != "references"}))
    assert a == pytest.approx(b, rel=1e-5)


def test_a_stable_target_run_trains(data, tmp_path):
    config = tiny_config(*data, tmp_path / "run", "--training.stable_target_references=4",
                         "--training.max_steps=20", *MICRO_MODEL)
    result = train(config)
    assert result.step == 20 and all(math.isfinite(x) for x in result.losses)
    assert sum(result.losses[-5:]) < sum(result.losses[:5])


def test_paraphrased_data_groups_references_by_the_canonical_caption(tmp_path):
    """Paraphrases leave almost every caption with one image; the references of an example are
    drawn from the examples with its canonical caption instead (the same scenes)."""
    from pictor.data.synth import synthesize
    from pictor.training.trainer import CaptionGroups, stf_group_keys

    root = tmp_path / "para"
    synthesize(root, 96, seed=0, mix={"single_object": 1.0, "counting": 1.0}, workers=1,
               progress=False, captions="paraphrase")
    ds = open_dataset(root, image_size=64)
    canonical = [e["canonical"] for e in ds.extras]
    assert len(set(ds.captions)) > 2 * len(set(canonical))  # many wordings per scene kind
    keys = stf_group_keys(ds)
    assert all((keys[i] == keys[j]) == (canonical[i] == canonical[j])
               for i in range(0, 96, 7) for j in range(96))
    groups = CaptionGroups(keys)
    idx = torch.arange(96)
    u = torch.rand((96, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    refs = groups.references(idx, u, torch.zeros(96, dtype=torch.bool))
    assert all({canonical[j] for j in refs[i].tolist()} == {canonical[i]} for i in range(96))
    assert any(len({ds.captions[j] for j in refs[i].tolist()}) > 1 for i in range(96))
