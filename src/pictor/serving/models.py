"""The models one `pictor serve` process serves: each a ServedModel (its pipeline, JobQueue and
worker, loaded and warmed in the background), chosen by name; the first is the default.

    models = ServedModels(settings, [("shapes-v11", loader_a), ("emoji-v1", loader_b)])
    models.get(None)          # the first model
    models.get("emoji-v1")    # UnknownModel for a name not served

One lock (`run_lock`, first come first served: pictor.serving.fair_lock) is shared by every
model's warm-up and worker, so one batch runs at a time across models: two generations at once
on a CPU box halve each other's speed (see pictor.serving.jobs). Job ids are random (96 bits), so a job or image is found by asking each
model's queue in turn. The server is ready (/readyz) when every model is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from pictor.pipeline import Pipeline
from pictor.serving.fair_lock import FairLock
from pictor.serving.jobs import Job, JobQueue, StoredImage
from pictor.serving.readiness import ModelState, ServedModel
from pictor.serving.settings import ServeSettings

# (name, the loaded pipeline or a callable that loads it); name None: the pipeline's model_name
ModelSource = tuple[str | None, Pipeline | Callable[[], Pipeline]]
# the server's state is its least advanced model's: any failed, else any loading, else warming
STATE_ORDER = (ModelState.FAILED, ModelState.LOADING, ModelState.WARMING, ModelState.READY)


class UnknownModel(LookupError):
    """A request names a model this server does not serve (404)."""

    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(f"the model {name!r} is not served here; this server serves "
                         f"{', '.join(repr(n) for n in served)} (GET /v1/models)")
        self.name = name


class ServedModels:
    """The served models in the order given; ValueError when none is given or two share a name."""

    def __init__(self, settings: ServeSettings, sources: Sequence[ModelSource]) -> None:
        if not sources:
            raise ValueError("serve at least one model")
        names = [name for name, _ in sources if name is not None]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two models would be served as {twice[0]!r}: each model folder "
                             "needs its own name (rename one of the folders)")
        self.run_lock = FairLock()
        self.models = []
        for name, source in sources:
            if isinstance(source, Pipeline):
                model = ServedModel(settings, pipe=source, name=name or source.model_name,
                                    run_lock=self.run_lock)
            else:
                model = ServedModel(settings, loader=source, name=name, run_lock=self.run_lock)
            self.models.append(model)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.models)

    @property
    def default(self) -> ServedModel:
        return self.models[0]

    def names(self) -> list[str]:
        return [m.name or "(loading)" for m in self.models]

    def get(self, name: str | None) -> ServedModel:
        """The model called `name` (None: the default); UnknownModel when none is."""
        if name is None:
            return self.default
        for model in self.models:
            if model.name == name:
                return model
        raise UnknownModel(name, self.names())

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for model in self.models:
            model.start()

    def stop(self) -> None:
        for model in self.models:
            model.stop()

    # ------------------------------------------------------------------ across models
    def state(self) -> ModelState:
        states = {m.readiness().state for m in self.models}
        return next(s for s in STATE_ORDER if s in states)

    def warmup_seconds(self) -> float | None:
        """The warm-ups' total once every model has warmed up, else None."""
        seconds = [m.readiness().warmup_seconds for m in self.models]
        return None if None in seconds else sum(seconds)

    def queues(self) -> list[tuple[ServedModel, JobQueue]]:
        """(model, its queue) of each model that has loaded; ModelNotLoaded (the default
        model's) when none has."""
        loaded = [(m, m.jobs) for m in self.models if m.jobs is not None]
        if not loaded:  # ModelNotLoaded, unless the default model has loaded just now
            return [(self.default, self.default.loaded()[1])]
        return loaded

    def find_job(self, job_id: str) -> tuple[ServedModel, JobQueue, Job] | None:
        for model, jobs in self.queues():
            job = jobs.get(job_id)
            if job is not None:
                return model, jobs, job
        return None

    def find_image(self, name: str) -> StoredImage | None:
        for _, jobs in self.queues():
            image = jobs.image(name)
            if image is not None:
                return image
        return None
