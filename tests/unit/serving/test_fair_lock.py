"""FairLock hands the lock to waiting threads in the order they asked for it (what keeps one
busy model's worker from starving another's), observed with real threads: each waiter is
started only once the previous one is seen waiting, so the order asked is known."""

from __future__ import annotations

import threading

from pictor.serving.fair_lock import FairLock


def wait_until(predicate, timeout_seconds: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_seconds / 0.005)):
        if predicate():
            return
        done.wait(0.005)
    raise TimeoutError("condition not reached")


def test_waiters_get_the_lock_first_come_first_served():
    lock, order = FairLock(), []

    def take(name: str) -> None:
        with lock:
            order.append(name)

    threads = []
    lock.__enter__()  # held: every thread below waits
    for count, name in enumerate(["c", "a", "b", "a2"], start=1):
        threads.append(threading.Thread(target=take, args=(name,)))
        threads[-1].start()
        wait_until(lambda count=count: lock.waiting() == count)
    lock.__exit__(None, None, None)
    # the holder asks again at once, as a busy worker does: it comes after the four waiters
    # (threading.Lock would most often hand it straight back)
    take("holder again")
    for t in threads:
        t.join(30)
    assert order == ["c", "a", "b", "a2", "holder again"]
    assert lock.waiting() == 0
