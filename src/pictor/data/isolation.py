"""Run the per-record transform where a hostile record can only hurt itself.

A record can hang its worker (a decoder stuck in C code, a read on a stalled network mount),
kill it (a decoder bug that segfaults, the kernel's OOM killer) or grow it past what the machine
has (a decompression bomb under max_pixels). Caught in-process, the first two stop a job and
lose every good record of it; the third takes the machine. So both engines (the local process
pool and Spark's mapInArrow) prepare records in a forked child process:

- **memory**: the child's address space may grow at most `memory_bytes` beyond what it
  inherited (RLIMIT_AS); past it allocations fail (MemoryError: the record is `out_of_memory`)
  or the child dies (below). Peak memory per worker is thus bounded by its size before the
  fork + memory_bytes.
- **time**: the child sends each finished record back at once; when no record has come back
  for `timeout_seconds` the child is killed (SIGKILL) and the record it was on is `timeout`.
- **death**: when the child dies before sending every record, the record it was on is
  `worker_crashed` with how it died (signal or exit status).

In every case the records after the culprit go to a new child, so a job loses exactly the
records that failed, each with a reason. Results come back over a pipe, one frame per record:
a JSON header of its scalar fields followed by its bytes fields raw (no pickle; and no Arrow in
the child: the first Arrow call after a fork costs ~350 ms, which made a 64-record batch cost
twice its work). Without os.fork (Windows) the transform runs in-process, unguarded.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import select
import signal
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

_LENGTH = struct.Struct("<Q")
_READ_BYTES = 1 << 20
_CHILD_FAILED = 70  # exit status of a child whose own code raised (EX_SOFTWARE)


def _address_space_bytes() -> int:
    """This process's current virtual memory size (Linux /proc; 0 when unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _limit_memory(memory_bytes: int) -> None:
    current = _address_space_bytes()
    if current == 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + memory_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or limit < soft:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def encode_row(row: dict[str, Any]) -> bytes:
    """A row of JSON scalars (str, int, float, bool, None) and bytes as one frame: header
    length, JSON header (the scalars, and the bytes fields' names and lengths in order), the
    bytes fields concatenated."""
    blobs = [(k, bytes(v)) for k, v in row.items() if isinstance(v, (bytes, bytearray))]
    header = json.dumps({"fields": {k: v for k, v in row.items()
                                    if not isinstance(v, (bytes, bytearray))},
                         "blobs": [[k, len(v)] for k, v in blobs],
                         "order": list(row)}).encode("utf-8")
    body = _LENGTH.pack(len(header)) + header + b"".join(v for _, v in blobs)
    return _LENGTH.pack(len(body)) + body


def decode_row(body: bytes) -> dict[str, Any]:
    """The row of an encode_row frame's body (the frame without its leading length)."""
    (size,) = _LENGTH.unpack_from(body)
    header = json.loads(body[_LENGTH.size:_LENGTH.size + size])
    values = dict(header["fields"])
    offset = _LENGTH.size + size
    for key, length in header["blobs"]:
        values[key] = body[offset:offset + length]
        offset += length
    return {k: values[k] for k in header["order"]}


def _child(items: list[Any], fn: Callable[[Any], dict[str, Any]], memory_bytes: int,
           fd: int) -> None:
    """Runs in the forked child; never returns."""
    status = _CHILD_FAILED
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent handles Ctrl-C
        faulthandler.disable()  # a crash is reported as the record's detail, not a dump
        _limit_memory(memory_bytes)
        for item in items:
            _write_all(fd, encode_row(fn(item)))
        status = 0
    except BaseException:
        traceback.print_exc()  # a bug of ours, not of the record: say where
    finally:
        os._exit(status)  # no atexit handlers, no buffers of the parent flushed twice


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
        hint = " (the kernel's OOM killer sends SIGKILL)" if sig == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _run_child(items: list[Any], fn: Callable[[Any], dict[str, Any]], timeout_seconds: float,
               memory_bytes: int) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """(results of a prefix of `items`, None or (reason, detail) for the item after it)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(items, fn, memory_bytes, write_fd)
    os.close(write_fd)
    results: list[dict[str, Any]] = []
    buffer = bytearray()
    failure: tuple[str, str] | None = None
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(remaining, 0.0))
            if not ready:
                if remaining > 0:
                    continue
                os.kill(pid, signal.SIGKILL)
                failure = ("timeout", f"no result within {timeout_seconds:g} s "
                           "(record_timeout_seconds); its process was killed")
                break
            chunk = os.read(read_fd, _READ_BYTES)
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer)
                if len(buffer) < _LENGTH.size + size:
                    break
                results.append(decode_row(bytes(buffer[_LENGTH.size:_LENGTH.size + size])))
                del buffer[:_LENGTH.size + size]
                deadline = time.monotonic() + timeout_seconds
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    if failure is None and len(results) < len(items):
        failure = ("worker_crashed", f"the process preparing it {_describe(status)}")
    return results, failure


def run_isolated(items: list[Any], fn: Callable[[Any], dict[str, Any]],
                 failed: Callable[[Any, str, str], dict[str, Any]], *,
                 timeout_seconds: float, memory_bytes: int) -> list[dict[str, Any]]:
    """[fn(item) for item in items], each call guarded (see the module docstring).

    fn returns a dict of JSON scalars and bytes (encode_row); failed(item, reason, detail) makes
    the row of an item whose call hung or crashed (reason "timeout" or "worker_crashed").
    """
    if not items:
        return []
    if not hasattr(os, "fork"):
        return [fn(item) for item in items]
    out: list[dict[str, Any]] = []
    start = 0
    while start < len(items):
        results, failure = _run_child(items[start:], fn, timeout_seconds, memory_bytes)
        out.extend(results)
        start += len(results)
        if failure is not None:
            out.append(failed(items[start], *failure))
            start += 1
    return out
