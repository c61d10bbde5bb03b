"""A pictor model as an MLflow pyfunc model, for Databricks Model Serving (`pictor export-mlflow`).

The model is saved as *code* (MLflow's "models from code": mlflow_code.py calls `set_model`),
never as a pickle: `load_context` loads the pipeline from the model folder that export placed
in the artifacts (safetensors + config.yaml), exactly as `pictor generate --model DIR` does.
Requests, their limits and the answer rows: pictor.serving.mlflow_requests.
"""

from __future__ import annotations

from typing import Any

from mlflow.pyfunc import PythonModel

from pictor.serving.mlflow_requests import (
    OUTPUT_COLUMNS,
    ServingLimits,
    parse_requests,
    png_base64,
)


def signature() -> Any:
    """The MLflow ModelSignature of the columns above."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = Schema([
        ColSpec(DataType.string, "prompt"),
        ColSpec(DataType.long, "seed", required=False),
        ColSpec(DataType.long, "steps", required=False),
        ColSpec(DataType.double, "guidance", required=False),
        ColSpec(DataType.string, "sampler", required=False),
        ColSpec(DataType.long, "n", required=False),
    ])
    outputs = Schema([ColSpec(DataType.long, "row"), ColSpec(DataType.string, "image"),
                      ColSpec(DataType.string, "record")])
    return ModelSignature(inputs=inputs, outputs=outputs)


class PictorModel(PythonModel):
    """The pyfunc model: prompts and settings in, PNGs with their provenance out."""

    MODEL_ARTIFACT = "model"  # key of the model folder in context.artifacts

    def load_context(self, context: Any) -> None:
        from pathlib import Path

        from pictor.pipeline import load_pipeline

        config = dict(context.model_config or {})
        self.limits = ServingLimits(**config.get("limits", {}))
        self.limits.check()
        folder = Path(context.artifacts[self.MODEL_ARTIFACT]) / config.get("model_folder", ".")
        self.pipeline = load_pipeline(folder,
                                      compute_dtype=config.get("compute_dtype", "auto"))
        # Prompts are users' text: no copies of them on the serving container's disk.
        self.pipeline.embedding_disk_cache = False
        self.pipeline.encode_prompt("")  # loads the text encoder now, not in the first request

    # No type hints on predict: MLflow 3 would read them as the model's schema, which the
    # explicit signature (signature()) gives.
    def predict(self, context, model_input, params=None):
        import pandas as pd
        from mlflow.exceptions import MlflowException

        from pictor.pipeline import canonical_sampler_name

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(
            model_input)
        try:
            requests = parse_requests(frame.to_dict(orient="records"), self.limits)
            for i, request in enumerate(requests):  # every row checked before any image
                try:
                    canonical_sampler_name(request.sampler)
                    self.pipeline.check_args(request.n, request.seed, request.steps,
                                             request.guidance)
                except ValueError as err:
                    raise ValueError(f"row {i}: {err}") from None
            rows = []
            for i, request in enumerate(requests):
                for generated in self.pipeline.generate(
                        request.prompt, num_images=request.n, seed=request.seed,
                        num_steps=request.steps, sampler=request.sampler,
                        guidance_scale=request.guidance):
                    rows.append({"row": i, "image": png_base64(generated.image, generated.record),
                                 "record": generated.record.to_json()})
        except ValueError as err:  # bad input: 400 from the scoring server
            raise MlflowException.invalid_parameter_value(str(err)) from None
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
