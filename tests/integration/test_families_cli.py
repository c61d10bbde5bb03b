"""The GAN and VAE families through the same CLI as diffusion: each tiny config trains a few
steps with `pictor train`, generates with `pictor generate --model DIR` (records naming the
family, exact reproduction), refuses diffusion-only options with a clear error, and
`pictor eval --model A --compare B` writes one report over both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_support import REPO, shared_data

from pictor.cli.main import main
from pictor.config import load_family_config
from pictor.families.pipeline import load_model
from pictor.provenance import read_provenance
from pictor.training.distributed import DistInfo

PROMPT = "a red circle"


def train_tiny(family: str, data: Path, cache: Path, out: Path, *extra: str) -> Path:
    code = main(["train", "--config", str(REPO / "configs" / f"tiny-{family}.yaml"),
                 f"--data.path={data}", f"--data.cache_dir={cache}",
                 f"--training.output_dir={out}", *extra])
    assert code == 0
    return out / "final"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    data, cache = shared_data(tmp_path_factory)
    base = tmp_path_factory.mktemp("families")
    return {f: train_tiny(f, data, cache, base / f) for f in ("gan", "vae")}


@pytest.mark.parametrize("family,weights", [("gan", "generator.safetensors"),
                                            ("vae", "vae.safetensors")])
def test_train_writes_a_model_folder_and_stability_logs(models, family, weights):
    final = models[family]
    assert sorted(p.name for p in final.iterdir()) == sorted(["config.yaml", weights])
    records = [json.loads(line) for line in
               (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    keys = ({"d_loss", "g_loss", "penalty", "d_real", "d_fake", "condition_weight"}
            if family == "gan"
            else {"bits_per_dim", "recon_bits_per_dim", "kl_bits_per_dim", "kl_weight"})
    assert keys <= records[-1].keys()
    assert all(np.isfinite(r["loss"]) for r in records)
    if family == "vae":  # warm-up: weight (step + 1) / 10, then 1; reported after the step
        assert [r["kl_weight"] for r in records] == [0.5, 1.0, 1.0, 1.0]
        assert records[-1]["bits_per_dim"] < records[0]["bits_per_dim"]


def test_vae_loss_falls_on_a_fixed_batch(tmp_path_factory):
    """20 steps lower the negative ELBO (in bits/dim) of a fixed batch under fixed noise."""
    from pictor.training.vae import VaeTask, train_vae

    data, cache = shared_data(tmp_path_factory)
    out = tmp_path_factory.mktemp("vae_falls")
    config = load_family_config(REPO / "configs" / "tiny-vae.yaml", [
        f"--data.path={data}", f"--data.cache_dir={cache}", f"--training.output_dir={out}",
        "--vae.kl_warmup_steps=0"])
    task = VaeTask(config, DistInfo())

    def nelbo(model) -> float:
        idx = torch.arange(task.num_examples)
        draws = task.draw(len(idx), torch.Generator().manual_seed(5))
        with torch.no_grad():
            return float(task.loss(model.eval(), idx, draws))

    before = nelbo(task.model)
    after = nelbo(train_vae(config).model)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_generate_names_the_family_and_reproduces(models, family, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", PROMPT, "--model", str(models[family]), "-n", "3", "--seed", "4",
                 "-o", str(tmp_path)]) == 0
    paths = [Path(p) for p in capsys.readouterr().out.split()]
    assert len(paths) == 3
    record = read_provenance(paths[1])
    assert (record.extra["family"], record.sampler, record.num_steps, record.seed) == (
        family, family, 1, 5)
    with Image.open(paths[0]) as im:
        assert im.size == (16, 16)
    # image i uses seed + i alone: seed 5 on its own gives image 1's pixels
    [alone] = load_model(models[family]).generate(PROMPT, num_images=1, seed=5)
    assert np.array_equal(np.asarray(alone.image), np.asarray(Image.open(paths[1])))
    assert main(["reproduce", str(paths[2]), "--model", str(models[family])]) == 0
    other = "vae" if family == "gan" else "gan"
    assert main(["reproduce", str(paths[2]), "--model", str(models[other])]) == 2
    assert f"made by a {family} model" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--steps", "5"], ["--sampler", "ddim"], ["--guidance", "3"],
                                    ["--negative", "a blue square"], ["--layout", "on"],
                                    ["--guidance-interval", "all"]])
def test_diffusion_options_are_a_clear_error(models, option, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", PROMPT, "--model", str(models["gan"]), "-o", str(tmp_path),
                 *option]) == 2
    err = capsys.readouterr().err
    assert f"{option[0]} does not apply" in err and "one network pass" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_likelihood_is_defined_for_the_vae_only(models):
    vae, gan = load_model(models["vae"]), load_model(models["gan"])
    images = [g.image for g in gan.generate(PROMPT, num_images=2)]
    bpd = vae.bits_per_dim(images, [PROMPT, PROMPT])
    assert np.isfinite(bpd) and bpd > 0
    with pytest.raises(ValueError, match="GAN defines no likelihood"):
        gan.bits_per_dim(images, [PROMPT, PROMPT])


def test_eval_compare_writes_one_report_over_both(models, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "--model", str(models["gan"]), "--compare", str(models["vae"]),
                 "--suite", "validation-shapes", "--images-per-prompt", "2", "--quiet",
                 "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    gan, vae = report["models"]
    assert (gan["family"], vae["family"]) == ("gan", "vae")
    assert gan["settings"]["sampler"] is None and gan["settings"]["num_steps"] == 1
    assert gan["likelihood"] is None
    assert vae["likelihood"]["negative_elbo_bits_per_dim"] > 0
    assert vae["likelihood"]["num_images"] == len(vae["images"])
    for m in (gan, vae):
        collapse = m["diversity"]["mode_collapse"]
        assert 0 <= collapse["collapsed_prompts"] <= collapse["num_prompts"] > 0
        assert m["distribution"]["frechet_distance"] > 0 and m["seconds_per_image"] > 0
        assert set(m["scores"]) >= {"overall", "single_object", "position"}
    markdown = (out / "report.md").read_text()
    assert "| model | family |" in markdown and "bits/dim (-ELBO)" in markdown
    assert (out / "plots" / "comparison.png").is_file() and (out / "report.html").is_file()
    # sweeping sampling settings of a GAN is refused before anything runs
    assert main(["eval", "--model", str(models["gan"]), "--sweep", "steps=5,10", "--quiet",
                 "-o", str(tmp_path / "r2")]) == 2
    assert main(["eval", "--model", str(models["gan"]), "--steps", "5", "--quiet",
                 "-o", str(tmp_path / "r3")]) == 2


def test_wall_clock_budget_stops_with_a_checkpoint_and_a_model(tmp_path_factory):
    """training.max_wall_seconds: a budget any step exceeds stops the run after its first step,
    as a finished run (checkpoint, final/), whatever max_steps says."""
    from pictor.training.gan import train_gan

    data, cache = shared_data(tmp_path_factory)
    out = tmp_path_factory.mktemp("budget")
    config = load_family_config(REPO / "configs" / "tiny-gan.yaml", [
        f"--data.path={data}", f"--data.cache_dir={cache}", f"--training.output_dir={out}",
        "--training.max_steps=1000", "--training.max_wall_seconds=1e-9"])
    result = train_gan(config)
    assert result.step == 1 and len(result.losses) == 1
    assert result.last_checkpoint.name == "step_000000001"
    assert (out / "final" / "generator.safetensors").is_file()
    [record] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1


def test_serve_refuses_a_gan_or_vae_model_clearly(models, capsys):
    """The server's batching steps a diffusion sampler: a GAN or VAE folder is refused before
    anything loads or listens, naming the family and what to use instead."""
    for family in ("gan", "vae"):
        assert main(["serve", "--model", str(models[family]), "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert f"holds a {family} model" in err and "pictor generate" in err


def test_export_model_says_a_family_run_is_already_a_model_folder(models, tmp_path, capsys):
    run = models["gan"].parent
    assert main(["export-model", str(run), str(tmp_path / "out")]) == 2
    assert "gan run" in (err := capsys.readouterr().err) and "final is already a model" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family,extra", [
    ("gan", ["--gan.condition_ramp_start=4", "--gan.condition_ramp_end=16"]),
    ("vae", ["--vae.kl_warmup_steps=16"])])
def test_resume_equals_uninterrupted(tmp_path_factory, family, extra):
    """10 steps + resume + 10 == 20 at once, bit for bit, with the ramp or the KL warm-up
    crossing the split (both follow the optimizer step, not the process)."""
    from train_support import assert_same_state

    from pictor.training.gan import train_gan
    from pictor.training.vae import train_vae

    train = train_gan if family == "gan" else train_vae
    data, cache = shared_data(tmp_path_factory)
    base = tmp_path_factory.mktemp(f"resume_{family}")

    def config(out: str, steps: int):
        return load_family_config(REPO / "configs" / f"tiny-{family}.yaml", [
            f"--data.path={data}", f"--data.cache_dir={cache}",
            f"--training.output_dir={base / out}", f"--training.max_steps={steps}", *extra])

    whole = train(config("whole", 20))
    train(config("split", 10))
    resumed = train(config("split", 20), resume="latest")
    assert resumed.step == 20 and resumed.losses == whole.losses[10:]
    assert_same_state(whole.model.state_dict(), resumed.model.state_dict())
    assert_same_state(whole.ema_module.state_dict(), resumed.ema_module.state_dict())


def test_diffusion_only_commands_name_the_family(models, tmp_path, capsys):
    """explain (and every other diffusion-only loader) says which family the folder holds
    instead of missing a U-Net file."""
    capsys.readouterr()
    assert main(["explain", "reverse", PROMPT, "--model", str(models["vae"]),
                 "-o", str(tmp_path / "strip.png")]) == 2
    err = capsys.readouterr().err
    assert "holds a vae model" in err and "diffusion models only" in err
    image = tmp_path / "x.png"
    load_model(models["gan"]).generate(PROMPT)[0].image.save(image)
    assert main(["explain", "forward", str(image), "--model", str(models["gan"]),
                 "-o", str(tmp_path / "fwd.png")]) == 2
    err = capsys.readouterr().err
    assert "holds a gan model" in err and "diffusion models only" in err
    assert not (tmp_path / "strip.png").exists() and not (tmp_path / "fwd.png").exists()
