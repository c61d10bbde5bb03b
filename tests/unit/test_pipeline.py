"""pictor.pipeline on a tiny trained model: exact reproducibility (per-image seeds independent of
the batch, thread count and repetition), the records, the teaching views, input errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from pipeline_support import tiny_model_dir  # noqa: E402

from pictor.pipeline import COMPUTE_DTYPES, load_pipeline, model_digest  # noqa: E402

PROMPT = "a red circle"
RELATION = "a red circle to the left of a blue square"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return load_pipeline(model_dir)


def pixels(generated) -> list[np.ndarray]:
    return [np.asarray(g.image) for g in generated]


def test_same_settings_give_identical_pixels_and_image_i_uses_seed_plus_i(pipe):
    batch = pixels(pipe.generate(PROMPT, num_images=3, seed=5, num_steps=8))
    again = pixels(pipe.generate(PROMPT, num_images=3, seed=5, num_steps=8))
    assert all(np.array_equal(a, b) for a, b in zip(batch, again, strict=True))
    for i in range(3):
        [single] = pixels(pipe.generate(PROMPT, num_images=1, seed=5 + i, num_steps=8))
        assert np.array_equal(batch[i], single), f"image {i} depends on the batch"
    assert not np.array_equal(batch[0], batch[1])  # different seeds, different images


def test_stochastic_sampler_draws_noise_per_image(pipe):
    batch = pixels(pipe.generate(PROMPT, num_images=2, seed=3, num_steps=6, sampler="ddpm"))
    [single] = pixels(pipe.generate(PROMPT, num_images=1, seed=4, num_steps=6, sampler="ddpm"))
    assert np.array_equal(batch[1], single)


def test_thread_count_does_not_change_pixels(pipe):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pixels(pipe.generate(PROMPT, num_images=2, seed=11, num_steps=8))
        torch.set_num_threads(2)
        two = pixels(pipe.generate(PROMPT, num_images=2, seed=11, num_steps=8))
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))


def test_records_name_the_seed_sampler_and_model(pipe, model_dir):
    out = pipe.generate(PROMPT, num_images=2, seed=9, num_steps=4, sampler="DPMPP_2M",
                        guidance_scale=2.5, negative_prompt="a blue square")
    r0, r1 = out[0].record, out[1].record
    assert (r0.seed, r1.seed) == (9, 10)
    assert r0.sampler == "dpm++2m" and r0.num_steps == 4 and r0.guidance_scale == 2.5
    assert r0.prompt == PROMPT and r0.negative_prompt == "a blue square"
    assert r0.model_sha256 == model_digest(model_dir) == pipe.model_sha256
    assert (r0.width, r0.height) == out[0].image.size and out[0].image.mode == "RGB"


def test_guidance_interval_is_recorded_and_changes_only_the_unguided_steps(pipe):
    from pictor.pipeline import DEFAULT_GUIDANCE_INTERVAL

    [default] = pipe.generate(PROMPT, num_images=1, seed=2, num_steps=8)
    assert default.record.extra["guidance_interval"] == [DEFAULT_GUIDANCE_INTERVAL[0], None]
    [every] = pipe.generate(PROMPT, num_images=1, seed=2, num_steps=8, guidance_interval=None)
    assert every.record.extra["guidance_interval"] is None
    # an interval holding every step's sigma is the same as no interval
    [wide] = pipe.generate(PROMPT, num_images=1, seed=2, num_steps=8,
                           guidance_interval=(0.0, None))
    assert np.array_equal(np.asarray(wide.image), np.asarray(every.image))
    # and one holding none of them is guidance scale 1 (the conditional prediction)
    [none] = pipe.generate(PROMPT, num_images=1, seed=2, num_steps=8,
                           guidance_interval=(1e9, None))
    [scale1] = pipe.generate(PROMPT, num_images=1, seed=2, num_steps=8, guidance_scale=1.0,
                             guidance_interval=None)
    assert np.array_equal(np.asarray(none.image), np.asarray(scale1.image))
    assert not np.array_equal(np.asarray(none.image), np.asarray(every.image))


def test_bfloat16_compute_is_deterministic_and_recorded(model_dir, pipe):
    bf16 = load_pipeline(model_dir, compute_dtype="bfloat16")
    assert next(bf16.unet.parameters()).dtype == torch.bfloat16
    a = bf16.generate(PROMPT, num_images=2, seed=4, num_steps=6)
    b = bf16.generate(PROMPT, num_images=2, seed=4, num_steps=6)
    assert all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))
    assert a[0].record.extra["compute_dtype"] == "bfloat16"
    [f32] = load_pipeline(model_dir, compute_dtype="float32").generate(
        PROMPT, num_images=1, seed=4, num_steps=6)
    assert f32.record.extra["compute_dtype"] == "float32"
    # the same picture up to bf16 rounding of the network
    diff = np.abs(pixels(a)[0].astype(int) - np.asarray(f32.image).astype(int))
    assert diff.mean() < 8
    with pytest.raises(ValueError, match="float16"):
        load_pipeline(model_dir, compute_dtype="float16")


def test_auto_compute_dtype_is_bfloat16_only_where_the_cpu_has_it(model_dir, pipe):
    from pictor.hardware import cpu_has_native_bf16
    from pictor.pipeline import resolve_compute_dtype

    cpu = torch.device("cpu")
    native = cpu_has_native_bf16()
    assert resolve_compute_dtype("auto", cpu) == ("bfloat16" if native else "float32")
    assert pipe.compute_dtype == resolve_compute_dtype("auto", cpu)  # the default
    assert resolve_compute_dtype("float32", cpu) == "float32"


def test_empty_prompt_is_the_unconditional_model(pipe):
    # guidance scale 0 uses only the "" branch, so it must equal the unguided "" sample
    uncond = pixels(pipe.generate("", num_images=2, seed=1, num_steps=6))
    scale0 = pixels(pipe.generate(PROMPT, num_images=2, seed=1, num_steps=6, guidance_scale=0.0))
    for a, b in zip(uncond, scale0, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_prompt_cache_keeps_the_most_recently_used_prompts(pipe):
    before = pipe.prompt_cache_size
    try:
        pipe.prompt_cache_size = 2
        first = pipe.encode_prompt("a red circle")[0].clone()
        pipe.encode_prompt("a blue square")
        pipe.encode_prompt("a red circle")          # used again: now the most recent
        pipe.encode_prompt("three stars")           # evicts "a blue square"
        assert list(pipe._embeddings) == ["a red circle", "three stars"]
        assert torch.equal(pipe.encode_prompt("a red circle")[0], first)
    finally:
        pipe.prompt_cache_size = before


def test_a_later_process_reuses_the_stored_prompt_embedding(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PICTOR_CACHE_DIR", str(tmp_path / "cache"))
    first = load_pipeline(model_dir)
    fresh = pixels(first.generate("two stars", num_images=2, seed=4, num_steps=6))
    assert first._text_encoder is not None
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2  # prompt and ""
    later = load_pipeline(model_dir)  # as a new `pictor generate` process would
    again = pixels(later.generate("two stars", num_images=2, seed=4, num_steps=6))
    assert later._text_encoder is None  # the encoder was never loaded
    assert all(np.array_equal(a, b) for a, b in zip(fresh, again, strict=True))
    # a prompt no process has seen: encoded by the compiled copy the first process saved
    newer = load_pipeline(model_dir)
    unseen = pixels(newer.generate("a blue square", num_images=1, seed=4, num_steps=6))
    assert newer._text_encoder is None and newer._compiled_text_encoder
    monkeypatch.setenv("PICTOR_CACHE_DIR", "none")
    off = load_pipeline(model_dir)
    assert pixels(off.generate("two stars", num_images=2, seed=4, num_steps=6))[1].tobytes() \
        == fresh[1].tobytes() and off._text_encoder is not None
    assert np.array_equal(pixels(off.generate("a blue square", num_images=1, seed=4,
                                              num_steps=6))[0], unseen[0])


def test_trajectory_ends_at_the_generated_image(pipe):
    steps = pipe.trajectory(PROMPT, seed=2, num_steps=6)
    assert [s.step_index for s in steps] == list(range(6))
    assert steps[0].t > steps[-1].t
    [final] = pixels(pipe.generate(PROMPT, seed=2, num_steps=6))
    # DPM-Solver++'s last step lands on sigma = 0: the result is the last x0 prediction
    assert np.array_equal(np.asarray(steps[-1].x0_pred), final)


def test_forward_strip_noises_progressively(pipe):
    [g] = pipe.generate(PROMPT, seed=0, num_steps=4)
    ts = [0, 500, 999]
    out = pipe.forward_strip(g.image, ts)
    assert len(out) == 3 and out[0].size == g.image.size
    x0 = np.asarray(g.image).astype(int)
    errors = [np.abs(np.asarray(im).astype(int) - x0).mean() for im in out]
    assert errors[0] < 3 and errors[0] < errors[1] < errors[2]
    with pytest.raises(ValueError, match="timesteps must lie in"):
        pipe.forward_strip(g.image, [1000])


def test_bad_inputs_raise_value_errors(pipe, model_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown sampler 'nope'.*dpm\\+\\+2m"):
        pipe.generate(PROMPT, sampler="nope")
    with pytest.raises(ValueError, match="num_images"):
        pipe.generate(PROMPT, num_images=0)
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match=str(missing)):
        load_pipeline(missing)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(model_dir / "config.yaml", partial / "config.yaml")
    with pytest.raises(ValueError, match="unet.safetensors"):
        load_pipeline(partial)


def test_text_adapter_runs_once_per_prompt_and_gives_the_per_step_result(model_dir, tmp_path):
    import dataclasses

    from pictor.networks.io import load_module, save_module
    from pictor.networks.unet import UNet, UNetConfig

    adapted_dir = tmp_path / "adapted"
    shutil.copytree(model_dir, adapted_dir)
    plain = load_module(UNet, UNetConfig, adapted_dir / "unet.safetensors")
    config = dataclasses.replace(plain.config, text_adapter_layers=1)
    unet = UNet(config)
    unet.load_state_dict(plain.state_dict(), strict=False)
    torch.manual_seed(0)
    for p in unet.text_adapter.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_module(unet, config, adapted_dir / "unet.safetensors")

    pipe = load_pipeline(adapted_dir)
    pipe.set_compute_dtype("float32")
    calls = []
    pipe.unet.text_adapter.register_forward_hook(lambda *_: calls.append(1))
    first = pixels(pipe.generate(PROMPT, num_images=2, num_steps=4))
    assert len(calls) == 2  # the prompt and the empty negative prompt, not once per step
    assert all(np.array_equal(a, b) for a, b in
               zip(first, pixels(pipe.generate(PROMPT, num_images=2, num_steps=4)), strict=True))
    # the prepared tokens give what the U-Net computes from the raw ones
    cond, _ = pipe.conditions(PROMPT)
    emb, mask = pipe.encode_prompt(PROMPT)
    length = cond["mask"].shape[1]
    x, t = torch.randn(1, *pipe.latent_shape), torch.tensor([500.0])
    with torch.no_grad():
        torch.testing.assert_close(pipe.run_unet(x, t, cond["context"], cond["mask"]),
                                   pipe.unet(x, t, emb[:, :length], mask[:, :length]))
    assert not torch.allclose(cond["context"], emb[:, :length])  # the adapter did something


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_traced_unet_gives_the_same_pixels_as_eager(model_dir, dtype):
    eager = load_pipeline(model_dir)
    eager.set_compute_dtype(dtype)
    eager.trace_after_calls = None
    traced = load_pipeline(model_dir)
    traced.set_compute_dtype(dtype)
    traced.trace_after_calls = 2
    for prompt, n in ((PROMPT, 1), ("two stars", 3), ("", 1), (RELATION, 2)):
        want = pixels(eager.generate(prompt, num_images=n, seed=5, num_steps=6))
        got = pixels(traced.generate(prompt, num_images=n, seed=5, num_steps=6))
        assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True)), prompt
    assert traced._traces and all(v is not None for v in traced._traces.values())
    assert not eager._traces


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_run_unet_is_the_same_pass_eager_traced_and_with_its_prompt_terms(model_dir, dtype):
    """run_unet computes a context's prompt terms once and reuses them; eager and traced passes
    get every input in the compute dtype (the layout bias included), so both give the U-Net's
    own pass to the bit."""
    from pictor.guidance import concat_conds

    pipes = []
    for after in (None, 1):
        p = load_pipeline(model_dir)
        p.set_compute_dtype(dtype)
        p.trace_after_calls = after
        pipes.append(p)
    eager, traced = pipes
    cond, uncond = eager.conditions(RELATION, "")
    both = concat_conds(cond, uncond)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *eager.latent_shape, generator=g)
    side = eager.latent_shape[-1]
    layout = torch.randn(2, both["mask"].shape[1], side, side, generator=g)  # not bf16-exact
    cdt = COMPUTE_DTYPES[dtype]
    with torch.inference_mode():
        want = eager.unet(x.to(cdt), torch.tensor([700.0, 700.0]), both["context"].to(cdt),
                          both["mask"], context_prepared=True, layout=layout.to(cdt)).float()
        for t in (700.0, 300.0, 700.0):  # the second call with a context reuses its terms
            tt = torch.tensor([t, t])
            for p in pipes:
                got = p.run_unet(x, tt, both["context"], both["mask"], layout)
                if t == 700.0:
                    assert torch.equal(got, want)
            assert torch.equal(eager.run_unet(x, tt, both["context"], both["mask"], layout),
                               traced.run_unet(x, tt, both["context"], both["mask"], layout))
    assert len(eager._prompt_terms) == 1 and traced._traces
    fresh = load_pipeline(model_dir)
    fresh.trace_after_calls = 2
    with torch.inference_mode():
        fresh.run_unet(x, torch.tensor([700.0, 700.0]), both["context"], both["mask"])
        assert fresh.untraced_shapes == 1
        fresh.run_unet(x, torch.tensor([700.0, 700.0]), both["context"], both["mask"])
    assert fresh.untraced_shapes == 0


def test_layout_guidance_changes_only_prompts_with_a_plan_and_is_recorded(pipe):
    from pictor.guidance import LayoutSettings

    plain = pipe.generate(PROMPT, num_images=2, seed=3, num_steps=6, layout=False)
    steered = pipe.generate(PROMPT, num_images=2, seed=3, num_steps=6, layout=True)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(plain), pixels(steered), strict=True))
    assert [g.record.extra["layout"] for g in plain + steered] == [False] * 2 + [True] * 2
    assert pipe.layout_plan(PROMPT) is None and pipe.layout_plan(RELATION) is not None
    off = pixels(pipe.generate(RELATION, num_images=2, seed=3, num_steps=6, layout=False))
    on = pixels(pipe.generate(RELATION, num_images=2, seed=3, num_steps=6, layout=True))
    assert not np.array_equal(off[0], on[0])
    assert np.array_equal(on[1], pixels(pipe.generate(RELATION, seed=4, num_steps=6,
                                                          layout=True))[0])
    # the bias only acts on steps with t >= min_t: above every timestep it changes nothing
    before = pipe.layout_settings
    try:
        pipe.layout_settings = LayoutSettings(min_t=10_000)
        late = pixels(pipe.generate(RELATION, num_images=2, seed=3, num_steps=6, layout=True))
    finally:
        pipe.layout_settings = before
    assert np.array_equal(late[0], off[0])


def test_count_emphasis_changes_count_prompts_and_records_its_rules(pipe):
    from pictor.pipeline import layout_from_extra

    count = "three red circles"
    off = pipe.generate(count, num_images=2, seed=3, num_steps=6, layout=False)
    on = pipe.generate(count, num_images=2, seed=3, num_steps=6, layout=True)  # every rule
    relation_only = pipe.generate(count, num_images=2, seed=3, num_steps=6, layout=["relation"])
    assert not np.array_equal(pixels(off)[0], pixels(on)[0])
    assert all(np.array_equal(a, b)
               for a, b in zip(pixels(off), pixels(relation_only), strict=True))
    assert on[0].record.extra["layout_rules"] == ["relation", "count"]
    assert relation_only[0].record.extra["layout_rules"] == ["relation"]
    assert "layout_rules" not in off[0].record.extra
    for g in off + on + relation_only:
        assert layout_from_extra(g.record.extra) == tuple(g.record.extra.get("layout_rules", ()))
    # records from before the count rule: layout on meant the relation rule alone
    assert layout_from_extra({"layout": True}) == ("relation",)
    assert layout_from_extra({}) == ()
    cond, _ = pipe.conditions(count, layout=True)
    # [CLS] three red circles [SEP]: only "three" is emphasised, by count_strength everywhere
    assert torch.equal(cond["layout"][0, 1], torch.full_like(cond["layout"][0, 1],
                                                             pipe.layout_settings.count_strength))
    assert cond["layout"][0, [0, 2, 3, 4]].abs().max() == 0


def test_layout_conditions_bias_the_steered_tokens_of_the_conditional_half_only(pipe):
    cond, uncond = pipe.conditions(RELATION, layout=True)
    length, side = cond["context"].shape[1], pipe.latent_shape[-1]
    assert cond["layout"].shape == uncond["layout"].shape == (1, length, side, side)
    assert uncond["layout"].abs().max() == 0
    steered = cond["layout"].flatten(2).abs().amax(-1)[0] > 0         # (L,)
    # [CLS] a red circle to the left of a blue square [SEP]; the tiny model has no grounding
    # loss, so every content word of each phrase is steered: red circle, blue square
    assert steered.nonzero().flatten().tolist() == [2, 3, 9, 10]
    plain, _ = pipe.conditions(RELATION)
    assert "layout" not in plain


def test_a_learned_layout_prior_steers_the_high_noise_passes_of_every_prompt(model_dir, tmp_path):
    """A U-Net with a layout prior (pictor.networks.layout_prior): the pipeline computes its
    bias once per prompt from the frozen tokens and passes it while t >= layout_prior_min_t;
    the network computes the same thing itself from the raw tokens."""
    import dataclasses

    from pictor.networks.io import load_module, save_module
    from pictor.networks.unet import UNet, UNetConfig

    folder = tmp_path / "prior"
    shutil.copytree(model_dir, folder)
    plain = load_module(UNet, UNetConfig, folder / "unet.safetensors")
    config = dataclasses.replace(plain.config, layout_prior_width=8, layout_prior_heads=2,
                                 layout_prior_size=16)
    unet = UNet(config)
    unet.load_state_dict(plain.state_dict(), strict=False)
    torch.manual_seed(0)
    for p in unet.layout_prior.parameters():
        torch.nn.init.normal_(p, std=0.3)
    save_module(unet, config, folder / "unet.safetensors")
    pipe = load_pipeline(folder)
    pipe.set_compute_dtype("float32")
    cond, uncond = pipe.conditions(PROMPT)  # no layout rule asked for: the model's own prior
    assert cond["layout"].abs().max() > 0 and torch.equal(uncond["layout"],
                                                          torch.zeros_like(cond["layout"]))
    assert "layout" not in pipe.conditions("")[0]  # the empty prompt: no prior
    t_high, t_low = torch.tensor([900.0]), torch.tensor([100.0])
    assert pipe.step_layout(t_high, cond) is cond["layout"]
    assert pipe.step_layout(t_low, cond) is None
    emb, mask = pipe.encode_prompt(PROMPT)
    length = cond["mask"].shape[1]
    x = torch.randn(1, *pipe.latent_shape)
    with torch.no_grad():
        for t in (t_high, t_low):
            torch.testing.assert_close(
                pipe.run_unet(x, t, cond["context"], cond["mask"], pipe.step_layout(t, cond)),
                pipe.unet(x, t, emb[:, :length], mask[:, :length]))
    # it changes the images, and they are reproducible
    base = load_pipeline(model_dir)
    base.set_compute_dtype("float32")
    steered = pixels(pipe.generate(RELATION, num_images=2, seed=3, num_steps=6, layout=False))
    assert not np.array_equal(steered[0], pixels(base.generate(
        RELATION, num_images=1, seed=3, num_steps=6, layout=False))[0])
    again = pixels(pipe.generate(RELATION, num_images=2, seed=3, num_steps=6, layout=False))
    assert all(np.array_equal(a, b) for a, b in zip(steered, again, strict=True))
