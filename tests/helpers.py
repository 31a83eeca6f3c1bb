"""Small helpers for workflow tests: wait for a phase, read what ECS runs."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle

from common.models import RollbackStatus
from sandbox.metrics import put_datapoints


async def status_of(handle: WorkflowHandle) -> RollbackStatus | None:
    return await handle.query("status", result_type=RollbackStatus)


async def wait_for(handle: WorkflowHandle, predicate, timeout: float = 30, what: str = "condition") -> RollbackStatus:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await status_of(handle)
        except Exception:  # not started yet
            last = None
        if last is not None and predicate(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last status: "
                         f"{last.model_dump_json(indent=1) if last else None}")


async def wait_phase(handle: WorkflowHandle, phase: str, timeout: float = 30) -> RollbackStatus:
    return await wait_for(handle, lambda s: s.phase.value == phase, timeout, f"phase {phase}")


async def no_pending_activities(handle: WorkflowHandle, timeout: float = 30) -> None:
    """Wait until the run has no activity in flight (e.g. the approval request posted beside the wait).
    Before a cancel on the time-skipping server: cancelling an activity in flight there can answer
    ACTIVITY_UNKNOWN and leave the run hanging (temporalio/sdk-java#2391; the dev server is fine, and
    tests/test_cancel.py cancels mid-announcement there)."""
    deadline = time.monotonic() + timeout
    while True:  # idle: no activity in flight and no workflow task pending (which could schedule one now)
        d = (await handle.describe()).raw_description
        if not d.pending_activities and not d.HasField("pending_workflow_task"):
            return
        assert time.monotonic() < deadline, f"activities still in flight after {timeout:g} s"
        await asyncio.sleep(0.1)


async def cancel_when_idle(handle: WorkflowHandle, *also: WorkflowHandle, timeout: float = 60) -> None:
    """Cancel once the run (and ``also``: its children, say) is idle, then wait at most ``timeout`` for it
    to end cancelled. The idle wait is for the time-skipping server (see no_pending_activities); the
    timeout makes a run stranded there a failure that says so, not a test that never ends."""
    for run in (*also, handle):
        await no_pending_activities(run)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout)


async def signal_when_idle(handle: WorkflowHandle, name: str, arg: object, timeout: float = 60) -> object:
    """Send signal ``name`` once the run is idle, as cancel_when_idle cancels; the run's result (at most
    ``timeout`` away)."""
    await no_pending_activities(handle)
    await handle.signal(name, arg)
    return await asyncio.wait_for(handle.result(), timeout)


def replayer():
    """A Replayer for the worker's workflows, as the worker runs them (sandbox, data converter)."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Replayer

    from worker import WORKFLOW_RUNNER, WORKFLOWS

    return Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter, workflow_runner=WORKFLOW_RUNNER)


async def replay_failure(handle: WorkflowHandle) -> Exception | None:
    """What a restarted worker meets when it picks this run up again: its history replayed on the current
    workflow code (None: it replays; otherwise the run would be wedged, e.g. TMPRL1100 nondeterminism)."""
    result = await replayer().replay_workflow(await handle.fetch_history(), raise_on_replay_failure=False)
    return result.replay_failure


def running_revision(aws, service: str = "api-service") -> tuple[int, str]:
    ecs = aws.client("ecs")
    svc = ecs.describe_services(cluster="rastup-prod", services=[service])["services"][0]
    td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    return td["revision"], td["containerDefinitions"][0]["image"].rsplit(":", 1)[1]


def new_id(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def failure_text(excinfo) -> str:
    """Every message in a workflow failure's cause chain, joined: what a person would read."""
    e, parts = excinfo.value, []
    while e is not None:
        parts.append(str(e))
        e = getattr(e, "cause", None) or e.__cause__
    return " | ".join(parts)


def stop_gently(proc: subprocess.Popen) -> None:
    """Ctrl-C a process we started (so it stops what it started), then SIGKILL if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def bad_metric(aws, namespace: str, metric: str, value: float, dimensions: dict[str, str],
               unit: str = "Percent", points: int = 18) -> None:
    """A version that is bad in every minute of a check's window: a datapoint every 20 s for the last six
    minutes. One bad datapoint among the fleet's healthy ones is noise to the Mann-Whitney judge
    (docs/verdicts.md): whether it failed a check depended on how many healthy ones a reused fleet still
    had in the window, which made tests that relied on one flaky."""
    now = datetime.now(timezone.utc)
    data = [{"MetricName": metric, "Value": value, "Unit": unit, "Timestamp": now - timedelta(seconds=20 * i),
             "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()]} for i in range(points)]
    put_datapoints(aws.client("cloudwatch"), namespace, data)
