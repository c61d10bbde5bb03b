"""`pictor export-mlflow`: a model folder as an MLflow pyfunc model for Databricks Model Serving.

    pictor export-mlflow MODEL_DIR OUT [--max-images 64] [--max-image-steps 3200]
                         [--max-steps 200] [--dtype auto] [--pip-requirement LINE ...]

OUT can be served with `mlflow models serve -m OUT`, logged and registered with
`mlflow.pyfunc.log_model` / Unity Catalog, and served by Model Serving (docs/databricks.md).
Needs the `databricks` extra (mlflow). Errors in the user's input exit with 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pictor.cli.generate import _error


def register(subparsers: argparse._SubParsersAction) -> None:
    from pictor.serving.mlflow_requests import ServingLimits

    defaults = ServingLimits()
    p = subparsers.add_parser(
        "export-mlflow", help="Write a model folder as an MLflow pyfunc model (Model Serving).",
        description="Write MODEL_DIR as an MLflow pyfunc model in OUT: prompts and settings in, "
                    "base64 PNGs with their provenance record out, within Databricks Model "
                    "Serving's limits (16 MB per response, 297 s per request).")
    p.add_argument("model", type=Path, metavar="MODEL_DIR",
                   help="model folder (e.g. models/shapes-v11 or a run's final/)")
    p.add_argument("out", type=Path, metavar="OUT", help="new folder for the MLflow model")
    p.add_argument("--max-images", type=int, default=defaults.max_images,
                   help=f"images per request, summed over rows (default {defaults.max_images})")
    p.add_argument("--max-image-steps", type=int, default=defaults.max_image_steps,
                   help="images x steps per request, the work that decides its time "
                        f"(default {defaults.max_image_steps})")
    p.add_argument("--max-steps", type=int, default=defaults.max_steps,
                   help=f"sampler steps of one row (default {defaults.max_steps})")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="compute dtype of the U-Net where it is served (default auto)")
    p.add_argument("--pip-requirement", action="append", default=[], metavar="LINE",
                   help="an extra line for the model's requirements.txt (repeatable)")
    p.set_defaults(func=run_export_mlflow)


def run_export_mlflow(args: argparse.Namespace) -> int:
    try:
        from pictor.serving.mlflow_export import export_mlflow
    except ImportError as err:
        return _error(f"{err}; install the databricks extra: pip install 'pictor[databricks]'")
    from pictor.serving.mlflow_requests import ServingLimits

    try:
        out = export_mlflow(args.model, args.out,
                            limits=ServingLimits(max_images=args.max_images,
                                                 max_image_steps=args.max_image_steps,
                                                 max_steps=args.max_steps),
                            compute_dtype=args.dtype,
                            extra_pip_requirements=tuple(args.pip_requirement))
    except ValueError as err:
        return _error(str(err))
    print(f"MLflow model: {out}")
    return 0
