"""Activity options in one place: retried with backoff on transient errors, bounded in time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

from workflows import changes

T = TypeVar("T")

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["AccessDenied", "AwsRequestError", "AwsConfigError", "NotFound",
                               "CatalogError", "InvalidRequest"],
)

# An AWS call or a poll: retried for up to 10 minutes, then the step fails. Each attempt is
# short, so an attempt lost with a crashed worker is retried after 30 s, not minutes.
DEFAULT: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(minutes=10),
    heartbeat_timeout=None,
    retry_policy=RETRY,
)
# A check: its answer is wanted now; a failed check is a result, not a retry loop.
QUICK: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(minutes=2),
    retry_policy=RETRY,
)
# A long, heartbeating job (copying a site): a lost worker is noticed within 15 s and the
# retry resumes from the last heartbeat.
LONG: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(hours=2),
    heartbeat_timeout=timedelta(seconds=15),
    retry_policy=RETRY,
)
# One activity for many calls (the locks or verdict tags of a 1000-function fleet): heartbeats as it goes.
BATCH: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=timedelta(seconds=30),
    retry_policy=RETRY,
)
# A check over a whole fleet (every alias read in one activity): a result soon, as QUICK, with heartbeats.
BATCH_CHECK: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=2),
    schedule_to_close_timeout=timedelta(minutes=4),
    heartbeat_timeout=timedelta(seconds=30),
    retry_policy=RETRY,
)
# A notification: tried a few times, then recorded as failed; never blocks a rollback.
NOTIFY: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=20),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
)

# Checking a proof (activities/identity.py): a person waits for the answer, so a short retry of an
# unreachable identity provider, then the decision is refused saying so.
VERIFY: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=15),
    schedule_to_close_timeout=timedelta(seconds=45),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5),
                             non_retryable_error_types=["CatalogError"]),
)


async def call(fn: Callable[..., Any], arg: Any = None, *, options: dict[str, Any] | None = None) -> Any:
    """Run an activity (function or method of an activity class) with shared options.

    A change (``workflows.changes.CHANGES``) never starts after a cancel and is recorded in the
    status; any activity interrupted by a cancel raises ``CancelledError`` (see workflows/changes.py).
    """
    opts = options or DEFAULT
    args = [] if arg is None else [arg]

    def start() -> "workflow.ActivityHandle[Any]":
        if "." in fn.__qualname__:  # a method of an activities class
            return workflow.start_activity_method(fn, args=args, **opts)
        return workflow.start_activity(fn, args=args, **opts)

    try:
        if fn.__name__ in changes.CHANGES:
            return await changes.make(fn.__name__, arg, start)
        return await start()
    except FailureError as e:
        converted = changes.cancelled(e)
        if converted is e:
            raise
        raise converted from e


# A short read the next step waits for (the catalog entry, what ECS runs, a proof): a local activity,
# run by the worker running the workflow, so no task-queue round trip and no extra workflow task.
LOCAL: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(minutes=10),
    retry_policy=RETRY,
)


async def read(fn: Callable[..., Any], arg: Any = None, *, options: dict[str, Any] | None = None) -> Any:
    """Run a read-only activity (never a change) as a local activity, with ``LOCAL`` options."""
    opts = options or LOCAL
    args = [] if arg is None else [arg]
    try:
        if "." in fn.__qualname__:
            return await workflow.execute_local_activity_method(fn, args=args, **opts)
        return await workflow.execute_local_activity(fn, args=args, **opts)
    except FailureError as e:
        converted = changes.cancelled(e)
        if converted is e:
            raise
        raise converted from e
