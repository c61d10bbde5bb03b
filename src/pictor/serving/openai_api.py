"""`POST /v1/images/generations`: the stateless, OpenAI-compatible image endpoint.

The request and response follow OpenAI's Images API ("Create image",
https://platform.openai.com/docs/api-reference/images/create), so the clients people already
use work unchanged:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=TOKEN)
    r = client.images.generate(prompt="a red circle", size="64x64",
                               response_format="b64_json", extra_body={"seed": 7, "steps": 20})
    png = base64.b64decode(r.data[0].b64_json)   # provenance record inside

What is OpenAI's and what is pictor's:
- `prompt`, `n`, `size`, `response_format`, `model`, `user`, `output_format` are OpenAI's
  fields. `size` must be the served model's only size ("64x64" for the shipped model) or
  "auto"; `response_format` must be "b64_json" (the default here): "url" would need the server
  to keep the image for a later GET, and this endpoint keeps nothing. `model` chooses among the
  served models (GET /v1/models; none: the first); `user` is accepted and ignored.
- `seed`, `steps`, `guidance`, `sampler`, `negative_prompt`, `layout` are pictor's (the async
  API's fields, same meaning and limits); OpenAI clients send them in `extra_body`. With a seed
  the answer is deterministic: image i uses seed + i, so any replica gives the same pixels.
- The response is OpenAI's `{created, data: [{b64_json}]}`, each item also carrying its `seed`;
  every PNG holds pictor's provenance record (synthetic, prompt, seed, model, ...).

Stateless: the request runs through the server's JobQueue (same queue, limits, micro-batching
and worker as the async API; Job.retained=False), and the route waits for its images and
returns them; the queue forgets the job as it finishes. Any replica can therefore answer any
request, which is what a load balancer in front of several replicas needs (the async API keeps
its jobs in one process's memory).

Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
field (including values beyond the server's limits, which the async API reports as 422), 401
without the token, 404 for a model not served, 413 for a large body, 429 + Retry-After when the
queue is full, 503 + Retry-After while the model loads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pictor.pipeline import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_LAYOUT,
    DEFAULT_NUM_STEPS,
    DEFAULT_SAMPLER,
)
from pictor.serving.jobs import JobQueue, JobStatus, NotCancellable, QueueFull
from pictor.serving.models import UnknownModel
from pictor.serving.readiness import RETRY_AFTER_LOADING_SECONDS, ModelNotLoaded
from pictor.serving.routes import checked_request
from pictor.serving.schemas import GenerationIn
from pictor.serving.security import OPENAI_PATHS, openai_error

router = APIRouter()
# how often a waiting request checks that its client is still connected (a client that gave
# up, e.g. on its own timeout, would otherwise keep the worker busy for nothing)
DISCONNECT_POLL_SECONDS = 1.0
CLIENT_CLOSED_REQUEST = 499


class ImagesGenerationIn(BaseModel):
    """OpenAI's image generation request, plus pictor's settings (extra_body in the client)."""

    model_config = ConfigDict(extra="forbid")

    # ---- OpenAI's fields
    prompt: str = Field(description="the text prompt")
    model: str | None = Field(None, description="a served model's name (GET /v1/models); "
                                                "none: the first listed")
    n: int = Field(1, description="number of images; image i uses seed + i")
    size: str | None = Field(None, description='"WxH": the served model\'s size, or "auto"')
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description='"b64_json" (default); "url" is refused: the endpoint is stateless')
    output_format: Literal["png"] | None = Field(None, description="png only")
    user: str | None = Field(None, description="accepted and ignored")
    # ---- pictor's fields (as in POST /v1/generations)
    seed: int | None = Field(None, description="seed of the first image; none: the server "
                                               "picks one (returned per image)")
    steps: int = Field(DEFAULT_NUM_STEPS, description="sampler steps")
    guidance: float = Field(DEFAULT_GUIDANCE_SCALE, description="classifier-free guidance scale")
    sampler: str = Field(DEFAULT_SAMPLER, description="ddpm, ddim, dpm++2m, dpm++2m-karras, "
                                                      "euler (or an alias)")
    negative_prompt: str = Field("", description="what to steer away from")
    layout: bool = Field(DEFAULT_LAYOUT, description="layout guidance (see POST /v1/generations)")


class ImageDataOut(BaseModel):
    b64_json: str  # the PNG, base64; its provenance record is inside
    seed: int  # pictor's: the seed of this image


class ImagesResponseOut(BaseModel):
    created: int  # Unix seconds
    data: list[ImageDataOut]
    output_format: str = "png"
    size: str  # "WxH"


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(openai_error(self.status, self.message, param=self.param,
                                         code=self.code),
                            status_code=self.status, headers=self.headers)


def check_openai_fields(body: ImagesGenerationIn, model_name: str, image_size: int) -> None:
    """OpenAIError for the fields pictor cannot honour (size, response_format) with the
    model `model_name` that `body.model` chose."""
    size = f"{image_size}x{image_size}"
    if body.response_format == "url":
        raise OpenAIError(400, "response_format 'url' is not supported: this endpoint is "
                               "stateless and keeps no image to link to; use 'b64_json' (or the "
                               "async API, POST /v1/generations, whose images have URLs)",
                          param="response_format", code="unsupported_response_format")
    if body.size not in (None, "auto", size):
        raise OpenAIError(400, f"size must be {size!r} (the served model's only size) or "
                               f"'auto', got {body.size!r}", param="size", code="invalid_size")
    if body.model not in (None, model_name):
        raise OpenAIError(404, f"the model {body.model!r} does not exist here; this server "
                               f"serves {model_name!r} (GET /v1/models)",
                          param="model", code="model_not_found")


def pictor_body(body: ImagesGenerationIn) -> GenerationIn:
    """The async API's body of the same request (one set of limits for both routes)."""
    return GenerationIn(prompt=body.prompt, negative_prompt=body.negative_prompt, n=body.n,
                        seed=body.seed, steps=body.steps, guidance=body.guidance,
                        sampler=body.sampler, layout=body.layout)


