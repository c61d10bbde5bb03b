"""The job queue: a bounded FIFO of generation jobs, one worker thread that runs the pipeline
(torch) so the event loop never waits on it, micro-batching of compatible jobs, cancellation
between steps, and progress events for server-sent-event subscribers.

Life of a job: queued -> running -> succeeded | failed | cancelled (a queued job can go
straight to cancelled). The worker takes the oldest queued job and, with it, every other queued
job of the same batch key (pictor.serving.batching) while the batch holds at most
max_batch_images images; later compatible jobs jump ahead of incompatible older ones, never the
other way round, so the oldest job always runs next.

Threads: routes (event loop) call submit/get/cancel/subscribe, the worker mutates jobs; one
lock guards the queue and the job table. Events reach asyncio subscribers through
loop.call_soon_threadsafe. A server with several models has one JobQueue (and worker) per model,
all sharing one `run_lock`: a worker holds it from encoding its candidates' prompts to the end of
its batch, so one batch runs at a time across models (two at once on a CPU box would compete for
the same cores). Its jobs stay queued while another model's batch runs (the lock is granted in
the order the workers asked for it, so no model starves another), and Retry-After counts only
this queue's own batch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from pictor.pipeline import Pipeline
from pictor.provenance import png_info
from pictor.serving.batching import (
    BatchCancelled,
    GenerationRequest,
    batch_key,
    decode_request,
    sample_batch,
)
from pictor.serving.fair_lock import FairLock
from pictor.serving.mark import LABEL, add_visible_mark
from pictor.serving.settings import ServeSettings

log = logging.getLogger("pictor.serving")


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class QueueFull(Exception):
    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"queue full; retry after {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


class NotCancellable(Exception):
    pass


@dataclass
class StoredImage:
    name: str  # "<job id>-<index>.png", the key of GET /v1/images/{name}
    seed: int
    png: bytes  # the PNG file, provenance record included
    record: dict[str, Any]  # the record as JSON-ready dict


@dataclass
class Job:
    id: str
    request: GenerationRequest
    created_at: float = field(default_factory=time.time)
    # False: a stateless request (the OpenAI-compatible route) that waits for its images; the
    # queue forgets the job when it finishes, keeps no PNG and sends no previews
    retained: bool = True
    status: JobStatus = JobStatus.QUEUED
    step: int = 0  # sampler steps done (of the image being made, for stochastic samplers)
    progress: float = 0.0  # fraction of the whole job done
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    batch_id: str | None = None  # jobs that ran in one sampler call share it
    batch_num_images: int = 0  # images in that sampler call
    images: list[StoredImage] = field(default_factory=list)
    key: tuple[Any, ...] | None = None  # batch key, computed by the worker (it encodes text)
    # seconds per unit of progress over the latest steps (moving average) and when progress
    # last moved: what is left of the job, for Retry-After
    seconds_per_progress: float | None = None
    progress_at: float | None = None
    subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = field(
        default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def png_bytes(image, record) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info(record))
    return buf.getvalue()


def preview_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class JobQueue:
    """Bounded queue + worker thread around one loaded Pipeline. start() / stop()."""

    def __init__(self, pipe: Pipeline, settings: ServeSettings,
                 run_lock: FairLock | None = None) -> None:
        self.pipe, self.settings = pipe, settings
        # held while this worker runs torch; shared by the queues of one server's models
        self.run_lock = run_lock if run_lock is not None else FairLock()
        # a server sees unboundedly many distinct prompts: bound the pipeline's embedding cache
        pipe.prompt_cache_size = settings.max_cached_prompts
        pipe.embedding_disk_cache = settings.embedding_disk_cache
        self._lock = threading.Condition()
        self._queue: list[Job] = []
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._images: dict[str, StoredImage] = {}
        self._running: list[Job] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        # exponential moving averages of worker seconds per image and per image-step (None
        # until a batch has run), for Retry-After and /healthz
        self.seconds_per_image = 1.0
        self.seconds_per_image_step: float | None = None
        self.images_done = 0
        self.batches_done = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pictor-worker",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_seconds: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            for job in self._running:
                job.cancel_requested = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            self._thread = None

    # ------------------------------------------------------------------ called by routes
    def submit(self, request: GenerationRequest, *, retained: bool = True) -> Job:
        """Queue a job; QueueFull when max_queued_jobs are already waiting. retained=False:
        forgotten when finished (its images stay on the Job object only; see Job.retained)."""
        with self._lock:
            if len(self._queue) >= self.settings.max_queued_jobs:
                raise QueueFull(self._retry_after_seconds())
            job = Job(id=secrets.token_hex(12), request=request, retained=retained)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._evict_finished()
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def image(self, name: str) -> StoredImage | None:
        with self._lock:
            return self._images.get(name)

    def queue_position(self, job: Job) -> int | None:
        """0 for the next job to run; None when not queued."""
        with self._lock:
            return self._queue.index(job) if job in self._queue else None

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, a running one at its next step; NotCancellable when it has
        finished; None when unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.finished:
                raise NotCancellable(f"job {job_id} has already {job.status.value}")
            job.cancel_requested = True
            if job in self._queue:
                self._queue.remove(job)
                self._finish(job, JobStatus.CANCELLED)
        return job

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"queued_jobs": len(self._queue),
                    "running_jobs": len(self._running),
                    "retained_jobs": len(self._jobs),
                    "images_done": self.images_done, "batches_done": self.batches_done,
                    "seconds_per_image": round(self.seconds_per_image, 4),
                    "worker_alive": self._thread is not None and self._thread.is_alive()}

    # ------------------------------------------------------------------ events
    def subscribe(self, job: Job, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            job.subscribers.append((loop, queue))
        return queue

    def unsubscribe(self, job: Job, queue: asyncio.Queue) -> None:
        with self._lock:
            job.subscribers = [(lp, q) for lp, q in job.subscribers if q is not queue]

    def _publish(self, job: Job, event: str, data: dict[str, Any]) -> None:
        """Send (event, data) to every subscriber of the job (call with the lock held)."""
        for loop, queue in job.subscribers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (event, data))
            except RuntimeError:  # the subscriber's loop has closed
                pass

    # ------------------------------------------------------------------ bookkeeping
    def _retry_after_seconds(self) -> int:
        """When a queue slot frees: when the running batch ends and the worker takes the next
        jobs off the queue (call with the lock held). Measured on the running batch itself:
        its recent seconds per step (a moving average, so the slower first steps, which trace
        the network, fade out) x the steps left; before two steps have run, the measured
        seconds per image-step of earlier batches x its work. A slot was said to free after
        1 s when a job took 6 s: seconds per image ignored the number of steps. Clamped to
        [1, 600]."""
        remaining = 0.0
        for job in self._running:
            r = job.request
            if job.seconds_per_progress is not None:
                left = job.seconds_per_progress * (1 - job.progress)
            else:
                rate = self.seconds_per_image_step or 0.0
                left = rate * r.num_images * r.num_steps * (1 - job.progress)
            remaining = max(remaining, left)
        return int(min(600, max(1, math.ceil(remaining))))

    def _finish(self, job: Job, status: JobStatus, error: str | None = None) -> None:
        """Mark a job finished and tell its subscribers (call with the lock held)."""
        job.status, job.error, job.finished_at = status, error, time.time()
        if status is not JobStatus.SUCCEEDED:
            for image in job.images:
                self._images.pop(image.name, None)
            job.images = []
        if not job.retained:
            self._jobs.pop(job.id, None)
        self._publish(job, "done", {"id": job.id, "status": status.value, "error": error})

    def _evict_finished(self) -> None:
        """Forget the oldest finished jobs (and their PNGs) beyond max_retained_jobs."""
        excess = len(self._jobs) - self.settings.max_retained_jobs
        for job_id in [k for k, j in self._jobs.items() if j.finished][:max(0, excess)]:
            for image in self._jobs.pop(job_id).images:
                self._images.pop(image.name, None)

    # ------------------------------------------------------------------ worker
    def _take_batch(self) -> list[Job]:
        """The oldest queued job and the compatible ones after it whose keys are known (call
        with the lock held)."""
        head = self._queue[0]
        batch, num_images = [head], head.request.num_images
        if head.key is None:
            return batch  # its key failed: it runs alone and fails with the reason
        for job in self._queue[1:]:
            if num_images >= self.settings.max_batch_images:
                break
            if job.key == head.key and (num_images + job.request.num_images
                                        <= self.settings.max_batch_images):
                batch.append(job)
                num_images += job.request.num_images
        return batch

    def _key(self, job: Job) -> tuple[Any, ...] | None:
        try:
            return batch_key(self.pipe, job.request)
        except ValueError:
            return None  # runs alone and fails there with the message

    def _work(self) -> None:
        # the worker owns torch: inference only, no autograd state
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
            if self.settings.batch_window_seconds > 0:
                time.sleep(self.settings.batch_window_seconds)
            with self.run_lock:  # one batch at a time across the server's models
                with self._lock:
                    if self._stopping:
                        return
                    candidates = list(self._queue[:4 * self.settings.max_batch_images])
                for job in candidates:  # text encoding (torch): outside the lock, worker only
                    if job.key is None:
                        job.key = self._key(job)
                with self._lock:
                    if not self._queue:
                        continue
                    batch = self._take_batch()
                    batch_id = secrets.token_hex(6)
                    for job in batch:
                        self._queue.remove(job)
                        job.status, job.started_at = JobStatus.RUNNING, time.time()
                        job.batch_id = batch_id
                        job.batch_num_images = sum(j.request.num_images for j in batch)
                        self._publish(job, "status", {
                            "id": job.id, "status": "running", "batch_id": batch_id,
                            "batch_num_images": job.batch_num_images})
                    self._running = batch
                try:
                    self._run(batch)
                except Exception as err:  # noqa: BLE001 - a failed batch must not stop it
                    log.exception("batch %s failed", batch_id)
                    why = f"{type(err).__name__}: {err}"
                    with self._lock:
                        for job in batch:
                            if not job.finished:
                                self._finish(job, JobStatus.FAILED, why)
                finally:
                    with self._lock:
                        self._running = []
                        self._evict_finished()

    def _run(self, batch: list[Job]) -> None:
        settings, pipe = self.settings, self.pipe
        requests = [job.request for job in batch]
        every = settings.preview_every_steps
        started = time.perf_counter()
        steps_seen = [0] * len(batch)

        def on_step(progress: list[float], x0_preds: list[torch.Tensor | None]) -> None:
            previews = {}
            for r, (job, x0) in enumerate(zip(batch, x0_preds, strict=True)):
                if x0 is None or job.finished:
                    continue
                steps_seen[r] += 1
                if every and job.retained and not job.cancel_requested and (
                        steps_seen[r] % every == 0 or progress[r] >= 1.0):
                    previews[r] = [preview_data_url(im) for im in pipe.decode(x0)]
            with self._lock:
                for r, job in enumerate(batch):
                    if job.finished or x0_preds[r] is None:
                        continue
                    if job.cancel_requested:
                        self._finish(job, JobStatus.CANCELLED)
                        continue
                    now = time.time()
                    if job.progress_at is not None and progress[r] > job.progress:
                        rate = (now - job.progress_at) / (progress[r] - job.progress)
                        job.seconds_per_progress = rate if job.seconds_per_progress is None \
                            else 0.8 * job.seconds_per_progress + 0.2 * rate
                    job.progress, job.progress_at = progress[r], now
                    job.step = (steps_seen[r] - 1) % job.request.num_steps + 1
                    event = {"id": job.id, "step": job.step,
                             "num_steps": job.request.num_steps,
                             "progress": round(job.progress, 4)}
                    self._publish(job, "progress", event)
                    if r in previews:
                        self._publish(job, "preview", event | {"images": previews[r]})
                if all(job.finished for job in batch):
                    raise BatchCancelled

        def is_active(r: int) -> bool:
            return not batch[r].cancel_requested

        try:
            latents = sample_batch(pipe, requests, exact=settings.exact_batching,
                                   on_step=on_step, is_active=is_active)
        except BatchCancelled:
            return
        extra = {"visible_mark": LABEL} if settings.visible_mark else {}
        for job, z in zip(batch, latents, strict=True):
            if job.cancel_requested or job.finished:
                with self._lock:
                    if not job.finished:
                        self._finish(job, JobStatus.CANCELLED)
                continue
            stored = []
            for i, g in enumerate(decode_request(pipe, job.request, z)):
                g.record.extra.update(extra)
                image = add_visible_mark(g.image) if settings.visible_mark else g.image
                stored.append(StoredImage(name=f"{job.id}-{i}.png", seed=g.record.seed,
                                          png=png_bytes(image, g.record),
                                          record=_record_dict(g.record)))
            with self._lock:
                job.images = stored
                for image in stored if job.retained else ():
                    self._images[image.name] = image
                job.progress, job.step = 1.0, job.request.num_steps
                self._finish(job, JobStatus.SUCCEEDED)
        num_images = sum(r.num_images for r in requests)
        elapsed = time.perf_counter() - started
        seconds = elapsed / max(1, num_images)
        per_step = elapsed / max(1, sum(r.num_images * r.num_steps for r in requests))
        with self._lock:
            self.seconds_per_image = 0.7 * self.seconds_per_image + 0.3 * seconds
            self.seconds_per_image_step = per_step if self.seconds_per_image_step is None \
                else 0.7 * self.seconds_per_image_step + 0.3 * per_step
            self.images_done += num_images
            self.batches_done += 1


def _record_dict(record) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(record)
