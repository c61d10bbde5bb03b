"""A real uvicorn server on a free loopback port, in a thread, or a real `pictor serve` process
(not a test module).

Shared by the serving API and browser tests and by benchmarks/serve_load.py:

    with running_server(settings, pipe) as base_url:
        httpx.get(base_url + "/healthz")
    with serve_processes(2, ["--model", "models/shapes-v11"], env={"PICTOR_TOKEN": TOKEN}) as urls:
        ...  # both ready: /readyz has answered 200
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI

from pictor.pipeline import Pipeline
from pictor.serving.app import create_app
from pictor.serving.settings import ServeSettings

TOKEN = "test-token-0123456789abcdef"


@contextlib.contextmanager
def running_server(settings: ServeSettings, pipe: Pipeline, *,
                   start_timeout_seconds: float = 60.0) -> Iterator[str]:
    """Serve create_app(settings, pipe) on 127.0.0.1:<free port>; yields the base URL."""
    with running_app(create_app(settings, pipe),
                     start_timeout_seconds=start_timeout_seconds) as url:
        yield url


@contextlib.contextmanager
def running_app(app: FastAPI, *, start_timeout_seconds: float = 60.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:<free port>; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn listens on this socket
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_seconds
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def solo_pixels(pipe, body: dict) -> list[np.ndarray]:
    """What `pictor generate` makes for this request body."""
    images = pipe.generate(body["prompt"], num_images=body.get("n", 1), seed=body["seed"],
                           num_steps=body["steps"], sampler=body.get("sampler", "dpm++2m"),
                           guidance_scale=body.get("guidance", 4.0),
                           negative_prompt=body.get("negative_prompt", ""))
    return [np.asarray(g.image) for g in images]


def wait_for(client: httpx.Client, job_id: str, statuses=("succeeded", "failed", "cancelled"),
             timeout_seconds: float = 120.0, poll_seconds: float = 0.02) -> dict:
    """Poll GET /v1/generations/{id} until its status is one of `statuses`; the job JSON."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        job = client.get(f"/v1/generations/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_seconds} s")
        time.sleep(poll_seconds)


def wait_running(client: httpx.Client, job_id: str, timeout_seconds: float = 120.0) -> dict:
    """Wait until the job runs and has done at least one step."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        job = client.get(f"/v1/generations/{job_id}").json()
        if job["status"] != "queued" and (job["step"] > 0 or job["status"] != "running"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not start within {timeout_seconds} s")
        time.sleep(0.01)


def free_port() -> int:
    """A port that was free a moment ago (the OS picked it; a process binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base_url: str, proc: subprocess.Popen | None = None,
               timeout_seconds: float = 180.0) -> dict:
    """Poll GET /readyz until 200 (the model loaded and warmed); its JSON. RuntimeError when
    the process exits first, TimeoutError after timeout_seconds."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} (stderr above)")
        try:
            r = httpx.get(base_url + "/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base_url} not ready after {timeout_seconds} s")
        time.sleep(0.1)


@contextlib.contextmanager
def serve_processes(count: int, args: list[str], env: dict[str, str] | None = None
                    ) -> Iterator[list[str]]:
    """`count` `pictor serve ARGS --port <free>` processes on loopback (this interpreter, this
    PYTHONPATH, one thread for torch each), started together; yields their base URLs once
    every /readyz says ready."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    procs, urls = [], []
    try:
        for _ in range(count):
            port = free_port()
            # output goes to the test's own stderr (pytest shows it on failure); a pipe nobody
            # reads would fill up with request logs and stall the server
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pictor.cli.main", "serve", *args, "--port", str(port)],
                env=full_env, stdout=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for proc, url in zip(procs, urls, strict=True):
            wait_ready(url, proc)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
