"""The guarded runner of the per-record transform, on real forked processes: a call that hangs,
crashes or allocates too much costs its own item only, with the reason, and every other item's
result comes back in order."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pictor.data.isolation import decode_row, encode_row, run_isolated


def work(item: int) -> dict:
    if item == 2:
        os.kill(os.getpid(), signal.SIGSEGV)  # a decoder bug
    if item == 4:
        time.sleep(3600)  # a read on a stalled mount
    if item == 5:
        os._exit(3)  # a library that calls exit()
    if item == 6:
        bytearray(512 * 2**20)  # 512 MiB, over the 64 MiB budget
    return {"item": item, "value": f"done {item}", "reason": None, "detail": None}


def failed(item: int, reason: str, detail: str) -> dict:
    return {"item": item, "value": None, "reason": reason, "detail": detail}


def fragile(item: int) -> dict:
    try:
        return work(item)
    except MemoryError:
        return failed(item, "out_of_memory", "MemoryError")


@pytest.mark.timeout(60)
def test_each_failure_costs_its_own_item_only():
    start = time.monotonic()
    rows = run_isolated(list(range(8)), fragile, failed, timeout_seconds=1.5,
                        memory_bytes=64 * 2**20)
    elapsed = time.monotonic() - start
    assert [r["item"] for r in rows] == list(range(8))
    outcome = {r["item"]: r["reason"] for r in rows}
    assert outcome == {0: None, 1: None, 2: "worker_crashed", 3: None, 4: "timeout", 5:
                       "worker_crashed", 6: "out_of_memory", 7: None}
    assert "SIGSEGV" in rows[2]["detail"] and "status 3" in rows[5]["detail"]
    assert "1.5 s" in rows[4]["detail"]
    assert rows[7]["value"] == "done 7"
    assert elapsed < 20  # one timeout of 1.5 s, not one per remaining item


def test_parent_memory_is_untouched_by_the_limit():
    # the limit applies to the child only: the parent can still allocate past it afterwards
    run_isolated([0], fragile, failed, timeout_seconds=10, memory_bytes=2**20)
    assert len(bytearray(64 * 2**20)) == 64 * 2**20


def test_rows_cross_the_pipe_unchanged():
    row = {"key": "a\nb \ud800", "image": b"\x00\xff" * 1000, "width": 64, "none": None,
           "empty": b"", "caption": "ünï 🙂", "ratio": 0.5, "ok": True}
    frame = encode_row(row)
    assert decode_row(frame[8:]) == row and list(decode_row(frame[8:])) == list(row)
