"""FairLock: a lock granted in the order it was asked for (a ticket lock).

The workers of a server's models share one lock so that one batch runs at a time
(pictor.serving.models). threading.Lock makes no promise of order: a worker that releases it
and asks again at once (its queue is never empty under load) can win it back before a waiting
worker wakes, so one busy model could starve the others. With tickets, a worker that asks while
another's batch runs is served before that worker's next batch.
"""

from __future__ import annotations

import threading


class FairLock:
    """`with lock:` as with threading.Lock, but waiting threads get it first come, first
    served. Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0  # the ticket the next caller draws
        self._serving = 0  # the ticket that holds the lock (== _next_ticket: it is free)

    def __enter__(self) -> FairLock:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def waiting(self) -> int:
        """Threads waiting for the lock (not counting its holder)."""
        with self._cond:
            return max(0, self._next_ticket - self._serving - 1)
