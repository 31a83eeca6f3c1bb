"""One activity for many targets (a fleet's aliases, its verdict tags): the same work for each item,
``at_once`` at a time in threads, heartbeating as items finish.

An item whose work fails for good (a non-retryable ``ApplicationError``: a function not found) is
that item's answer, ``Failed``, and the others go on, so the workflow knows exactly which items were
done. Anything else (throttling, a dropped connection) fails the whole activity once every item in
flight has finished, so Temporal retries it; the work given here must therefore be idempotent.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

I = TypeVar("I")
R = TypeVar("R")

AT_ONCE = 16  # items worked on at the same time when the caller does not say
MOST_AT_ONCE = 64  # threads of one batch activity at most (the worker's boto3 pools leave room for them)


class Failed(BaseModel):
    """One item's failure that a retry will not fix: its message and error type."""

    error: str
    type: str = ""


def each(items: Sequence[I], work: Callable[[I], R], at_once: int = AT_ONCE,
         label: Callable[[I], str] = str) -> list[R | Failed]:
    """``work(item)`` for every item, in order of ``items``; see the module docstring."""
    results: list[R | Failed | None] = [None] * len(items)
    retry: BaseException | None = None
    with ThreadPoolExecutor(max(1, min(at_once, MOST_AT_ONCE, len(items) or 1))) as pool:
        # each thread runs in a copy of this activity's context (activity.info(), its logger)
        futures: dict[Future, int] = {pool.submit(contextvars.copy_context().run, work, item): i
                                      for i, item in enumerate(items)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=5, return_when=FIRST_COMPLETED)
            for f in done:
                i = futures[f]
                try:
                    results[i] = f.result()
                except ApplicationError as e:
                    if not e.non_retryable:
                        retry = retry or e
                        continue
                    results[i] = Failed(error=e.message, type=e.type or "")
                except Exception as e:  # noqa: BLE001 (retried as a whole; every item is idempotent)
                    retry = retry or e
            if activity.in_activity():
                activity.heartbeat(f"{sum(r is not None for r in results)} of {len(items)} done"
                                   + (f", last {label(items[futures[next(iter(done))]])}" if done else ""))
    if retry is not None:
        raise retry
    return results  # type: ignore[return-value]
