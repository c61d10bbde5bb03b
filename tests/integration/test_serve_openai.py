"""The stateless OpenAI-compatible endpoint and /readyz, against real components: two real
`pictor serve` processes on loopback serving the shipped model, called with the official
`openai` client; readiness observed on a real server whose model load waits on the test.

The tests on the two processes are marked slow: starting both (torch import, model load,
warm-up) takes 15 to 35 s on two shared cores. The readiness tests run an in-process server
and also call the endpoint with the openai client, so the fast suite covers it too."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from serve_support import (
    TOKEN,
    running_app,
    running_server,
    serve_processes,
    wait_ready,
    wait_running,
)

from pictor.pipeline import load_pipeline, model_digest
from pictor.provenance import DIGITAL_SOURCE_TYPE, read_digital_source_type, read_provenance
from pictor.serving.app import create_app
from pictor.serving.jobs import png_bytes
from pictor.serving.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "shapes-v11"
REQUEST = {"prompt": "a red circle to the left of a blue square", "n": 2, "size": "64x64",
           "response_format": "b64_json"}
EXTRA = {"seed": 7, "steps": 4, "guidance": 3.0}


@pytest.fixture(scope="module")
def servers():
    """Two replicas: separate `pictor serve` processes, token from $PICTOR_TOKEN."""
    with serve_processes(2, ["--model", str(MODEL)], env={"PICTOR_TOKEN": TOKEN}) as urls:
        yield urls


def client(base_url: str, api_key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def pngs(response) -> list[bytes]:
    return [base64.b64decode(item.b64_json) for item in response.data]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.slow
def test_openai_client_gets_labelled_pngs_and_a_second_replica_the_same(servers):
    a, b = servers
    first = client(a).images.generate(**REQUEST, extra_body=EXTRA)
    second = client(b).images.generate(**REQUEST, extra_body=EXTRA)
    assert len(first.data) == 2 and [d.seed for d in first.data] == [7, 8]
    records = []
    for png, seed in zip(pngs(first), (7, 8), strict=True):
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (64, 64)
        record = read_provenance(image)
        assert (record.prompt, record.seed, record.num_steps, record.guidance_scale,
                record.model_name, record.synthetic) == (REQUEST["prompt"], seed, 4, 3.0,
                                                         "shapes-v11", True)
        assert record.model_sha256 == model_digest(MODEL)
        assert read_digital_source_type(image) == DIGITAL_SOURCE_TYPE
        records.append(record)
    # the other replica: the same pixels and the same record but for its creation time, so
    # the same PNG bytes once that time is equal (png_bytes is the server's own encoder)
    for png_a, png_b, record_a in zip(pngs(first), pngs(second), records, strict=True):
        record_b = read_provenance(Image.open(io.BytesIO(png_b)))
        assert np.array_equal(pixels(png_a), pixels(png_b))
        record_b.created = record_a.created
        assert record_b == record_a
        assert png_bytes(Image.open(io.BytesIO(png_b)).convert("RGB"), record_b) == png_a
    # and the pixels are those of `pictor generate` with the same settings
    solo = load_pipeline(MODEL).generate(REQUEST["prompt"], num_images=2, seed=7, num_steps=4,
                                         guidance_scale=3.0)
    for png, g in zip(pngs(first), solo, strict=True):
        assert np.array_equal(pixels(png), np.asarray(g.image))


@pytest.mark.slow
def test_errors_are_typed_openai_errors(servers):
    a, _ = servers
    with pytest.raises(openai.AuthenticationError) as err:
        client(a, api_key="wrong-token-0123456789").images.generate(prompt="a red circle")
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    cases = [({"size": "256x256"}, "size"), ({"n": 9}, "n"),
             ({"response_format": "url"}, "response_format"),
             ({"extra_body": {"steps": 0}}, "steps"),
             ({"extra_body": {"sampler": "nope"}}, None),
             ({"extra_body": {"quality": "hd"}}, "quality")]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client(a).images.generate(prompt="a red circle", **kwargs)
        assert err.value.status_code == 400, kwargs
        assert err.value.param == param, (kwargs, err.value.body)
        assert err.value.type == "invalid_request_error" and err.value.message
    assert "64x64" in str(client_error(a, size="256x256"))
    assert "stateless" in str(client_error(a, response_format="url"))
    with pytest.raises(openai.NotFoundError) as err:
        client(a).images.generate(prompt="a red circle", model="dall-e-3")
    assert err.value.code == "model_not_found"
    # a body beyond max_body_bytes (16 KiB), and a malformed one, in OpenAI's error shape
    r = httpx.post(a + "/v1/images/generations", json={"prompt": "x" * 20_000},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(a + "/v1/images/generations", json={"n": 1},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    # the async API keeps FastAPI's error shape
    r = httpx.post(a + "/v1/generations", json={"prompt": "a", "n": 99},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and "detail" in r.json()


def client_error(base_url: str, **kwargs) -> openai.BadRequestError:
    try:
        client(base_url).images.generate(prompt="a red circle", **kwargs)
    except openai.BadRequestError as err:
        return err
    raise AssertionError(f"no 400 for {kwargs}")


@pytest.mark.slow
def test_docs_snippets_run_as_written(servers, tmp_path):
    """docs/deploy.md's curl command and python snippet, pointed at replica a."""
    a, _ = servers
    doc = (ROOT / "docs" / "deploy.md").read_text()
    python = re.search(r"<!-- tested: openai -->\n```python\n(.*?)```", doc, re.S).group(1)
    curl = re.search(r"<!-- tested: curl -->\n```bash\n(.*?)```", doc, re.S).group(1)
    # this interpreter's bin folder first: `python3` and `pictor` as a user's venv gives them
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PICTOR_TOKEN": TOKEN,
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    for name, cmd, seeds in (("openai", [sys.executable, "-c", python], [7, 8]),
                             ("curl", ["bash", "-ec", curl], [7])):
        cmd = [c.replace("http://127.0.0.1:8000", a) for c in cmd]
        out = tmp_path / name
        out.mkdir()
        result = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        records = [read_provenance(png) for png in sorted(out.glob("*.png"))]
        assert [r.seed for r in records] == seeds and all(r.synthetic for r in records)
        if name == "curl":  # `pictor inspect` printed the record
            assert json.loads(result.stdout)["seed"] == 7


