"""A real uvicorn server on a free loopback port, in a thread (not a test module).

Shared by the serving API and browser tests and by benchmarks/serve_load.py:

    with running_server(settings, pipe) as base_url:
        httpx.get(base_url + "/healthz")
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from pictor.pipeline import Pipeline
from pictor.serving.app import create_app
from pictor.serving.settings import ServeSettings

TOKEN = "test-token-0123456789abcdef"


@contextlib.contextmanager
def running_server(settings: ServeSettings, pipe: Pipeline, *,
                   start_timeout_seconds: float = 60.0) -> Iterator[str]:
    """Serve create_app(settings, pipe) on 127.0.0.1:<free port>; yields the base URL."""
    app = create_app(settings, pipe)
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
