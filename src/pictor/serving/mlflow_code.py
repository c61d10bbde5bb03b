"""The code file of pictor's MLflow model ("models from code", MLflow 3): `pictor export-mlflow`
saves this file with the model, and MLflow runs it when the model loads. Weights are never
pickled; PictorModel.load_context reads them from the model's artifacts (safetensors)."""

from mlflow.models import set_model

from pictor.serving.mlflow_model import PictorModel

set_model(PictorModel())
