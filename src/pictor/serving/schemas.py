"""The JSON bodies of the REST API (pydantic models; they make /openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pictor.pipeline import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_LAYOUT,
    DEFAULT_NUM_STEPS,
    DEFAULT_SAMPLER,
)


class GenerationIn(BaseModel):
    """POST /v1/generations. Limits (n, steps, prompt length, guidance) are the server's
    settings; a request beyond them gets 422 with the reason."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description='the text prompt; "" for unconditional samples')
    model: str | None = Field(None, description="the served model to use, by name (GET "
                                                "/v1/models); none: the first listed")
    negative_prompt: str = Field("", description="what to steer away from")
    n: int = Field(1, description="number of images; image i uses seed + i")
    seed: int | None = Field(None, description="seed of the first image; none: the server "
                                               "picks one (returned in the job)")
    steps: int = Field(DEFAULT_NUM_STEPS, description="sampler steps")
    guidance: float = Field(DEFAULT_GUIDANCE_SCALE, description="classifier-free guidance "
                                                                "scale (1: conditional only)")
    sampler: str = Field(DEFAULT_SAMPLER, description="ddpm, ddim, dpm++2m, dpm++2m-karras, "
                                                      "euler (or an alias)")
    layout: bool = Field(DEFAULT_LAYOUT, description="layout guidance: the two objects of a "
                         "prompt's spatial relation ('A to the left of B', right of, above, "
                         "below) steered to their sides in the first steps, and its count words "
                         "(two, three, ...) weighted more there")


class GenerationAccepted(BaseModel):
    id: str
    status: str
    url: str  # GET: the job
    events_url: str  # GET: server-sent events


class ImageOut(BaseModel):
    name: str
    url: str
    seed: int
    record: dict[str, Any]  # the provenance record written into the PNG


class GenerationOut(BaseModel):
    id: str
    status: str  # queued | running | succeeded | failed | cancelled
    progress: float  # 0..1
    step: int
    num_steps: int
    seeds: list[int]  # per image: seed + i
    images: list[ImageOut]  # when succeeded
    request: dict[str, Any]
    queue_position: int | None  # 0 = next to run; None unless queued
    cancel_requested: bool
    batch_id: str | None  # jobs sampled in one call share it
    batch_num_images: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None


class ModelOut(BaseModel):
    name: str  # what requests choose it by (`model`); also the images' provenance model_name
    sha256: str
    image_size: int
    state: str  # warming | ready (see GET /readyz)
    samplers: list[str]
    defaults: dict[str, Any]
    limits: dict[str, Any]


class ModelsOut(BaseModel):
    models: list[ModelOut]


class HealthOut(BaseModel):
    # ok | starting (model loading or warming: alive, not ready) | degraded (worker thread
    # not running: 503) | failed (the model did not load: 503)
    status: str
    queue: dict[str, Any]


class ReadyOut(BaseModel):
    # loading | warming | failed: 503; ready: 200. Open without a token, so it says no more:
    # why loading failed is in the server's log and in the 503 of the routes behind the token.
    status: str
    # how long the warm-up generation took (several models: their sum, once all have run)
    warmup_seconds: float | None
