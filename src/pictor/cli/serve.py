"""`pictor serve`: the REST API and web page (pictor.serving) on uvicorn.

    pictor serve [--model DIR [--model DIR ...]] [--host 127.0.0.1] [--port 8000] [--token-file F]
                 [--visible-mark] [--max-batch-images 16] [--max-queued-jobs 32] [--fast-batching]
                 [--embedding-disk-cache] [--device cpu]

Bound to loopback it runs without a token (unless --token-file or $PICTOR_TOKEN gives one, then
the token is required there too); on any other address it refuses to start without one. Open
http://HOST:PORT/ for the page, /openapi.json for the API schema. Errors in the user's input
(missing model folder, two models of one name, bad token file, unsafe address) exit with 2.

--model may be repeated: every folder is served under its name (its folder name, or <run>/final
for a training run's final/ folder: the model_name of the images' provenance records), the first
is the default, and requests choose one with their `model` field (pictor.serving.models). Two
folders of the same name are an error: rename one.

The server listens at once and loads the models in the background: /healthz answers (liveness)
while /readyz says 503 until every model is loaded and warmed (pictor.serving.readiness).
"""

from __future__ import annotations

import argparse
from functools import partial

from pictor.cli.generate import DEFAULT_MODEL_NAME, _error, resolve_model_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="Serve the REST API and the web page.",
                              description="Serve text-to-image generation over HTTP: an async "
                                          "REST API (OpenAPI at /openapi.json) and a web page "
                                          "at /. Every image carries its provenance record.")
    p.add_argument("--model", action="append", default=None, metavar="DIR",
                   help=f"model folder; repeat it to serve several, the first the default "
                        f"(default $PICTOR_MODEL, else models/{DEFAULT_MODEL_NAME})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need --token-file)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token-file", default=None,
                   help="file holding the bearer token clients must send "
                        "(Authorization: Bearer <token>); default: $PICTOR_TOKEN if set")
    p.add_argument("--visible-mark", action="store_true",
                   help='also stamp a visible "AI-generated" label into the pixels')
    p.add_argument("--max-batch-images", type=int, default=16,
                   help="images per micro-batch (1 = no batching; default 16)")
    p.add_argument("--max-queued-jobs", type=int, default=32,
                   help="jobs waiting before new ones get 429 (default 32)")
    p.add_argument("--fast-batching", action="store_true",
                   help="one network call per batch: faster, but a few channel values may be "
                        "one level off a solo `pictor generate` (default: exact)")
    p.add_argument("--embedding-disk-cache", action="store_true",
                   help="keep prompt embeddings on disk between runs (bounded, least recently "
                        "used out; entries hold prompts in plain text; default off)")
    p.add_argument("--device", default="cpu",
                   help="torch device to generate on: cpu (default) or cuda[:N] (the image "
                        "built on a CUDA base)")
    p.set_defaults(func=run_serve)


def serving_device(name: str):
    """The torch.device of --device; ValueError when torch does not know it or it is a CUDA
    device this process cannot see (before the server starts, not in its loading thread)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: no CUDA device is visible to this process (torch "
                         f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: pictor serves on cpu or cuda")
    return device


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pictor.families.pipeline import read_family
    from pictor.pipeline import load_pipeline, model_name_of, resolve_model_files
    from pictor.serving.app import create_app
    from pictor.serving.settings import ServeSettings, read_token_env, read_token_file

    try:
        token = read_token_file(args.token_file) if args.token_file else read_token_env()
        settings = ServeSettings(host=args.host, port=args.port, token=token,
                                 visible_mark=args.visible_mark,
                                 max_batch_images=args.max_batch_images,
                                 max_queued_jobs=args.max_queued_jobs,
                                 exact_batching=not args.fast_batching,
                                 embedding_disk_cache=args.embedding_disk_cache)
        settings.check()  # before the model loads: an unsafe address fails fast
        device = serving_device(args.device)
        model_dirs = [resolve_model_dir(m) for m in args.model or [None]]
        for model_dir in model_dirs:  # a folder without its files fails here, before serving
            family = read_family(model_dir)
            if family != "diffusion":
                raise ValueError(f"{model_dir} holds a {family} model; `pictor serve` runs "
                                 "diffusion models only (its batching steps the sampler). Use "
                                 f"`pictor generate --model {model_dir}` for {family} images")
            resolve_model_files(model_dir)
        settings.model_dir = str(model_dirs[0])
        # ServedModels refuses two models of one name (ValueError)
        app = create_app(settings, models=[(model_name_of(d), partial(load_pipeline, d, device))
                                           for d in model_dirs])
    except ValueError as err:
        return _error(str(err))
    auth = "bearer token required" if token else "no token (loopback only)"
    served = ", ".join(f"{model_name_of(d)} ({d})" for d in model_dirs)
    print(f"pictor serving {served} on http://{args.host}:{args.port}/ "
          f"({auth}); /readyz says when the models are loaded", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=5)
    return 0
