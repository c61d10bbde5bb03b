"""Training with the grounding loss (tiny config): the loss is the denoising loss plus the
weighted token loss, both parts are logged, and training pulls each object word's
cross-attention onto its object (the token loss on a fixed batch falls)."""

from __future__ import annotations

import json

import pytest
import torch
from train_support import shared_data, tiny_config

from pictor.training.distributed import DistInfo
from pictor.training.grounding import grounding_loss, record_cross_attention
from pictor.training.trainer import DiffusionTask, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def fixed_token_loss(task: DiffusionTask, model: torch.nn.Module) -> float:
    """The token loss over every example at fixed (t, noise) draws, captions kept."""
    gen = torch.Generator().manual_seed(99)
    idx = torch.arange(task.num_examples)
    draws = task.draw(len(idx), gen)
    draws["drop"][:] = False
    model.eval()
    with torch.no_grad():
        task.loss(model, idx, draws)
    return task.loss_terms["grounding_loss"]


def test_grounding_loss_trains_the_cross_attention(data, tmp_path):
    config = tiny_config(*data, tmp_path / "run", "--training.grounding_loss_weight=2.0",
                         "--training.max_steps=60", "--training.checkpoint_every_steps=0")
    task = DiffusionTask(config, DistInfo())
    assert task.grounding is not None and task.grounding.skipped == 0
    # the step's loss is exactly denoising + weight x grounding
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(16)
    draws = task.draw(16, gen)
    total = task.loss(task.model, idx, draws)
    parts = task.loss_terms
    assert float(total.detach()) == pytest.approx(parts["denoising_loss"] + 2.0 * parts["grounding_loss"],
                                         rel=1e-6)
    # recomputed by hand from the recorded attention of the same forward pass
    tokens, entity, masks = task.grounding.batch(idx, "cpu")
    with record_cross_attention(task.model, 8) as records:
        from pictor.diffusion.forward import q_sample
        rows = torch.where(draws["drop"], torch.full_like(idx, task.text.empty_row),
                           task.caption_rows[idx])
        x_t = q_sample(task.x[idx], draws["t"], draws["noise"], task.alphas_cumprod)
        task.model(x_t, draws["t"].float(), task.emb[rows], task.mask[rows])
    assert len(records) == 2  # the tiny U-Net's down and up blocks at 8x8
    manual = grounding_loss(records, tokens, entity, masks, keep=~draws["drop"])
    assert float(manual) == pytest.approx(parts["grounding_loss"], rel=1e-5)

    before = fixed_token_loss(task, task.model)
    result = train(config)
    after = fixed_token_loss(task, result.model)
    assert after < 0.8 * before, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    logged = [r for r in rows if "grounding_loss" in r]
    assert logged and all("denoising_loss" in r for r in logged)


def test_centroid_loss_alone_builds_the_table_and_is_logged(data, tmp_path):
    config = tiny_config(*data, tmp_path / "run", "--training.grounding_centroid_weight=1.0",
                         "--training.max_steps=10", "--training.log_every_steps=5")
    result = train(config)
    assert result.step == 10
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    logged = [r for r in rows if "centroid_loss" in r]
    assert logged and all("grounding_loss" not in r for r in logged)


def test_grounding_needs_a_frozen_encoder(data, tmp_path):
    config = tiny_config(*data, tmp_path / "run", "--training.grounding_loss_weight=1.0",
                         "--text.spec=trainable", "--text.trainable_dim=32",
                         "--text.trainable_num_layers=1", "--text.trainable_num_heads=2",
                         "--model.context_dim=32")
    with pytest.raises(ValueError, match="frozen pretrained text encoder"):
        DiffusionTask(config, DistInfo())


def test_a_layout_prior_learns_where_the_words_go(data, tmp_path):
    """training.layout_prior_loss_weight: the prior's loss is logged, falls on a fixed batch as
    it trains, and the trained U-Net folder carries the prior into the pipeline."""
    prior = ["--model.layout_prior_width=16", "--model.layout_prior_heads=2",
             "--training.layout_prior_loss_weight=1.0", "--training.grounding_words=color",
             "--optimizer.lr=3e-3", "--training.checkpoint_every_steps=0"]
    task = DiffusionTask(tiny_config(*data, tmp_path / "a", *prior), DistInfo())

    def fixed_prior_loss(model):
        gen = torch.Generator().manual_seed(7)
        idx = torch.arange(task.num_examples)
        draws = task.draw(len(idx), gen)
        draws["drop"][:] = False
        with torch.no_grad():
            task.loss(model, idx, draws)
        return task.loss_terms["layout_prior_loss"]

    before = fixed_prior_loss(task.model)
    result = train(tiny_config(*data, tmp_path / "run", *prior, "--training.max_steps=60"))
    assert fixed_prior_loss(result.ema_module) < before - 0.05
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all("layout_prior_loss" in r for r in logged if "loss" in r)
    from pictor.pipeline import load_pipeline

    pipe = load_pipeline(tmp_path / "run" / "final")
    assert pipe.unet.layout_prior is not None
    assert "layout" in pipe.conditions("a red circle to the left of a blue square")[0]
    with pytest.raises(ValueError, match="give the model one"):
        DiffusionTask(tiny_config(*data, tmp_path / "b", "--training.layout_prior_loss_weight=1"),
                      DistInfo())


def test_train_layout_prior_trains_the_prior_alone(data, tmp_path):
    """`pictor train-layout-prior`: only the prior's weights change, its loss falls, the folder
    keeps its files and storage dtype; a model without a prior is a clear error."""
    from safetensors.torch import load_file

    from pictor.cli.main import main
    from pictor.training.export import export_model
    from pictor.training.layout_prior import LayoutPriorRun, train_layout_prior

    run = tmp_path / "run"
    train(tiny_config(*data, run, "--model.layout_prior_width=16", "--model.layout_prior_heads=2",
                      "--training.max_steps=2", "--training.checkpoint_every_steps=0"))
    model = export_model(run, tmp_path / "model", dtype="float16")
    out = train_layout_prior(model, data[0], tmp_path / "out",
                             LayoutPriorRun(steps=40, batch_size=32, lr=3e-3, log_every=10),
                             cache_dir=data[1], progress=False)
    before, after = load_file(str(model / "unet.safetensors")), load_file(str(out / "unet.safetensors"))
    assert after.keys() == before.keys() and {v.dtype for v in after.values()} == {torch.float16}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("layout_prior.") for k in changed)
    log = [json.loads(line) for line in (out / "layout_prior_log.jsonl").open()]
    assert log[-1]["layout_prior_loss"] < log[0]["layout_prior_loss"] - 0.05
    assert {p.name for p in model.iterdir()} <= {p.name for p in out.iterdir()}
    plain = tmp_path / "plain"
    train(tiny_config(*data, plain, "--training.max_steps=1", "--training.checkpoint_every_steps=0"))
    assert main(["train-layout-prior", str(plain / "final"), "--data", str(data[0]), "-o",
                 str(tmp_path / "x"), "--steps", "1"]) == 2
