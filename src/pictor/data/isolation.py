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
records that failed, each with a reason. Results come back over a pipe as Arrow IPC messages
(one record batch per record): no pickle, and the parent never parses more than the schema
allows. Without os.fork (Windows) the transform runs in-process, unguarded.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import select
import signal
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

import pyarrow as pa

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


def _child(items: list[Any], fn: Callable[[Any], dict[str, Any]], schema: pa.Schema,
           memory_bytes: int, fd: int) -> None:
    """Runs in the forked child; never returns."""
    status = _CHILD_FAILED
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent handles Ctrl-C
        faulthandler.disable()  # a crash is reported as the record's detail, not a dump
        _limit_memory(memory_bytes)
        for item in items:
            message = pa.RecordBatch.from_pylist([fn(item)], schema=schema).serialize()
            _write_all(fd, _LENGTH.pack(message.size) + message.to_pybytes())
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


def _run_child(items: list[Any], fn: Callable[[Any], dict[str, Any]], schema: pa.Schema,
               timeout_seconds: float,
               memory_bytes: int) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """(results of a prefix of `items`, None or (reason, detail) for the item after it)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(items, fn, schema, memory_bytes, write_fd)
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
                message = pa.py_buffer(bytes(buffer[_LENGTH.size:_LENGTH.size + size]))
                del buffer[:_LENGTH.size + size]
                results.extend(pa.ipc.read_record_batch(message, schema).to_pylist())
                deadline = time.monotonic() + timeout_seconds
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    if failure is None and len(results) < len(items):
        failure = ("worker_crashed", f"the process preparing it {_describe(status)}")
    return results, failure


def run_isolated(items: list[Any], fn: Callable[[Any], dict[str, Any]], schema: pa.Schema,
                 failed: Callable[[Any, str, str], dict[str, Any]], *,
                 timeout_seconds: float, memory_bytes: int) -> list[dict[str, Any]]:
    """[fn(item) for item in items], each call guarded (see the module docstring).

    fn returns a dict over `schema`; failed(item, reason, detail) makes the row of an item whose
    call hung or crashed (reason "timeout" or "worker_crashed").
    """
    if not items:
        return []
    if not hasattr(os, "fork"):
        return [fn(item) for item in items]
    out: list[dict[str, Any]] = []
    start = 0
    while start < len(items):
        results, failure = _run_child(items[start:], fn, schema, timeout_seconds, memory_bytes)
        out.extend(results)
        start += len(results)
        if failure is not None:
            out.append(failed(items[start], *failure))
            start += 1
    return out
