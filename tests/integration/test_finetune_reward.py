"""Reward fine-tuning (pictor.reward.finetune) on the tiny config: the loop raises its reward,
resumes exactly, and exports only checkpoints within the FD/diversity bounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_support import shared_data, tiny_config

from pictor.config import FinetuneConfig, load_config
from pictor.reward.finetune import RewardTask, finetune, read_validation
from pictor.training.distributed import DistInfo
from pictor.training.trainer import train


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny pixel-space model folder (a run's final/), trained for a few steps."""
    data = shared_data(tmp_path_factory)
    out = tmp_path_factory.mktemp("ft_base") / "run"
    train(tiny_config(*data, out, "--training.max_steps=20", "--training.checkpoint_every_steps=0"))
    return out / "final"


def brightness(images, canonical):
    """A reward the tiny model can move quickly: mean pixel value in [0, 1]."""
    return [float(np.asarray(im, dtype=np.float64).mean() / 255.0) for im in images]


def ft_config(base, out, *extra: str) -> FinetuneConfig:
    return load_config(None, FinetuneConfig, [
        f"--reward.init_from={base}", "--reward.prompts_per_round=4",
        "--reward.images_per_prompt=4", "--reward.steps_per_round=2", "--reward.num_steps=5",
        "--reward.validation_suites=[]", "--optimizer.lr=3e-3", "--training.batch_size=8",
        "--training.max_steps=24", "--training.checkpoint_every_steps=12",
        "--training.validation_every_steps=0", "--training.ema_halflife_steps=1",
        "--training.mixed_precision=no", "--training.num_threads=1",
        "--training.log_every_steps=2", "--training.progress_bar=false",
        f"--training.output_dir={out}", *extra])


def rewards(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["reward"] for line in lines if '"reward"' in line]


def test_finetune_raises_its_reward(base_model, tmp_path):
    result = finetune(ft_config(base_model, tmp_path / "ft"), reward_fn=brightness)
    r = rewards(tmp_path / "ft")
    assert len(r) == 12  # one log line per round (every 2 steps)
    first, last = np.mean(r[:3]), np.mean(r[-3:])
    assert last > first + 0.05, r
    # final/ is a model folder of the starting model's kind with the fine-tuned weights
    final = tmp_path / "ft" / "final"
    assert {"unet.safetensors", "config.yaml", "finetune.yaml", "selection.json"} <= {
        p.name for p in final.iterdir()}
    saved = load_file(str(final / "unet.safetensors"))
    ema = result.ema_module.state_dict()
    assert all(torch.equal(saved[k], ema[k]) for k in saved)
    from pictor.pipeline import load_pipeline

    load_pipeline(final).generate("a red circle", num_steps=2)


def test_finetune_resume_is_exact(base_model, tmp_path):
    whole = finetune(ft_config(base_model, tmp_path / "a", "--training.max_steps=8",
                               "--training.checkpoint_every_steps=4"), reward_fn=brightness)
    cfg = ft_config(base_model, tmp_path / "b", "--training.max_steps=4",
                    "--training.checkpoint_every_steps=4")
    finetune(cfg, reward_fn=brightness)
    cfg = ft_config(base_model, tmp_path / "b", "--training.max_steps=8",
                    "--training.checkpoint_every_steps=4")
    resumed = finetune(cfg, resume="latest", reward_fn=brightness)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rewards(tmp_path / "a")[-2:] == rewards(tmp_path / "b")[-2:]


def test_checkpoints_beyond_the_bounds_are_never_exported(base_model, tmp_path):
    run = tmp_path / "sel"
    task = RewardTask(ft_config(base_model, run, "--reward.validation_suites=[s]"), DistInfo())
    (run / "validated").mkdir(parents=True)
    base = {"val/s/overall": 0.5, "val/s/fd": 1.0, "val/s/diversity_ratio": 1.0}
    (run / "baseline.json").write_text(json.dumps(base))
    weights = {}
    for step, (score, fd, div) in {4: (0.6, 1.1, 1.0), 8: (0.9, 1.4, 1.0),
                                   12: (0.95, 1.0, 0.8), 16: (0.7, 1.2, 0.95)}.items():
        scores = {"val/s/overall": score, "val/s/fd": fd, "val/s/diversity_ratio": div}
        ok, why = task.within_bounds(scores, base)
        weights[step] = run / "validated" / f"step_{step:09d}.safetensors"
        from pictor.networks.io import save_module

        torch.nn.init.constant_(next(task.model.parameters()), float(step))
        save_module(task.model, task.model.config, weights[step])
        with open(run / "validation.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "scores": scores, "accepted": ok, "why": why,
                                "weights": str(weights[step])}) + "\n")
    records = read_validation(run)
    assert [r["accepted"] for r in records] == [True, False, False, True]
    assert "FD 1.400 > 1.25" in records[1]["why"] and "diversity 0.800" in records[2]["why"]
    task.finish(task.model, run)
    # step 8 and 12 score higher but break a bound; 16 is the best accepted one
    assert json.loads((run / "final" / "selection.json").read_text())["chosen_step"] == 16
    assert (run / "final" / "unet.safetensors").read_bytes() == weights[16].read_bytes()


