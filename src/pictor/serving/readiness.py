"""The served model's life: loading, warming up, ready (or failed), for /readyz and /healthz.

    loading -> warming -> ready
        \\          \\-> failed (the warm-up generation raised)
         \\-> failed (the model folder did not load)

`pictor serve` starts listening at once and loads the model in a background thread, so a
process that is alive answers /healthz (liveness) while /readyz says 503 until the model is
loaded *and* one tiny generation has run through it: the first call pays for allocating
buffers, tracing the network (pictor.pipeline traces per input shape) and importing lazily
loaded code, and a replica that an orchestrator sends traffic to should not make its first
clients pay that. Kubernetes probes read exactly this split: startup and readiness on /readyz,
liveness on /healthz.

The warm-up runs before the JobQueue's worker starts, in the loading thread, through
`generate_batch`: the worker's own generation path, so nothing touches the pipeline from two
threads. Jobs submitted while the model warms up wait in the queue; routes that need the model
before it has loaded answer 503 with Retry-After (ModelNotLoaded).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pictor.pipeline import DEFAULT_SAMPLER, Pipeline
from pictor.serving.batching import GenerationRequest, generate_batch
from pictor.serving.fair_lock import FairLock
from pictor.serving.jobs import JobQueue
from pictor.serving.settings import ServeSettings

log = logging.getLogger("pictor.serving")

# One image, one step, a prompt of the shipped world: enough to run every part of the path
# (text encoder, guided U-Net, sampler, decoder) once.
WARMUP_REQUEST = GenerationRequest(prompt="a red circle", num_images=1, seed=0, num_steps=1,
                                   sampler=DEFAULT_SAMPLER)
RETRY_AFTER_LOADING_SECONDS = 2  # what a 503 during loading tells clients to wait


class ModelState(str, Enum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"


class ModelNotLoaded(Exception):
    """A route needs the model before it has loaded (503 + Retry-After)."""

    def __init__(self, state: ModelState, error: str | None) -> None:
        what = (f"the model failed to load: {error}" if state is ModelState.FAILED
                else "the model is still loading; retry shortly (GET /readyz says when ready)")
        super().__init__(what)
        self.state = state


@dataclass
class Readiness:
    state: ModelState
    warmup_seconds: float | None


class ServedModel:
    """The pipeline and its JobQueue, loaded (when not given) and warmed in a background
    thread by start(). `pipe` and `jobs` are None until the model has loaded."""

    def __init__(self, settings: ServeSettings, pipe: Pipeline | None = None,
                 loader: Callable[[], Pipeline] | None = None, *, name: str | None = None,
                 run_lock: FairLock | None = None) -> None:
        if (pipe is None) == (loader is None):
            raise ValueError("pass exactly one of pipe (loaded) and loader (loads it)")
        self.settings, self.loader = settings, loader
        # the name requests choose it by (None: the pipeline's model_name, once loaded)
        self._name = name
        # generation (warm-up, the worker's batches) holds it: shared by a server's models
        self.run_lock = run_lock if run_lock is not None else FairLock()
        self.pipe: Pipeline | None = None
        self.jobs: JobQueue | None = None
        self._state, self._error = ModelState.LOADING, None
        self._warmup_seconds: float | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        if pipe is not None:
            self._attach(pipe)

    def _attach(self, pipe: Pipeline) -> None:
        jobs = JobQueue(pipe, self.settings, self.run_lock)
        with self._lock:
            self.pipe, self.jobs = pipe, jobs

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load (if needed) and warm up in a background thread; the worker starts after."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._prepare, name="pictor-load",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            jobs = self.jobs
        if jobs is not None:
            jobs.stop()

    def _set(self, state: ModelState, error: str | None = None) -> None:
        with self._lock:
            self._state, self._error = state, error

    def _prepare(self) -> None:
        try:
            pipe = self.pipe
            if pipe is None and self.loader is not None:
                pipe = self.loader()
                self._attach(pipe)
            self._set(ModelState.WARMING)
            with self.run_lock:
                started = time.perf_counter()
                generate_batch(pipe, [WARMUP_REQUEST], exact=self.settings.exact_batching)
                self._warmup_seconds = time.perf_counter() - started
        except Exception as err:  # noqa: BLE001 - reported by /readyz and /healthz, and logged
            log.exception("the model %s did not load or warm up", self.name or "")
            self._set(ModelState.FAILED, f"{type(err).__name__}: {err}")
            return
        with self._lock:
            if self._stopped:
                return
            if self.jobs is not None:
                self.jobs.start()  # before READY: a ready server has a live worker
            self._state = ModelState.READY

    # ------------------------------------------------------------------ called by routes
    @property
    def name(self) -> str | None:
        if self._name is not None:
            return self._name
        pipe = self.pipe
        return pipe.model_name if pipe is not None else None

    def readiness(self) -> Readiness:
        with self._lock:
            return Readiness(self._state, self._warmup_seconds)

    def loaded(self) -> tuple[Pipeline, JobQueue]:
        """(pipe, jobs) once the model has loaded (warm-up may still run: jobs then wait in
        the queue); ModelNotLoaded before that or when loading failed."""
        with self._lock:
            pipe, jobs, state, error = self.pipe, self.jobs, self._state, self._error
        if pipe is None or jobs is None or state is ModelState.FAILED:
            raise ModelNotLoaded(state, error)
        return pipe, jobs
