"""Crash: the worker process is killed (SIGKILL) mid-rollback and a new one is started.

The worker runs as a real subprocess (``python worker.py``, as ``make run`` / the container
runs it) against the real Temporal dev server and the moto server of this pytest process,
whose call counter proves that every intended AWS change was applied exactly once.

Two kills land while the workflow waits on a timer (between two gradual steps, and in the
monitoring window); the third lands inside a long, heartbeating activity (a large S3 sync),
whose retry on the new worker resumes from the last heartbeat.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from common.models import RollbackStatus, ServiceRollbackInput
from sandbox import aws_env
from tests.conftest import Aws, FAST_POLICY, id_token, write_catalog
from tests.helpers import new_id, running_revision, wait_for
from tests.support import prefork
from workflows.service import ServiceRollback

if TYPE_CHECKING:  # imported at run time, pytest would try to collect the class
    from tests.conftest import RunCatalog

ROOT = Path(__file__).resolve().parent.parent


def worker_env(dev_env, aws: Aws, catalog: "RunCatalog", task_queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TEMPORAL_", "ROLLBACK_", "AWS_"))}
    env.update(aws_env(aws.endpoint_url))
    env.update({
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": "default",
        "ROLLBACK_AWS": "real",
        "ROLLBACK_CATALOG": str(catalog.path),
        "ROLLBACK_TASK_QUEUE": task_queue,
        "ROLLBACK_METRICS_PORT": "0",
        "ROLLBACK_LOG_FORMAT": "json",
    })
    return env


@pytest.fixture()
def spawn_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen]]:
    """Start ``python worker.py`` subprocesses; every one is killed at teardown, whatever happened."""
    procs: list[subprocess.Popen] = []

    def spawn(env: dict[str, str]) -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(procs) + 1}.log", "wb")
        proc = prefork.spawn_worker(env, stdout=log.fileno(), stderr=log.fileno())  # as Popen(start_new_session=True)
        log.close()  # the child holds its own descriptor
        procs.append(proc)
        return proc

    try:
        yield spawn
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


def listener_weights(aws: Aws) -> dict[str, int]:
    listener = aws.client("elbv2").describe_listeners(ListenerArns=[aws.fleet.listener_arn])["Listeners"][0]
    groups = listener["DefaultActions"][0]["ForwardConfig"]["TargetGroups"]
    return {g["TargetGroupArn"]: g["Weight"] for g in groups}


def log_of(tmp_path: Path, n: int) -> str:
    path = tmp_path / f"worker-{n}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


async def result_of(handle, tmp_path: Path, timeout: float) -> RollbackStatus:
    try:
        return await asyncio.wait_for(handle.result(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"the rollback did not finish within {timeout:g}s after the restart; "
                             f"second worker's log:\n{log_of(tmp_path, 2)}") from None


async def test_kill_between_gradual_steps_then_restart_applies_each_change_once(
        dev_env, aws, tmp_path, spawn_worker):
    # 9 s between the 50% and the 100% step: time to kill the worker while it waits.
    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "gradual_step_wait_minutes": 0.15})
    env = worker_env(dev_env, aws, catalog, task_queue=f"tq-crash-{uuid.uuid4().hex[:8]}")
    first = spawn_worker(env)
    handle = await dev_env.client.start_workflow(
        ServiceRollback.run,
        ServiceRollbackInput(service=catalog.api_bg, severity="SEV-2", requested_by="dana", id_token=id_token("dana"),
                             reason="error rate after v1.2.3", rollout_percentages=[50, 100],
                             monitor_minutes=0.1),
        id=new_id("crash-bg"), task_queue=env["ROLLBACK_TASK_QUEUE"])

    s = await wait_for(handle, lambda s: s.extra.get("rollout_percentage") == 50, timeout=30,
                       what="traffic at 50%")
    assert s.phase.value == "rolling_back"
    sigkill(first)
    blue, green = aws.fleet.blue_target_group_arn, aws.fleet.green_target_group_arn
    assert listener_weights(aws) == {blue: 50, green: 50}
    assert aws.faults.calls["ModifyListener"] == 1
    assert aws.faults.calls["UpdateService"] == 1

    await asyncio.sleep(1)
    spawn_worker(env)
    result = await result_of(handle, tmp_path, timeout=35)

    assert result.phase.value == "succeeded", result.message
    assert listener_weights(aws) == {blue: 0, green: 100}
    assert running_revision(aws, "api-service-green") == (42, "v1.2.2")
    assert running_revision(aws, "api-service-blue") == (43, "v1.2.3")  # the live side is left alone
    # each intended change was applied once: the standby side redeployed, 50%, then 100%
    assert aws.faults.calls["UpdateService"] == 1
    assert aws.faults.calls["ModifyListener"] == 2
    assert [e.what for e in result.events if e.what.startswith("traffic:")] == [
        "traffic: 50% on v1.2.2 (api-service-green)", "traffic: 100% on v1.2.2 (api-service-green)"]
    execute = next(st for st in result.steps if st.name == "Execute rollback")
    assert execute.state.value == "succeeded" and "[50, 100]" in execute.detail


async def test_kill_while_monitoring_then_restart_finishes_without_redeploying(
        dev_env, aws, tmp_path, spawn_worker):
    # Checks every 6 s for 18 s: the kill lands in the first wait, so every check is the new worker's.
    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "monitor_interval_minutes": 0.1})
    env = worker_env(dev_env, aws, catalog, task_queue=f"tq-crash-{uuid.uuid4().hex[:8]}")
    first = spawn_worker(env)
    handle = await dev_env.client.start_workflow(
        ServiceRollback.run,
        ServiceRollbackInput(service=catalog.api, severity="SEV-2", requested_by="dana", id_token=id_token("dana"),
                             reason="error rate after v1.2.3", monitor_minutes=0.3),
        id=new_id("crash-mon"), task_queue=env["ROLLBACK_TASK_QUEUE"])

    await wait_for(handle, lambda s: s.phase.value == "monitoring", timeout=30, what="monitoring")
    sigkill(first)
    assert running_revision(aws) == (42, "v1.2.2")
    assert aws.faults.calls["UpdateService"] == 1

    await asyncio.sleep(1)
    started = time.monotonic()
    spawn_worker(env)
    result = await result_of(handle, tmp_path, timeout=35)

    assert result.phase.value == "succeeded", result.message
    assert running_revision(aws) == (42, "v1.2.2")
    assert aws.faults.calls["UpdateService"] == 1  # the restart did not deploy again
    monitor = next(st for st in result.steps if st.name == "Monitor post-rollback")
    assert monitor.state.value == "succeeded"
    # The window is wall-clock time: the round due while no worker ran is made late, not twice.
    rounds = int(monitor.detail.split(" round(s)")[0].rsplit(" ", 1)[1])
    assert rounds in (2, 3) and "no regression" in monitor.detail, monitor.detail
    assert (monitor.ended_at - monitor.started_at).total_seconds() >= 18
    assert all(c.ok for c in result.checks)
    assert time.monotonic() - started < 35
    assert_json_logs_with_context(log_of(tmp_path, 2))


def assert_json_logs_with_context(log: str) -> None:
    """The worker logs JSON lines (structlog) carrying the workflow and activity they come from."""
    import json

    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines, f"no JSON log lines in:\n{log[-2000:]}"
    activity_lines = [e for e in lines if e.get("activity_type")]
    assert activity_lines, "no log line names its activity"
    assert all(e.get("workflow_id") and e.get("run_id") for e in activity_lines)
    assert all({"timestamp", "level", "event"} <= e.keys() for e in lines)


async def test_kill_during_a_large_sync_resumes_from_the_heartbeat(dev_env, aws, tmp_path, spawn_worker):
    from concurrent.futures import ThreadPoolExecutor

    from common.models import FrontendRollbackInput
    from sandbox.frontend_fleet import SITE_BUCKET, VERSIONS_BUCKET
    from workflows.frontend import FrontendRollback

    n = 1000  # ten heartbeats of 100; the kill lands after four or more (CopyObject >= 400)
    s3 = aws.client("s3")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=VERSIONS_BUCKET, Key=f"v9.9.9/assets/{i:05d}.js",
                                              Body=f"// asset {i}".encode()), range(n)))
    s3.put_object(Bucket=VERSIONS_BUCKET, Key="v9.9.9/index.html", Body=b"<h1>rastup v9.9.9</h1>")
    catalog = write_catalog(tmp_path, aws, FAST_POLICY)
    env = worker_env(dev_env, aws, catalog, task_queue=f"tq-sync-{uuid.uuid4().hex[:8]}")
    first = spawn_worker(env)
    handle = await dev_env.client.start_workflow(
        FrontendRollback.run,
        FrontendRollbackInput(site=catalog.name("web"), strategy="release_sync", to_release="v9.9.9",
                              severity="SEV-2", requested_by="dana", id_token=id_token("dana"), reason="large release",
                              monitor_minutes=0.05),
        id=new_id("crash-sync"), task_queue=env["ROLLBACK_TASK_QUEUE"])
    deadline = time.monotonic() + 60
    while aws.faults.calls["CopyObject"] < 400:
        assert time.monotonic() < deadline, f"the sync did not start; worker log:\n{log_of(tmp_path, 1)}"
        await asyncio.sleep(0.05)
    sigkill(first)
    copied_before_kill = aws.faults.calls["CopyObject"]
    assert copied_before_kill < n  # killed mid-sync

    spawn_worker(env)
    result = await result_of(handle, tmp_path, timeout=90)
    assert result.phase.value == "succeeded", result.message
    live = {o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=SITE_BUCKET)
            for o in p.get("Contents", [])}
    assert live == {f"assets/{i:05d}.js" for i in range(n)} | {"index.html"}
    assert result.extra["applied"]["resumed_after"]  # the retry started from the last heartbeat
    # not started over: at most the chunk in flight at the kill is copied twice
    assert aws.faults.calls["CopyObject"] <= n + 1 + 100
