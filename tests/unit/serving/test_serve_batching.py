"""Micro-batching (pictor.serving.batching) on a tiny trained model: a batch of different
requests gives each request exactly the pixels and records of its solo `Pipeline.generate`
call, for deterministic and stochastic samplers, guided and unguided; batch keys separate what
cannot share a call; cancelled requests stop costing network calls."""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
from pipeline_support import tiny_model_dir  # noqa: E402

from pictor.pipeline import load_pipeline  # noqa: E402
from pictor.serving.batching import (  # noqa: E402
    GenerationRequest,
    batch_key,
    generate_batch,
    sample_batch,
)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load_pipeline(tiny_model_dir(tmp_path_factory))


def solo(pipe, r: GenerationRequest):
    return pipe.generate(r.prompt, num_images=r.num_images, seed=r.seed,
                         num_steps=r.num_steps, sampler=r.sampler,
                         guidance_scale=r.guidance_scale, negative_prompt=r.negative_prompt,
                         layout=r.layout)


def assert_batch_equals_solo(pipe, requests, **kwargs):
    assert len({batch_key(pipe, r) for r in requests}) == 1
    for r, got in zip(requests, generate_batch(pipe, requests, **kwargs), strict=True):
        want = solo(pipe, r)
        assert len(got) == r.num_images
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(np.asarray(g.image), np.asarray(w.image)), r
            a, b = asdict(g.record), asdict(w.record)
            a.pop("created"), b.pop("created")
            assert a == b


def test_batch_of_different_prompts_equals_solo_calls(pipe):
    requests = [GenerationRequest("a red circle", num_images=2, seed=3, num_steps=8),
                GenerationRequest("a blue square", "a red star", num_images=1, seed=50,
                                  num_steps=8),
                GenerationRequest("a white star", num_images=3, seed=3, num_steps=8)]
    assert_batch_equals_solo(pipe, requests)


def test_layout_guided_requests_batch_and_equal_solo_calls(pipe):
    relations = [GenerationRequest("a red circle above a blue square", num_images=2, seed=3,
                                   num_steps=8, layout=True),
                 GenerationRequest("a white star below a green circle", num_images=1, seed=9,
                                   num_steps=8, layout=True)]
    assert_batch_equals_solo(pipe, relations)
    counts = [GenerationRequest("three white stars", num_images=1, seed=5, num_steps=8,
                                layout=True),
              GenerationRequest("four red circles", num_images=2, seed=1, num_steps=8,
                                layout=True)]
    assert_batch_equals_solo(pipe, counts)
    unsteered = replace(relations[0], layout=False)
    assert batch_key(pipe, unsteered) != batch_key(pipe, relations[0])
    assert_batch_equals_solo(pipe, [unsteered])


@pytest.mark.parametrize("sampler, guidance", [("ddim", 1.0), ("euler", 0.0), ("ddpm", 4.0)])
def test_other_samplers_and_guidance_paths(pipe, sampler, guidance):
    requests = [GenerationRequest("a red circle", num_images=2, seed=1, num_steps=5,
                                  sampler=sampler, guidance_scale=guidance),
                GenerationRequest("a blue square", num_images=1, seed=9, num_steps=5,
                                  sampler=sampler, guidance_scale=guidance)]
    assert_batch_equals_solo(pipe, requests)


def test_unguided_empty_prompts(pipe):
    requests = [GenerationRequest("", num_images=1, seed=s, num_steps=4) for s in (0, 7)]
    assert_batch_equals_solo(pipe, requests)


def test_batch_keys_separate_incompatible_requests(pipe):
    base = GenerationRequest("a red circle", num_steps=8)
    key = batch_key(pipe, base)
    same = [GenerationRequest("a blue square", "a red star", num_images=4, seed=99,
                              num_steps=8, sampler="DPMPP_2M")]
    differ = [GenerationRequest("a red circle", num_steps=9),
              GenerationRequest("a red circle", num_steps=8, sampler="ddim"),
              GenerationRequest("a red circle", num_steps=8, guidance_scale=2.0),
              GenerationRequest("", num_steps=8),  # unguided
              GenerationRequest("a red circle to the left of a blue square", num_steps=8)]
    assert all(batch_key(pipe, r) == key for r in same)
    assert all(batch_key(pipe, r) != key for r in differ)
    with pytest.raises(ValueError, match="share a batch_key"):
        sample_batch(pipe, [base, differ[0]])


def test_cancelled_request_is_skipped_and_others_unchanged(pipe):
    requests = [GenerationRequest("a red circle", num_images=1, seed=4, num_steps=6),
                GenerationRequest("a blue square", num_images=2, seed=8, num_steps=6)]
    steps = []

    def on_step(progress, x0_preds):
        steps.append(progress[0])

    latents = sample_batch(pipe, requests, on_step=on_step, is_active=lambda r: r == 0)
    assert steps == pytest.approx([(i + 1) / 6 for i in range(6)])
    [want] = solo(pipe, requests[0])
    assert np.array_equal(np.asarray(pipe.decode(latents[0])[0]), np.asarray(want.image))


def test_fast_mode_is_close_to_solo(pipe):
    # one network call for the whole batch: CPU GEMMs are not batch-invariant, so only close
    requests = [GenerationRequest("a red circle", num_images=2, seed=3, num_steps=8),
                GenerationRequest("a blue square", num_images=1, seed=50, num_steps=8)]
    for r, got in zip(requests, generate_batch(pipe, requests, exact=False), strict=True):
        for g, w in zip(got, solo(pipe, r), strict=True):
            diff = np.abs(np.asarray(g.image).astype(int) - np.asarray(w.image).astype(int))
            assert diff.max() <= 3
