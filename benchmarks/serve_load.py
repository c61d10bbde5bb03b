"""Load test of `pictor serve`: concurrent clients on loopback, micro-batching off vs on.

For each batching mode a fresh server process serves the model on a free loopback port:
- off:   --max-batch-images 1 (one job per sampler call);
- exact: micro-batching, the network run per job (images bit-identical to solo calls);
- fast:  micro-batching, one network call per batch (--fast-batching).
--clients asyncio clients each loop for --duration-seconds: POST /v1/generations (a shapes-world
prompt drawn from the six benchmark categories, a fresh seed, n=1, the default 20 steps and
dpm++2m), follow the job's server-sent events to its `done` event, GET the PNG. Latency is
POST sent -> PNG received. A 429 is intended back-pressure: the client waits Retry-After and
tries again; it is counted apart from errors (any other status, a failed job, an exception).
Throughput counts images whose PNG arrived before the deadline. Server memory is the resident
set (VmRSS) of the server process after warm-up and at the end, and its peak (VmHWM).

    .venv/bin/python benchmarks/serve_load.py                         # 3 x 60 s + warm-ups
    .venv/bin/python benchmarks/serve_load.py --duration-seconds 15   # a quick check

Writes benchmarks/results/serve_load.json and prints a Markdown table; --update-markdown also
writes it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from common import ROOT, environment, markdown_table, update_markdown_section, write_json

NAME = "serve_load"
MODES = {"off": ["--max-batch-images", "1"],
         "exact": [],
         "fast": ["--fast-batching"]}
# `pictor serve` without depending on cli/main.py listing the command
SERVE_SNIPPET = ("import argparse, sys; from pictor.cli import serve; "
                 "p = argparse.ArgumentParser(); serve.register(p.add_subparsers()); "
                 "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, MiB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def prompt_pool(size: int = 200, seed: int = 0) -> list[str]:
    from pictor.data.shapes import CATEGORIES, sample_prompt_and_scene

    rng = np.random.default_rng(seed)
    return [sample_prompt_and_scene(CATEGORIES[i % len(CATEGORIES)], rng)[0]
            for i in range(size)]


class Server:
    def __init__(self, model: str, mode_args: list[str], extra_args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "-c", SERVE_SNIPPET, "serve", "--model", model,
               "--port", str(self.port), *mode_args, *extra_args]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout_seconds: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_generation(client: httpx.AsyncClient, body: dict, stats: dict) -> float | None:
    """Latency (s) of one generation, None when it errored. Retries after 429."""
    start = time.perf_counter()
    while True:
        r = await client.post("/v1/generations", json=body)
        if r.status_code == 429:
            stats["http_429"] += 1
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            continue
        if r.status_code != 202:
            stats["errors"].append(f"POST {r.status_code}: {r.text[:200]}")
            return None
        break
    job_id = r.json()["id"]
    async with client.stream("GET", f"/v1/generations/{job_id}/events") as s:
        event = None
        async for line in s.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "done":
                break
    job = (await client.get(f"/v1/generations/{job_id}")).json()
    if job["status"] != "succeeded":
        stats["errors"].append(f"job {job['status']}: {job.get('error')}")
        return None
    for image in job["images"]:
        png = await client.get(image["url"])
        if png.status_code != 200:
            stats["errors"].append(f"image {png.status_code}")
            return None
    stats["batch_sizes"].append(job["batch_num_images"])
    return time.perf_counter() - start


async def load(url: str, clients: int, duration_seconds: float, prompts: list[str],
               body_extra: dict, seed: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"http_429": 0, "errors": [], "batch_sizes": []}
    latencies: list[float] = []
    images_in_window = 0
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=2 * clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + duration_seconds

        async def worker(k: int) -> None:
            nonlocal images_in_window
            while time.perf_counter() < deadline:
                body = {"prompt": rng.choice(prompts), "seed": rng.randrange(2**31), "n": 1,
                        **body_extra}
                try:
                    latency = await one_generation(client, body, stats)
                except httpx.HTTPError as err:
                    stats["errors"].append(f"{type(err).__name__}: {err}")
                    continue
                if latency is not None:
                    latencies.append(latency)
                    if time.perf_counter() <= deadline:
                        images_in_window += body["n"]

        await asyncio.gather(*(worker(k) for k in range(clients)))
        wall = time.perf_counter() - start
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {"images": images_in_window,
            "images_per_second": round(images_in_window / duration_seconds, 3),
            "requests_completed": len(latencies), "wall_seconds_with_drain": round(wall, 2),
            "latency_p50_seconds": round(float(q[0]), 3),
            "latency_p95_seconds": round(float(q[1]), 3),
            "latency_p99_seconds": round(float(q[2]), 3),
            "http_429": stats["http_429"], "errors": len(stats["errors"]),
            "error_samples": stats["errors"][:5],
            "mean_batch_images": round(float(np.mean(stats["batch_sizes"])), 2)
            if stats["batch_sizes"] else None}


async def warm_up(url: str, num_requests: int, prompts: list[str], body_extra: dict) -> None:
    """A few concurrent requests first: text encodings, allocator and thread pools warm."""
    stats: dict[str, Any] = {"http_429": 0, "errors": [], "batch_sizes": []}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(one_generation(client, {"prompt": prompts[k], "seed": k, "n": 1,
                                                       **body_extra}, stats)
                               for k in range(num_requests)))
    if stats["errors"]:
        raise RuntimeError(f"warm-up failed: {stats['errors'][:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="model folder (default: the shipped one, as `pictor generate`)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration-seconds", type=float, default=60.0)
    parser.add_argument("--warmup-requests", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", default="off,exact,fast",
                        help=f"comma-separated subset of {list(MODES)}")
    parser.add_argument("--server-args", default="",
                        help="extra `pictor serve` arguments, e.g. '--max-queued-jobs 8'")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--update-markdown", action="store_true",
                        help="also write the table into BENCHMARKS.md")
    args = parser.parse_args()
    if args.model is None:
        from pictor.cli.generate import default_model_dir

        args.model = str(default_model_dir())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")
    prompts = prompt_pool()
    body_extra = {"steps": args.steps}
    env_before = environment()
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        server = Server(args.model, MODES[mode], args.server_args.split())
        try:
            server.wait_ready()
            asyncio.run(warm_up(server.url, args.warmup_requests, prompts, body_extra))
            mem_start = memory_mib(server.proc.pid)
            r = asyncio.run(load(server.url, args.clients, args.duration_seconds, prompts,
                                 body_extra, seed=2))
            mem_end = memory_mib(server.proc.pid)
            health = httpx.get(server.url + "/healthz", timeout=10).json()
        finally:
            server.stop()
        r |= {"rss_mib_start": mem_start["VmRSS"], "rss_mib_end": mem_end["VmRSS"],
              "rss_mib_peak": mem_end["VmHWM"], "healthz_after": health}
        results[mode] = r
        print(f"{mode}: {json.dumps(r)}", flush=True)
    off = results.get("off", {}).get("images_per_second")
    for r in results.values():
        r["throughput_vs_off"] = round(r["images_per_second"] / off, 2) if off else None
    env_after = environment()
    rows = [[mode, f"{r['images_per_second']:.2f}", r["throughput_vs_off"] or "-",
             r["mean_batch_images"] or "-", f"{r['latency_p50_seconds']:.1f}",
             f"{r['latency_p95_seconds']:.1f}", f"{r['latency_p99_seconds']:.1f}", r["errors"],
             r["http_429"],
             f"{r['rss_mib_start']:.0f} / {r['rss_mib_end']:.0f}"]
            for mode, r in results.items()]
    table = markdown_table(["batching", "images/s", "vs off", "mean batch (images)",
                            "p50 s", "p95 s", "p99 s", "errors", "429s",
                            "server RSS MiB start / end"], rows)
    body = (f"`pictor serve` under load: {args.clients} concurrent clients for "
            f"{args.duration_seconds:.0f} s per batching mode on loopback, each looping POST -> "
            f"server-sent events to `done` -> GET PNG; `{Path(args.model).name}`, "
            f"{args.steps} steps dpm++2m, n=1, prompts from all six shapes categories; "
            f"{env_before['cpu']} x {env_before['cpu_count']}, 1-min load average "
            f"{env_before['load_average_1min']:.1f} before, {env_after['load_average_1min']:.1f} "
            f"after. Latency: POST sent -> PNG received. 429s are intended back-pressure (the "
            f"client waits Retry-After); errors are anything else. off: one job per sampler "
            f"call; exact: micro-batches, images bit-identical to solo calls; fast: one network "
            f"call per batch (`--fast-batching`). Written by `benchmarks/serve_load.py` "
            f"({env_before['date_utc']}; raw: `benchmarks/results/{NAME}.json`).\n\n" + table)
    print()
    print(body)
    if args.no_write:
        return
    data = {"settings": vars(args) | {"prompts": "shapes-world, 6 categories, 200 prompts"},
            "environment": env_before,
            "load_average_1min_after": env_after["load_average_1min"],
            "results": results}
    print(f"\nwrote {write_json(NAME, data)}")
    if args.update_markdown:
        update_markdown_section(NAME, body)


if __name__ == "__main__":
    main()
