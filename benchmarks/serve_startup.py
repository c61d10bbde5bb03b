"""Start-up and latency of one `pictor serve` replica, as an orchestrator sees it: seconds from
process start to /healthz 200 (alive) and to /readyz 200 (loaded and warmed), then the latency
of the OpenAI-compatible endpoint through the official openai client, and the server's memory.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_startup.py [--model DIR] [--calls 3]

The server process gets the same OMP_NUM_THREADS as this script. Latency is measured for
--calls requests of one image and one request of four images, 20 steps (the default), after
readiness. Writes benchmarks/results/serve_startup.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from common import ROOT, environment, write_json

TOKEN = "benchmark-token-0123456789abcdef"
PROMPT = "a red circle to the left of a blue square"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                if k in ("VmRSS", "VmHWM")}


def main() -> None:
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "shapes-v11"))
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pictor.cli.main", "serve", "--model",
                             args.model, "--port", str(port)],
                            env={**os.environ, "PICTOR_TOKEN": TOKEN},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live_seconds = ready = None
    try:
        while ready is None:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if live_seconds is None and httpx.get(url + "/healthz").status_code == 200:
                    live_seconds = time.monotonic() - started
                r = httpx.get(url + "/readyz")
                if r.status_code == 200:
                    ready = r.json()
                    ready_seconds = time.monotonic() - started
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.05)
        client = OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0)
        latencies: dict[str, list[float]] = {"n1": [], "n4": []}
        for n, key in [(1, "n1")] * args.calls + [(4, "n4")]:
            t = time.monotonic()
            client.images.generate(prompt=PROMPT, n=n, size="auto", extra_body={"seed": 1})
            latencies[key].append(round(time.monotonic() - t, 3))
        memory = memory_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    result = {"model": args.model, "live_seconds": round(live_seconds, 2),
              "ready_seconds": round(ready_seconds, 2),
              "warmup_seconds": round(ready["warmup_seconds"], 2),
              "latency_seconds_20_steps": latencies, "server_memory_kib": memory,
              "environment": environment()}
    write_json("serve_startup", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
