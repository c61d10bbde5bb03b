"""The REST routes: thin wrappers over the JobQueue (pictor.serving.jobs).

    POST   /v1/generations             202 {id, ...}; 422 beyond the limits; 404 for a model
                                       not served; 429 + Retry-After
    GET    /v1/generations/{id}        status, progress, per-image seeds, image URLs
    GET    /v1/generations/{id}/events server-sent events: status, progress, preview, done
    DELETE /v1/generations/{id}        cancel (queued: now; running: between two steps)
    GET    /v1/images/{name}           the PNG, provenance record inside
    GET    /v1/models                  the served models (the first is the default), their
                                       samplers, defaults, limits and state
    GET    /healthz                    liveness (no token needed)
    GET    /readyz                     readiness: 200 once every model is loaded and warmed,
                                       else 503 (no token needed; pictor.serving.readiness)

Routes that need the model answer 503 + Retry-After while it loads (ModelNotLoaded, turned into
a response by the app's exception handler). The stateless OpenAI-compatible route is in
pictor.serving.openai_api.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pictor.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS, DEFAULT_SAMPLER, Pipeline
from pictor.prompts import prompt_problem
from pictor.samplers import SAMPLERS
from pictor.serving.batching import GenerationRequest, check_request
from pictor.serving.jobs import Job, JobQueue, JobStatus, NotCancellable, QueueFull
from pictor.serving.models import ServedModels, UnknownModel
from pictor.serving.readiness import ModelState, ServedModel
from pictor.serving.schemas import (
    GenerationAccepted,
    GenerationIn,
    GenerationOut,
    HealthOut,
    ModelOut,
    ModelsOut,
    ReadyOut,
)
from pictor.serving.settings import ServeSettings

MAX_SEED = 2**63 - 1
KEEPALIVE_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing idle streams

router = APIRouter()


def _models(request: Request) -> ServedModels:
    return request.app.state.models


def _served(request: Request, name: str | None) -> ServedModel:
    """The model a request names (None: the default); 404 when it is not served."""
    try:
        return _models(request).get(name)
    except UnknownModel as err:
        raise HTTPException(404, str(err)) from err


def _job_or_404(request: Request, job_id: str) -> tuple[ServedModel, JobQueue, Job]:
    found = _models(request).find_job(job_id)
    if found is None:
        raise HTTPException(404, f"no generation {job_id!r} (unknown, or evicted when old)")
    return found


def limit_problems(body: GenerationIn, settings: ServeSettings, num_timesteps: int
                   ) -> list[tuple[str, str]]:
    """(field, why) for each way the request exceeds the server's limits (empty: it does not)."""
    s, problems = settings, []
    if not 1 <= body.n <= s.max_num_images:
        problems.append(("n", f"n must lie in [1, {s.max_num_images}], got {body.n}"))
    max_steps = min(s.max_num_steps, num_timesteps)
    if not 1 <= body.steps <= max_steps:
        problems.append(("steps", f"steps must lie in [1, {max_steps}], got {body.steps}"))
    for name in ("prompt", "negative_prompt"):
        problem = prompt_problem(getattr(body, name), name, s.max_prompt_chars)
        if problem is not None:
            problems.append((name, problem))
    if not math.isfinite(body.guidance) or abs(body.guidance) > s.max_guidance_scale:
        problems.append(("guidance", f"guidance must be finite with |guidance| <= "
                                     f"{s.max_guidance_scale}, got {body.guidance}"))
    if body.seed is not None and not 0 <= body.seed <= MAX_SEED - s.max_num_images:
        problems.append(("seed", f"seed must lie in [0, {MAX_SEED - s.max_num_images}], "
                                 f"got {body.seed}"))
    return problems


def checked_request(body: GenerationIn, settings: ServeSettings, pipe: Pipeline
                    ) -> tuple[GenerationRequest, list[tuple[str | None, str]]]:
    """The queue's request for a body (the server picks the seed when the body has none) and
    (field or None, why) for each problem: the server's limits, then the pipeline's own checks
    (sampler name, ...). Both the async and the OpenAI-compatible route check requests here."""
    problems: list[tuple[str | None, str]] = []
    problems += limit_problems(body, settings, pipe.schedule.num_timesteps)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    gen = GenerationRequest(prompt=body.prompt, negative_prompt=body.negative_prompt,
                            num_images=body.n, seed=seed, num_steps=body.steps,
                            sampler=body.sampler, guidance_scale=body.guidance,
                            layout=body.layout)
    if not problems:
        try:
            check_request(pipe, gen)
        except ValueError as err:
            problems.append((None, str(err)))
    return gen, problems


def job_json(model: ServedModel, jobs: JobQueue, job: Job) -> dict:
    r = job.request
    return GenerationOut(
        id=job.id, status=job.status.value, progress=round(job.progress, 4), step=job.step,
        num_steps=r.num_steps, seeds=r.seeds,
        images=[{"name": im.name, "url": f"/v1/images/{im.name}", "seed": im.seed,
                 "record": im.record} for im in job.images],
        request={"prompt": r.prompt, "negative_prompt": r.negative_prompt, "n": r.num_images,
                 "seed": r.seed, "steps": r.num_steps, "guidance": r.guidance_scale,
                 "sampler": r.sampler, "layout": r.layout, "model": model.name},
        queue_position=jobs.queue_position(job),
        cancel_requested=job.cancel_requested, batch_id=job.batch_id,
        batch_num_images=job.batch_num_images, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, error=job.error,
    ).model_dump()


