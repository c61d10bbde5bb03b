"""One server, two models, against real components: a real uvicorn server on loopback serving
two tiny trained models of distinct weights (an in-process app, and a real `pictor serve
--model A --model B` process), called with httpx and the official `openai` client. Which model
answered is told by the pixels: every served image must equal an in-process
`Pipeline.generate` of the model the request chose, and differ from the other model's."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from pipeline_support import second_tiny_model_dir, tiny_model_dir
from serve_support import (
    running_app,
    serve_processes,
    solo_pixels,
    wait_for,
    wait_ready,
    wait_running,
)

from pictor.pipeline import load_pipeline, model_name_of
from pictor.provenance import read_provenance
from pictor.serving.app import create_app
from pictor.serving.settings import ServeSettings

BODY = {"prompt": "a red circle", "n": 2, "seed": 5, "steps": 3, "guidance": 3.0}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    first = load_pipeline(tiny_model_dir(tmp_path_factory))
    second = load_pipeline(second_tiny_model_dir(tmp_path_factory))
    assert first.model_name != second.model_name
    assert first.model_sha256 != second.model_sha256
    return first, second


@pytest.fixture(scope="module")
def server(pipes):
    app = create_app(ServeSettings(preview_every_steps=1),
                     models=[(None, pipes[0]), (None, pipes[1])])
    with running_app(app) as url:
        wait_ready(url)  # both warmed up
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_models_lists_both_the_first_the_default(client, pipes):
    models = client.get("/v1/models").json()["models"]
    assert [(m["name"], m["sha256"], m["image_size"], m["state"]) for m in models] == [
        (p.model_name, p.model_sha256, p.image_size, "ready") for p in pipes]
    assert all(m["defaults"]["sampler"] == "dpm++2m" for m in models)
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").json()["status"] == "ok"


def test_each_request_is_answered_by_the_model_it_chose(client, pipes):
    expected = [solo_pixels(p, BODY) for p in pipes]
    # the two models make different images from one request: the check below can tell them
    assert not np.array_equal(expected[0][0], expected[1][0])
    # submitted together, same sampler, steps, guidance and prompt length: one batch key but
    # for the model, so the queue would batch them if it mixed models
    choices = [None, pipes[1].model_name, pipes[0].model_name, pipes[1].model_name]
    ids = []
    for choice in choices:
        body = BODY if choice is None else BODY | {"model": choice}
        r = client.post("/v1/generations", json=body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    jobs = [wait_for(client, job_id) for job_id in ids]
    for choice, job in zip(choices, jobs, strict=True):
        index = 1 if choice == pipes[1].model_name else 0
        pipe = pipes[index]
        assert job["status"] == "succeeded", job
        assert job["request"]["model"] == pipe.model_name
        for image, pixels in zip(job["images"], expected[index], strict=True):
            png = client.get(image["url"]).content
            record = read_provenance(Image.open(io.BytesIO(png)))
            assert (record.model_name, record.model_sha256) == (pipe.model_name,
                                                                pipe.model_sha256)
            assert image["record"]["model_name"] == pipe.model_name
            assert np.array_equal(png_pixels(png), pixels)
    # jobs of different models never share a batch
    batches = {}
    for choice, job in zip(choices, jobs, strict=True):
        batches.setdefault(job["batch_id"], set()).add(choice or pipes[0].model_name)
    assert all(len(names) == 1 for names in batches.values()), batches


def test_unknown_model_is_404_on_both_apis(client, server, pipes):
    r = client.post("/v1/generations", json=BODY | {"model": "dall-e-3"})
    assert r.status_code == 404
    assert "dall-e-3" in r.json()["detail"] and pipes[1].model_name in r.json()["detail"]
    oai = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError) as err:
        oai.images.generate(prompt="a red circle", model="dall-e-3")
    assert err.value.code == "model_not_found" and err.value.param == "model"


def test_openai_route_model_picks(server, pipes):
    oai = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)
    extra = {"seed": BODY["seed"], "steps": BODY["steps"], "guidance": BODY["guidance"]}
    for model, pipe in [(None, pipes[0]), (pipes[1].model_name, pipes[1]),
                        (pipes[0].model_name, pipes[0])]:
        kwargs = {} if model is None else {"model": model}
        r = oai.images.generate(prompt=BODY["prompt"], n=BODY["n"], extra_body=extra, **kwargs)
        pngs = [base64.b64decode(d.b64_json) for d in r.data]
        for png, pixels in zip(pngs, solo_pixels(pipe, BODY), strict=True):
            assert read_provenance(Image.open(io.BytesIO(png))).model_name == pipe.model_name
            assert np.array_equal(png_pixels(png), pixels)


def test_one_batch_at_a_time_across_models_in_turn(pipes):
    """While model A runs a long job, a job for model B stays queued (one batch at a time), and
    B's job runs before A's next one, which was submitted earlier: the workers take turns in
    the order they asked (A's busy worker does not win the lock straight back)."""
    app = create_app(ServeSettings(max_num_steps=1000),
                     models=[(None, pipes[0]), (None, pipes[1])])
    run_lock = app.state.models.run_lock
    with running_app(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(url)
        long_a = c.post("/v1/generations", json={"prompt": "three stars", "seed": 0,
                                                 "steps": 1000}).json()["id"]
        wait_running(c, long_a)
        next_a = c.post("/v1/generations", json=BODY | {"steps": 6}).json()["id"]
        b = c.post("/v1/generations", json=BODY | {"model": pipes[1].model_name}).json()["id"]
        for _ in range(6000):  # until B's worker waits for the lock A's worker holds
            if run_lock.waiting() == 1:
                break
            threading.Event().wait(0.01)
        assert run_lock.waiting() == 1
        assert c.get(f"/v1/generations/{b}").json()["status"] == "queued"
        assert c.get(f"/v1/generations/{next_a}").json()["status"] == "queued"
        assert c.delete(f"/v1/generations/{long_a}").status_code == 202  # stops at its next step
        job_b, job_a = wait_for(c, b), wait_for(c, next_a)
        assert job_b["status"] == job_a["status"] == "succeeded"
        assert job_b["started_at"] < job_a["started_at"]
        assert wait_for(c, long_a)["status"] == "cancelled"


def test_readyz_waits_for_every_model(tmp_path_factory, pipes):
    """The first model loads at once, the second when the test says: until then /readyz is
    503 and /v1/models too, while the first model already answers requests."""
    release = threading.Event()
    second_dir = second_tiny_model_dir(tmp_path_factory)

    def load_second():
        release.wait(120)
        return load_pipeline(second_dir)

    app = create_app(ServeSettings(), models=[(None, pipes[0]),
                                              (model_name_of(second_dir), load_second)])
    try:
        with running_app(app) as url, httpx.Client(base_url=url, timeout=60) as c:
            first_ready = False
            for _ in range(600):  # the first model warms up; the second waits for `release`
                r = c.get("/readyz")
                assert r.status_code == 503 and r.json()["status"] in ("loading", "warming")
                job = c.post("/v1/generations", json=BODY)
                if job.status_code == 202:
                    first_ready = True
                    break
                threading.Event().wait(0.1)
            assert first_ready
            assert wait_for(c, job.json()["id"])["status"] == "succeeded"
            assert c.get("/readyz").status_code == 503
            assert c.get("/healthz").json()["status"] == "starting"
            assert c.get("/v1/models").status_code == 503
            r = c.post("/v1/generations", json=BODY | {"model": model_name_of(second_dir)})
            assert r.status_code == 503 and "Retry-After" in r.headers
            release.set()
            for _ in range(1200):
                if c.get("/readyz").status_code == 200:
                    break
                threading.Event().wait(0.1)
            assert c.get("/readyz").json()["status"] == "ready"
            assert [m["name"] for m in c.get("/v1/models").json()["models"]] == [
                pipes[0].model_name, model_name_of(second_dir)]
    finally:
        release.set()


@pytest.mark.slow
def test_pictor_serve_with_two_model_folders(tmp_path_factory, pipes):
    """The CLI: `pictor serve --model A --model B` names each model by its folder."""
    dirs = [tiny_model_dir(tmp_path_factory), second_tiny_model_dir(tmp_path_factory)]
    args = [a for d in dirs for a in ("--model", str(d))]
    with serve_processes(1, args) as [url], httpx.Client(base_url=url, timeout=60) as c:
        names = [m["name"] for m in c.get("/v1/models").json()["models"]]
        assert names == [model_name_of(d) for d in dirs] == [p.model_name for p in pipes]
        job_id = c.post("/v1/generations", json=BODY | {"model": names[1]}).json()["id"]
        job = wait_for(c, job_id)
        for image, pixels in zip(job["images"], solo_pixels(pipes[1], BODY), strict=True):
            assert np.array_equal(png_pixels(c.get(image["url"]).content), pixels)
