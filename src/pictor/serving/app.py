"""`create_app(settings, pipe)`: the FastAPI application of `pictor serve`.

Layers, outermost first: LoopbackHostOnly (403 for a non-loopback Host header, when there is no
token), BearerAuth (401; open: /healthz, /readyz and the page shell), BodySizeLimit
(413), the routes (pictor.serving.routes, and the OpenAI-compatible one in
pictor.serving.openai_api) and the static page (/ and /static/*). Each model's loading (when
not given), its warm-up and its JobQueue's worker thread start with the app's lifespan, in the
background (pictor.serving.readiness; several models: pictor.serving.models; /readyz says when
they are all done); the workers stop with it. /openapi.json is served (behind
the token when there is one); the interactive /docs pages are off because they load their
scripts from a CDN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from pictor import __version__
from pictor.pipeline import Pipeline, load_pipeline, model_name_of
from pictor.serving.models import ModelSource, ServedModels
from pictor.serving.openai_api import install_error_handlers
from pictor.serving.openai_api import router as openai_router
from pictor.serving.routes import router
from pictor.serving.security import BearerAuth, BodySizeLimit, LoopbackHostOnly
from pictor.serving.settings import ServeSettings

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page loads only its own files; previews are data: URLs, results blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# the page shell holds no data; probes (kubelet, load balancers) send no token
OPEN_PATHS = ("/healthz", "/readyz", "/", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


def create_app(settings: ServeSettings, pipe: Pipeline | None = None, *,
               loader: Callable[[], Pipeline] | None = None,
               models: Sequence[ModelSource] | None = None) -> FastAPI:
    """The app for `settings`, serving `pipe`; when None, the pipeline `loader` returns (by
    default load_pipeline(settings.model_dir)), called in the background once the app starts.
    Several models: `models`, (name, pipeline or loader) each, the first the default (see
    pictor.serving.models). ValueError when the settings are unsafe (see ServeSettings.check)
    or two models share a name."""
    settings.check()
    if models is None:
        name = model_name_of(settings.model_dir) if settings.model_dir else None
        if pipe is None and loader is None:
            if not settings.model_dir:
                raise ValueError("no model: pass a Pipeline or set ServeSettings.model_dir")
            loader = partial(load_pipeline, settings.model_dir)
        models = [(None, pipe)] if pipe is not None else [(name, loader)]
    elif pipe is not None or loader is not None:
        raise ValueError("pass the models either as `models` or as `pipe` / `loader`")
    served = ServedModels(settings, models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.start()
        try:
            yield
        finally:
            served.stop()

    app = FastAPI(title="pictor", version=__version__, lifespan=lifespan,
                  description="Text-to-image generation with provenance-labelled PNGs.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    # `served`: the default model (what a one-model server serves), `models`: all of them
    app.state.settings, app.state.models, app.state.served = settings, served, served.default
    app.include_router(router)
    app.include_router(openai_router)
    install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuth, token=settings.token, open_paths=OPEN_PATHS,
                       open_prefixes=OPEN_PREFIXES)
    if settings.token is None:
        app.add_middleware(LoopbackHostOnly)  # added last: runs first
    return app
