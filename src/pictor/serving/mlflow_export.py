"""`pictor export-mlflow MODEL_DIR OUT`: a model folder becomes an MLflow pyfunc model that
Databricks Model Serving (or `mlflow models serve`) can serve.

What OUT holds (MLflow's layout):
- `MLmodel`: the pyfunc flavor, the signature (mlflow_model.signature), the serving limits and
  compute dtype (model_config), the model's name and sha256 (metadata);
- `mlflow_code.py`: the model as code ("models from code"; nothing is pickled);
- `artifacts/<name>/`: the model folder's files that define the model (U-Net, autoencoder,
  trained text encoder: safetensors, and config.yaml), checked against the source by their
  sha256 (pipeline.model_digest), so every image's record names the same model as locally;
- `code/pictor/`: pictor's own source, which MLflow puts on sys.path before loading: the
  serving container needs no pictor wheel, and it runs the very code that was exported;
- `requirements.txt` and friends: pictor's dependencies pinned to the versions installed here
  (a CPU build of torch comes with the index it is served from).

The frozen text encoder (all-MiniLM-L6-v2) comes from its PyPI wheel, one of those dependencies.
"""

from __future__ import annotations

import importlib.metadata as metadata
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from pictor.pipeline import (
    AUTOENCODER_FILE,
    CONFIG_FILE,
    UNET_FILE,
    model_digest,
    resolve_compute_dtype,
    resolve_model_files,
)
from pictor.serving.mlflow_model import PictorModel, signature
from pictor.serving.mlflow_requests import ServingLimits, check_limits
from pictor.text.encoders import TEXT_ENCODER_FILE, TRAINABLE_SPEC

CODE_FILE = Path(__file__).with_name("mlflow_code.py")
# Where a CPU build of torch (version "X+cpu") is served from; pip finds it nowhere else.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MODEL_README = "README.md"  # the model card, when the folder has one


def pinned_requirements() -> list[str]:
    """pictor's runtime dependencies (its metadata, extras left out) and mlflow, each pinned to
    the version installed here, as pip requirement lines."""
    from packaging.requirements import Requirement

    try:
        names = [Requirement(line).name for line in metadata.requires("pictor") or []
                 if "extra ==" not in line]
        versions = {name: metadata.version(name) for name in [*names, "mlflow"]}
    except metadata.PackageNotFoundError as err:
        raise ValueError(f"{err.name} is not installed here, so its version cannot be pinned; "
                         "install pictor with pip (pip install -e '.[databricks]') first") from None
    lines = []
    for name, version in versions.items():
        if name == "torch" and version.endswith("+cpu"):
            lines.insert(0, f"--extra-index-url {TORCH_CPU_INDEX}")
        lines.append(f"{name}=={version}")
    return lines


def _stage_model(model_dir: Path, into: Path) -> Path:
    """A copy of the files that define the model in `into`/<model folder name>/ (a run's
    final/ folder keeps its run's name as parent, so records name the model alike)."""
    model_dir, config, ae_path = resolve_model_files(model_dir)
    resolved = model_dir.resolve()
    staged = (into / resolved.parent.name / "final" if resolved.name == "final"
              else into / resolved.name)
    staged.mkdir(parents=True)
    for name in (UNET_FILE, CONFIG_FILE, MODEL_README):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, staged / name)
    if ae_path is not None:
        shutil.copy2(ae_path, staged / AUTOENCODER_FILE)
    if config.text.spec == TRAINABLE_SPEC:
        shutil.copy2(model_dir / TEXT_ENCODER_FILE, staged / TEXT_ENCODER_FILE)
    if model_digest(staged) != model_digest(model_dir):
        raise ValueError(f"the copy of {model_dir} in {staged} does not hash like the original")
    return staged


def export_mlflow(model_dir: str | Path, out: str | Path, *,
                  limits: ServingLimits = ServingLimits(), compute_dtype: str = "auto",
                  extra_pip_requirements: tuple[str, ...] = ()) -> Path:
    """Write the MLflow pyfunc model of `model_dir` to `out` (a new or empty folder).
    ValueError for a bad model folder, a non-empty `out` or limits past Model Serving's."""
    import mlflow.pyfunc
    import torch

    import pictor

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; pick a new path")
    _, config, _ = resolve_model_files(model_dir)
    check_limits(limits, config.data.image_size)
    resolve_compute_dtype(compute_dtype, torch.device("cpu"))  # a bad name fails here

    with tempfile.TemporaryDirectory(prefix="pictor-mlflow-") as tmp:
        staged = _stage_model(Path(model_dir), Path(tmp) / "model")
        top = Path(tmp) / "model" / staged.relative_to(Path(tmp) / "model").parts[0]
        package = Path(tmp) / "code" / "pictor"
        shutil.copytree(Path(pictor.__file__).parent, package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        digest = model_digest(staged)
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(CODE_FILE),
            artifacts={PictorModel.MODEL_ARTIFACT: str(top)},
            code_paths=[str(package)],
            signature=signature(),
            input_example=[{"prompt": "a red circle", "seed": 0, "steps": 20, "guidance": 4.0,
                            "sampler": "dpm++2m", "n": 1}],
            pip_requirements=[*pinned_requirements(), *extra_pip_requirements],
            model_config={"limits": asdict(limits), "compute_dtype": compute_dtype,
                          "model_folder": staged.relative_to(top).as_posix()},
            metadata={"pictor_model_name": "/".join(staged.relative_to(Path(tmp) / "model").parts),
                      "pictor_model_sha256": digest, "pictor_version": pictor.__version__},
        )
    return out
