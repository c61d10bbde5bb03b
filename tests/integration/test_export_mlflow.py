"""`pictor export-mlflow`: the shipped model as an MLflow pyfunc model, served by the real
`mlflow models serve --env-manager local` on loopback; its PNGs carry the record that
`pictor inspect` reads, and they are the pixels `pictor generate` makes for the same settings."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
httpx = pytest.importorskip("httpx")

from pictor.cli.main import main  # noqa: E402
from pictor.pipeline import load_pipeline, model_digest  # noqa: E402
from pictor.provenance import DIGITAL_SOURCE_TYPE  # noqa: E402
from pictor.serving.mlflow_requests import decode_image  # noqa: E402

MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes-v11"
# Every row names the same columns: MLflow's schema enforcement refuses an integer column that
# some rows leave out (400, "Failed to convert column n to type 'int64'"); docs/databricks.md.
ROWS = [{"prompt": "a red circle to the left of a blue square", "seed": 5, "steps": 8, "n": 2,
         "sampler": "dpm++2m", "guidance": 4.0},
        {"prompt": "two stars", "seed": 9, "steps": 8, "n": 1, "sampler": "euler",
         "guidance": 5.0}]
READY_SECONDS = 240  # startup bound: loading mlflow, torch and the text encoder on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mlflow") / "pictor-model"
    assert main(["export-mlflow", str(MODEL), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    """`mlflow models serve` in its own process group on a free loopback port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-log") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           # the server execs `uvicorn` from PATH: the one of this interpreter's environment
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(exported),
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=exported.parent,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _reference_images():
    """What `pictor generate` makes for ROWS: (pixels, seed) per image, in order."""
    pipe = load_pipeline(MODEL)
    out = []
    for row in ROWS:
        for g in pipe.generate(row["prompt"], num_images=row["n"], seed=row["seed"],
                               num_steps=row["steps"], sampler=row["sampler"],
                               guidance_scale=row["guidance"]):
            out.append((np.asarray(g.image), g.record.seed))
    return out


@pytest.mark.slow
def test_served_model_answers_with_marked_pngs(server, exported, tmp_path, capsys):
    response = httpx.post(f"{server}/invocations", json={"dataframe_records": ROWS},
                          timeout=300)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["row"] for p in predictions] == [0, 0, 1]
    reference = _reference_images()
    digest = model_digest(MODEL)
    for k, (prediction, (pixels, seed)) in enumerate(zip(predictions, reference, strict=True)):
        image, record = decode_image(prediction)
        path = tmp_path / f"served-{k}.png"
        path.write_bytes(base64.b64decode(prediction["image"]))  # the bytes as served
        capsys.readouterr()
        assert main(["inspect", str(path)]) == 0
        inspected = json.loads(capsys.readouterr().out)
        row = ROWS[prediction["row"]]
        assert inspected["prompt"] == row["prompt"] and inspected["seed"] == seed
        assert inspected["num_steps"] == row["steps"] and inspected["synthetic"] is True
        assert inspected["xmp_digital_source_type"] == DIGITAL_SOURCE_TYPE
        assert inspected["model_sha256"] == digest and inspected["model_name"] == "shapes-v11"
        assert {k: v for k, v in inspected.items() if k != "xmp_digital_source_type"} == record
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels), f"image {k} differs"

    # in process: mlflow.pyfunc.load_model gives the same pixels for the same seeds
    import pandas as pd

    local = mlflow.pyfunc.load_model(str(exported)).predict(pd.DataFrame(ROWS))
    assert list(local.columns) == ["row", "image", "record"] and len(local) == len(predictions)
    for (_, row), served in zip(local.iterrows(), predictions, strict=True):
        a, _ = decode_image(row.to_dict())
        b, _ = decode_image(served)
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_served_model_refuses_bad_requests_with_400_and_keeps_serving(server):
    too_many = httpx.post(f"{server}/invocations",
                          json={"inputs": [{"prompt": "a red circle", "n": 65}]}, timeout=60)
    assert too_many.status_code == 400
    assert "asks for 65 images" in too_many.json()["message"]
    sampler = httpx.post(f"{server}/invocations", json={"dataframe_records": [
        {"prompt": "a", "sampler": "euler"}, {"prompt": "b", "sampler": "nope"}]}, timeout=60)
    assert sampler.status_code == 400
    assert "row 1: unknown sampler 'nope'" in sampler.json()["message"]
    ok = httpx.post(f"{server}/invocations",
                    json={"dataframe_records": [{"prompt": "a red circle", "steps": 2}]},
                    timeout=120)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


@pytest.mark.slow
def test_the_model_runs_the_exported_code(exported):
    """MLflow puts OUT/code first on sys.path: a fresh process that loads the model imports
    pictor from there (what a serving container without a pictor wheel relies on)."""
    script = ("import mlflow.pyfunc, sys; mlflow.pyfunc.load_model(sys.argv[1]); "
              "import pictor; print(pictor.__file__)")
    done = subprocess.run([sys.executable, "-c", script, str(exported)], capture_output=True,
                          text=True, timeout=300, cwd=exported.parent,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    imported = Path(done.stdout.strip().splitlines()[-1])
    assert imported == exported / "code" / "pictor" / "__init__.py"


def test_export_refuses_a_bad_model_folder_and_a_used_out(tmp_path, capsys):
    assert main(["export-mlflow", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    assert main(["export-mlflow", str(MODEL), str(tmp_path / "used")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["export-mlflow", str(MODEL), str(tmp_path / "big"), "--max-images",
                 "1000"]) == 2
    assert "use at most 145" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