@router.post("/v1/images/generations", response_model=ImagesResponseOut,
             responses={400: {"description": "a field beyond the limits or unsupported"},
                        429: {"description": "queue full; see Retry-After"},
                        503: {"description": "the model is loading; see Retry-After"}})
async def create_image(body: ImagesGenerationIn, request: Request) -> Any:
    try:
        served = request.app.state.models.get(body.model)
    except UnknownModel as err:
        raise OpenAIError(404, str(err), param="model", code="model_not_found") from err
    pipe, jobs = served.loaded()
    check_openai_fields(body, served.name, pipe.image_size)
    gen, problems = checked_request(pictor_body(body), request.app.state.settings, pipe)
    if problems:
        raise OpenAIError(400, "; ".join(why for _, why in problems), param=problems[0][0],
                          code="invalid_value")
    try:
        job = jobs.submit(gen, retained=False)
    except QueueFull as full:
        raise OpenAIError(429, str(full), code="queue_full",
                          headers={"Retry-After": str(full.retry_after_seconds)}) from full
    events = jobs.subscribe(job, asyncio.get_running_loop())
    try:
        # "done" arrives once; `finished` covers a job that ended before subscribe()
        while not job.finished:
            try:
                event, _ = await asyncio.wait_for(events.get(), DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():  # nobody waits for the images any more
                    _cancel(jobs, job.id)
                    # nginx's "client closed request": logged, read by nobody
                    return Response(status_code=CLIENT_CLOSED_REQUEST)
                continue
            if event == "done":
                break
    except asyncio.CancelledError:  # the server stops: free the worker
        _cancel(jobs, job.id)
        raise
    finally:
        jobs.unsubscribe(job, events)
    if job.status is not JobStatus.SUCCEEDED:
        raise OpenAIError(500, f"generation {job.status.value}: {job.error}",
                          code="generation_failed")
    return ImagesResponseOut(
        created=int(time.time()), size=f"{pipe.image_size}x{pipe.image_size}",
        data=[ImageDataOut(b64_json=base64.b64encode(im.png).decode("ascii"), seed=im.seed)
              for im in job.images])


def _cancel(jobs: JobQueue, job_id: str) -> None:
    with contextlib.suppress(NotCancellable):  # it may have finished meanwhile
        jobs.cancel(job_id)


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI-shaped errors on OPENAI_PATHS (validation, HTTP errors, model loading); the
    FastAPI defaults elsewhere."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, err: OpenAIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(ModelNotLoaded)
    async def _not_loaded(request: Request, err: ModelNotLoaded) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_LOADING_SECONDS)}
        if request.url.path in OPENAI_PATHS:
            return OpenAIError(503, str(err), code="model_not_ready", headers=headers
                               ).response()
        return JSONResponse({"detail": str(err)}, status_code=503, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        if request.url.path not in OPENAI_PATHS:
            return await request_validation_exception_handler(request, err)
        first = err.errors()[0] if err.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        messages = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: "
                    f"{e.get('msg', 'invalid')}" for e in err.errors()]
        return OpenAIError(400, "; ".join(messages), param=".".join(loc) or None,
                           code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if request.url.path not in OPENAI_PATHS:
            return await http_exception_handler(request, err)
        return OpenAIError(err.status_code, str(err.detail), headers=dict(err.headers or {})
                           ).response()