def test_finetune_config_errors(base_model, tmp_path):
    with pytest.raises(ValueError, match="multiple of reward.steps_per_round"):
        ft_config(base_model, tmp_path, "--reward.steps_per_round=5")
    with pytest.raises(ValueError, match="images_per_prompt must be >= 2"):
        ft_config(base_model, tmp_path, "--reward.images_per_prompt=1")
    with pytest.raises(ValueError, match="exceeds the samples of a round"):
        ft_config(base_model, tmp_path, "--training.batch_size=32")
    with pytest.raises(ValueError, match="needs a starting model"):
        RewardTask(load_config(None, FinetuneConfig, [f"--training.output_dir={tmp_path}"]),
                   DistInfo())


def test_optimality_probability_closed_forms():
    from pictor.reward.finetune import optimality_probability

    r = optimality_probability(torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1]), 4,
                               advantage_clip=2.0)
    # group 1: one pass of 4, mean 1/4, std sqrt(3)/4: A = +sqrt(3) and -1/sqrt(3)
    a = 3 ** 0.5
    torch.testing.assert_close(r[:4], torch.tensor([0.5 + a / 4, 0.5 - 1 / (4 * a),
                                                    0.5 - 1 / (4 * a), 0.5 - 1 / (4 * a)]))
    # group 2: two of four, A = +-1; group 3: all pass, no preference
    torch.testing.assert_close(r[4:8], torch.tensor([0.75, 0.75, 0.25, 0.25]))
    torch.testing.assert_close(r[8:], torch.full((4,), 0.5))
    assert float(optimality_probability(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]), 8,
                                        advantage_clip=1.0)[0]) == 1.0  # clipped
    with pytest.raises(ValueError, match="groups x 3"):
        optimality_probability(torch.ones(4), 3)


def test_validation_scores_the_suites_and_the_start_once(base_model, tmp_path):
    run = tmp_path / "val"
    cfg = ft_config(base_model, run, "--training.max_steps=4", "--training.checkpoint_every_steps=4",
                    "--training.validation_every_steps=2",
                    "--reward.validation_suites=[validation-shapes]")
    finetune(cfg, reward_fn=brightness)
    base = json.loads((run / "baseline.json").read_text())
    records = read_validation(run)
    assert [r["step"] for r in records] == [2, 4]
    categories = ("single_object", "colors", "two_object", "color_attr", "counting", "position")
    images = 16 * 2  # validation-shapes: 16 prompts per category, 2 images per prompt
    for scores in [base] + [r["scores"] for r in records]:
        per_category = [scores[f"val/validation-shapes/{c}"] for c in categories]
        for rate in per_category:  # pass counts of 32 real verdicts, not a free float
            assert rate * images == pytest.approx(round(rate * images), abs=1e-6)
        assert scores["val/validation-shapes/overall"] == pytest.approx(sum(per_category) / 6)
        assert scores["val/validation-shapes/fd"] > 0
        assert scores["val/validation-shapes/diversity_ratio"] > 0
    for r in records:  # the stated bounds, against the start's figures
        s = r["scores"]
        within = (s["val/validation-shapes/fd"] <= 1.25 * base["val/validation-shapes/fd"]
                  and s["val/validation-shapes/diversity_ratio"]
                  >= 0.9 * base["val/validation-shapes/diversity_ratio"])
        assert r["accepted"] == within, r
    chosen = json.loads((run / "final" / "selection.json").read_text())
    accepted = [r["step"] for r in records if r["accepted"]]
    assert chosen["chosen_step"] in (accepted or [None])