@router.post("/v1/generations", status_code=202, response_model=GenerationAccepted,
             responses={422: {"description": "beyond the limits, with the reasons"},
                        429: {"description": "queue full; see Retry-After"}})
def create_generation(body: GenerationIn, request: Request):
    pipe, jobs = _served(request, body.model).loaded()
    gen, problems = checked_request(body, request.app.state.settings, pipe)
    if problems:
        raise HTTPException(422, [why for _, why in problems])
    try:
        job = jobs.submit(gen)
    except QueueFull as full:
        return JSONResponse({"detail": str(full)}, status_code=429,
                            headers={"Retry-After": str(full.retry_after_seconds)})
    return {"id": job.id, "status": job.status.value, "url": f"/v1/generations/{job.id}",
            "events_url": f"/v1/generations/{job.id}/events"}


@router.get("/v1/generations/{job_id}", response_model=GenerationOut)
def get_generation(job_id: str, request: Request):
    return job_json(*_job_or_404(request, job_id))


@router.delete("/v1/generations/{job_id}", response_model=GenerationOut,
               responses={409: {"description": "already finished"}})
def cancel_generation(job_id: str, request: Request):
    model, jobs, _ = _job_or_404(request, job_id)
    try:
        job = jobs.cancel(job_id)
    except NotCancellable as err:
        raise HTTPException(409, str(err)) from err
    if job is None:
        raise HTTPException(404, f"no generation {job_id!r}")
    # 200 when already cancelled (it was queued), 202 when it stops at its next step
    code = 200 if job.status is JobStatus.CANCELLED else 202
    return JSONResponse(job_json(model, jobs, job), status_code=code)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/v1/generations/{job_id}/events",
            responses={200: {"content": {"text/event-stream": {}},
                              "description": "events: status, progress, preview, done"}})
async def generation_events(job_id: str, request: Request):
    model, jobs, job = _job_or_404(request, job_id)
    queue = jobs.subscribe(job, asyncio.get_running_loop())

    async def stream() -> AsyncIterator[str]:
        try:
            yield _sse("status", job_json(model, jobs, job))  # the state now, then what follows
            if job.finished:
                yield _sse("done", {"id": job.id, "status": job.status.value,
                                    "error": job.error})
                return
            while True:
                try:
                    event, data = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield _sse(event, data)
                if event == "done":
                    return
        finally:
            jobs.unsubscribe(job, queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/v1/images/{name}", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def get_image(name: str, request: Request):
    image = _models(request).find_image(name)
    if image is None:
        raise HTTPException(404, f"no image {name!r}")
    return Response(image.png, media_type="image/png",
                    headers={"Content-Disposition": f'inline; filename="{image.name}"',
                             "Cache-Control": "private, max-age=3600"})


@router.get("/v1/models", response_model=ModelsOut)
def list_models(request: Request):
    """Every served model, the default first; 503 until all have loaded (then each says
    whether it is still warming up or ready)."""
    s: ServeSettings = request.app.state.settings
    models = []
    for served in _models(request):
        pipe, _ = served.loaded()
        models.append(ModelOut(
            name=served.name, sha256=pipe.model_sha256, image_size=pipe.image_size,
            state=served.readiness().state.value, samplers=sorted(SAMPLERS),
            defaults={"steps": DEFAULT_NUM_STEPS, "guidance": DEFAULT_GUIDANCE_SCALE,
                      "sampler": DEFAULT_SAMPLER, "n": 1},
            limits={"n": s.max_num_images, "steps": min(s.max_num_steps,
                                                        pipe.schedule.num_timesteps),
                    "prompt_chars": s.max_prompt_chars, "guidance": s.max_guidance_scale,
                    "body_bytes": s.max_body_bytes, "queued_jobs": s.max_queued_jobs,
                    "batch_images": s.max_batch_images}))
    return {"models": models}


@router.get("/healthz", response_model=HealthOut,
            responses={503: {"description": "a model failed to load, or a worker died"}})
def healthz(request: Request):
    """Liveness: 200 while the process can still become or stay useful (also while the models
    load: that is /readyz's business); 503 when it cannot (a restart is the remedy)."""
    models = _models(request)
    state = models.state()
    if state is ModelState.FAILED:
        return JSONResponse({"status": "failed", "queue": {}}, status_code=503)
    if state is not ModelState.READY:
        return {"status": "starting", "queue": {}}
    stats = [served.jobs.stats() for served in models if served.jobs is not None]
    alive = all(st["worker_alive"] for st in stats)
    # open without a token: says whether the workers live and how busy they are, nothing more
    body = {"status": "ok" if alive else "degraded",
            "queue": {k: sum(st[k] for st in stats) for k in ("queued_jobs", "running_jobs")}}
    return JSONResponse(body, status_code=200 if alive else 503)


@router.get("/readyz", response_model=ReadyOut,
            responses={503: {"description": "loading, warming up, or failed"}})
def readyz(request: Request):
    """Readiness: 200 once every model is loaded and has run one warm-up generation."""
    models = _models(request)
    state = models.state()
    body = ReadyOut(status=state.value, warmup_seconds=models.warmup_seconds()).model_dump()
    return JSONResponse(body, status_code=200 if state is ModelState.READY else 503)