def test_readyz_is_503_until_the_model_is_loaded_and_warmed(tmp_path):
    """A real server whose model load waits for the test: not ready (503) while the model is
    not loaded, alive (/healthz 200) all along, ready once loaded and warmed."""
    release = threading.Event()

    def load_when_released():
        release.wait(120)
        return load_pipeline(MODEL)

    app = create_app(ServeSettings(token=TOKEN), loader=load_when_released)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running_app(app) as url:
        before = httpx.get(url + "/readyz")  # probes carry no token
        assert before.status_code == 503 and before.json()["status"] == "loading"
        health = httpx.get(url + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "starting"
        r = httpx.post(url + "/v1/generations", json={"prompt": "a red circle"}, headers=auth)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        with pytest.raises(openai.InternalServerError) as err:
            client(url).images.generate(prompt="a red circle")
        assert err.value.status_code == 503 and err.value.code == "model_not_ready"
        release.set()
        ready = wait_ready(url, timeout_seconds=120)
        assert ready["status"] == "ready" and ready["warmup_seconds"] > 0
        assert httpx.get(url + "/healthz").json()["status"] == "ok"
        out = client(url).images.generate(prompt="a red circle", extra_body={"seed": 1,
                                                                            "steps": 2})
        assert read_provenance(Image.open(io.BytesIO(pngs(out)[0]))).seed == 1
        # stateless: the queue kept neither the job nor its PNG (an async job it does keep)
        jobs = app.state.served.jobs
        assert jobs.stats()["retained_jobs"] == 0
        r = httpx.post(url + "/v1/generations", json={"prompt": "a", "steps": 1}, headers=auth)
        assert r.status_code == 202 and jobs.stats()["retained_jobs"] == 1


def test_a_model_that_fails_to_load_is_never_ready_and_not_live(tmp_path):
    app = create_app(ServeSettings(), loader=lambda: load_pipeline(tmp_path / "no-model"))
    with running_app(app) as url:
        for _ in range(600):  # the loading thread fails within moments; poll its state
            r = httpx.get(url + "/readyz")
            if r.json()["status"] != "loading":
                break
            threading.Event().wait(0.05)
        assert r.status_code == 503 and r.json() == {"status": "failed", "warmup_seconds": None}
        assert httpx.get(url + "/healthz").status_code == 503
        # the reason: in the log, and in the 503 of the routes behind the token (none here)
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 503 and "does not exist" in r.json()["detail"]


def test_a_full_queue_is_a_rate_limit_error_with_retry_after():
    """The endpoint shares the async API's queue: behind a running job and a full queue the
    openai client gets RateLimitError (429) with Retry-After, in OpenAI's error shape."""
    settings = ServeSettings(token=TOKEN, max_queued_jobs=1, max_batch_images=1,
                             max_num_steps=1000)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running_server(settings, load_pipeline(MODEL)) as url, \
            httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        wait_ready(url)
        blocker = http.post("/v1/generations", json={"prompt": "three stars", "steps": 1000})
        wait_running(http, blocker.json()["id"])
        queued = http.post("/v1/generations", json={"prompt": "a red circle", "steps": 2})
        assert queued.status_code == 202  # the queue's one slot
        with pytest.raises(openai.RateLimitError) as err:
            client(url).images.generate(prompt="a red circle", extra_body={"steps": 2})
        assert err.value.code == "queue_full" and err.value.type == "rate_limit_error"
        assert int(err.value.response.headers["retry-after"]) >= 1
        for job in (queued, blocker):
            http.delete(f"/v1/generations/{job.json()['id']}")


def test_a_client_that_gives_up_frees_the_worker():
    """A request whose client disconnects (its timeout) is cancelled between two steps instead
    of running to the end for nobody.

    Independent of the machine's speed: every denoising step waits until the server has called
    cancel (or 30 s), so the job cannot finish before the disconnect is seen, however fast the
    cores are (a fast machine once finished the 1000 steps before the server noticed)."""
    pipe = load_pipeline(MODEL)
    pipe.trace_after_calls = None  # the hook below must see every U-Net call
    app = create_app(ServeSettings(max_num_steps=1000), pipe)
    with running_app(app) as url:
        wait_ready(url)  # the warm-up's U-Net calls run before the hook exists
        jobs = app.state.served.jobs
        cancelled = threading.Event()
        real_cancel = jobs.cancel

        def cancel_and_release(job_id):
            try:
                return real_cancel(job_id)
            finally:
                cancelled.set()

        jobs.cancel = cancel_and_release
        held = {"steps": 0, "timed_out": False}

        def hold_each_step(module, args):
            held["steps"] += 1
            if not cancelled.wait(30):
                held["timed_out"] = True
                cancelled.set()  # let the rest run, and fail below

        hook = pipe.unet.register_forward_pre_hook(hold_each_step)
        try:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/v1/images/generations", timeout=2,
                           json={"prompt": "three stars", "steps": 1000})
            for _ in range(1200):  # until the worker is idle again
                stats = jobs.stats()
                if stats["running_jobs"] == 0 and stats["queued_jobs"] == 0:
                    break
                threading.Event().wait(0.05)
            else:
                pytest.fail("the worker is still busy with the abandoned request")
        finally:
            hook.remove()
        assert not held["timed_out"], "the server did not cancel within 30 s of the disconnect"
        assert held["steps"] >= 1  # it was running when the client gave up
        assert jobs.stats()["images_done"] == 0  # cancelled: no image was made
        assert held["steps"] < 1000
