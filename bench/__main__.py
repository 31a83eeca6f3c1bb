"""``make bench`` (``python -m bench [--repeat N] [--waiting N] [--fleet N]``): the sandbox stack on free
ports (moto + the AppConfig stand-in, the fake endpoints and identity provider, a Temporal dev server,
the worker and the alert receiver, all from this repo), then each target of issue 13:

- alert -> first change: an Alertmanager POST to the receiver until the worker's UpdateService is
  sent, against a bare script making the same AWS reads and the change;
- kill switch: start -> flag state verified, against a bare script (read, write, deploy, poll, read back);
- a Lambda fleet (200 functions): start -> every alias moved and verified, against a bare script;
- N rollbacks waiting for approval: worker process RSS, ``status`` query p50/p99, TMPRL1101 count.

Times come from a botocore hook in this process (when the mutating call is sent) and the clock;
nothing here is a test. Numbers depend on the machine and its load: the table says what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import yaml

log = logging.getLogger("bench")
MUTATING = {"UpdateService", "UpdateAlias", "CreateHostedConfigurationVersion", "StartDeployment"}
SETTLE_S = 15  # after a burst of starts, before the status queries (see waiting())


# --- what the process sends to AWS, and when ----------------------------------------------------------

class Sent:
    """A botocore hook: the monotonic time of each mutating call as it is sent (worker and bare alike)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, str]] = []

    def install(self) -> None:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call
        sent = self

        def hooked(client: Any, operation: str, params: dict) -> Any:
            if operation in MUTATING:
                sent.times.append((time.monotonic(), operation))
            return original(client, operation, params)

        BaseClient._make_api_call = hooked  # type: ignore[method-assign]

    def first_after(self, t0: float, op: str) -> float | None:
        return next((t for t, o in self.times if t >= t0 and o == op), None)


class Deadlocks(logging.Handler):
    """Counts the SDK's "potential deadlock" (TMPRL1101) reports."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "TMPRL1101" in record.getMessage() or "deadlock" in record.getMessage().lower():
            self.count += 1


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Row:
    target: str
    unit: str
    ours: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    goal: float | None = None  # ours (median, or p99 where the target says so) must be <= goal
    use_p99: bool = False
    note: str = ""

    def stat(self) -> float | None:
        if not self.ours:
            return None
        if self.use_p99:
            return sorted(self.ours)[max(0, round(0.99 * len(self.ours)) - 1)]
        return statistics.median(self.ours)


# --- the stack -------------------------------------------------------------------------------------------

class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def __aenter__(self) -> "Stack":
        from temporalio.contrib.pydantic import pydantic_data_converter
        from temporalio.testing import WorkflowEnvironment

        from common.temporal import KIND, PHASE, SEVERITY, TARGET
        from sandbox import aws_env

        from bench.sandbox_process import SandboxProcess

        self.sandbox = SandboxProcess(self.data_dir)
        self.info = self.sandbox.start()
        os.environ.update(aws_env(self.info.endpoint_url))
        self.automation_key = "bench-automation-key-" + uuid.uuid4().hex
        self.token = "bench-receiver-token-" + uuid.uuid4().hex[:12]
        os.environ["ROLLBACK_AUTOMATION_KEY"] = self.automation_key
        data = yaml.safe_load(self.info.catalog_path.read_text())
        data["policy"].update({"auto_rollback_cooldown_minutes": 0, "settle_poll_seconds": 0.5,
                               "monitor_interval_minutes": 0.05, "fleet_concurrency": 32})
        self.catalog_path = self.data_dir / "bench-catalog.yaml"
        self.catalog_data = data
        self.write_catalog()
        self.env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=_binary("temporal"), data_converter=pydantic_data_converter,
            search_attributes=[KIND, TARGET, SEVERITY, PHASE], dev_server_log_level="error")
        self.client = self.env.client
        self.task_queue = "bench-" + uuid.uuid4().hex[:6]
        from common.settings import Settings
        from worker import build_worker

        self.worker = build_worker(self.client, Settings(), self.catalog_path, task_queue=self.task_queue)
        self.worker_task = asyncio.create_task(self.worker.run())
        self.receiver_url, self._receiver = await self._receiver_up()
        return self

    def write_catalog(self) -> None:
        self.catalog_path.write_text(yaml.safe_dump(self.catalog_data, sort_keys=False))

    async def _receiver_up(self) -> tuple[str, Any]:
        from pydantic import SecretStr

        from receiver import ReceiverConfig, create_app, serve_on_a_free_port

        cfg = ReceiverConfig(task_queue=self.task_queue, catalog_path=self.catalog_path,
                             token=SecretStr(self.token), automation_key=SecretStr(self.automation_key))
        url, server, task = await serve_on_a_free_port(create_app(self.client, cfg))
        return url, (server, task)

    def token_for(self, person: str) -> str:
        from common.id_tokens import sandbox_login

        return sandbox_login(f"{self.info.http_base}/oidc", person)

    def aws(self, service: str, threads: int = 10) -> Any:
        from sandbox.fleet import client

        return client(service, self.info.endpoint_url, threads=threads)

    async def __aexit__(self, *exc: Any) -> None:
        server, task = self._receiver
        server.should_exit = True
        await task
        await self.worker.shutdown()
        await self.env.shutdown()
        self.sandbox.stop()


def _binary(name: str) -> str:
    import shutil
    import sys

    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed in this venv: run 'make install'")
    return found


async def _terminate(stack: Stack, wf_id: str) -> None:
    try:
        await stack.client.get_workflow_handle(wf_id).terminate("bench: measured")
    except Exception:  # noqa: BLE001  (already ended)
        pass


async def _end(stack: Stack, wf_id: str) -> None:
    """End a measured rollback as a person would (a cancel: it wraps up and releases its locks), so the
    next measurement starts as a real alert does, not by breaking a terminated rollback's stale lock."""
    handle = stack.client.get_workflow_handle(wf_id)
    try:
        await handle.cancel()
        await asyncio.wait_for(handle.result(), 30)
    except asyncio.TimeoutError:
        await handle.terminate("bench: measured; the cancel did not finish in 30 s")
    except Exception:  # noqa: BLE001  (cancelled, or already ended)
        pass


# --- the targets --------------------------------------------------------------------------------------

async def alert_to_first_change(stack: Stack, sent: Sent, repeat: int) -> Row:
    from sandbox.fleet import CLUSTER, FAMILY

    row = Row("alert -> first ECS change", "ms", goal=100, note="p50 <= 100 ms (p99 <= 300 ms)")
    ecs = stack.aws("ecs")
    bad = f"{FAMILY}:43"
    # the alerting system's HTTP client, made before the clock starts (Alertmanager keeps one; making an
    # httpx client costs 25-35 ms, which the first measurements counted as the orchestrator's)
    http = httpx.AsyncClient(timeout=30)
    for i in range(repeat):
        ecs.update_service(cluster=CLUSTER, service="api-service", taskDefinition=bad)
        alert = _alertmanager("api")
        t0 = time.monotonic()
        r = await http.post(f"{stack.receiver_url}/alerts/alertmanager", json=alert,
                            headers={"Authorization": f"Bearer {stack.token}"})
        first = None
        for _ in range(300):
            first = sent.first_after(t0, "UpdateService")
            if first:
                break
            await asyncio.sleep(0.01)
        if first is not None:
            row.ours.append((first - t0) * 1000)
        else:
            log.warning("alert %d: no UpdateService (receiver answered %s: %s)", i, r.status_code, r.text[:300])
        await _end(stack, "rollback-service-api")
        # the bare script: the same reads and the change, as a person would write it
        ecs.update_service(cluster=CLUSTER, service="api-service", taskDefinition=bad)
        t0 = time.monotonic()
        svc = ecs.describe_services(cluster=CLUSTER, services=["api-service"])["services"][0]
        ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])
        ecs.list_task_definitions(familyPrefix=FAMILY, status="ACTIVE")
        ecs.describe_task_definition(taskDefinition=f"{FAMILY}:42")
        ecs.update_service(cluster=CLUSTER, service="api-service", taskDefinition=f"{FAMILY}:42")
        row.bare.append((time.monotonic() - t0) * 1000)
    ecs.update_service(cluster=CLUSTER, service="api-service", taskDefinition=bad)
    await http.aclose()
    row.note += f"; p99 {_p99(row.ours):.0f} ms" if row.ours else ""
    return row


def _alertmanager(service: str) -> dict:
    starts = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    labels = {"alertname": "HighErrorRate", "service": service, "severity": "critical"}
    return {"version": "4", "groupKey": "bench", "truncatedAlerts": 0, "status": "firing",
            "receiver": "rollback-orchestrator", "groupLabels": {"alertname": "HighErrorRate"},
            "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": "firing", "labels": labels, "annotations": {"summary": "bench"},
                        "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                        "fingerprint": uuid.uuid4().hex[:16]}]}


def _p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.99 * len(xs)) - 1)]


async def kill_switch(stack: Stack, repeat: int) -> Row:
    from common.models import FeatureFlagRollbackInput
    from workflows.flags import FeatureFlagRollback

    row = Row("kill switch start -> verified", "ms", goal=500, use_p99=True, note="p99 <= 500 ms")
    ac = stack.aws("appconfig")
    for i in range(repeat):
        _set_flag(stack, False)
        req = FeatureFlagRollbackInput(flag="payments_disabled", action="kill_switch", severity="SEV-4",
                                       requested_by="dana", reason="bench", id_token=stack.token_for("dana"))
        t0 = time.monotonic()
        h = await stack.client.start_workflow(FeatureFlagRollback.run, req, id=f"bench-kill-{i}-{uuid.uuid4().hex[:4]}",
                                              task_queue=stack.task_queue)
        try:
            result = await h.result()
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"kill switch rollback failed: {getattr(e, 'cause', None) or e}") from None
        seconds = result.extra.get("seconds_to_verified")
        row.ours.append(seconds * 1000 if seconds is not None else (time.monotonic() - t0) * 1000)
        # bare: resolve names once, read, write, deploy, poll, read back
        _set_flag(stack, False)
        t0 = time.monotonic()
        _bare_kill_switch(ac, stack)
        row.bare.append((time.monotonic() - t0) * 1000)
    _set_flag(stack, False)
    return row


def _set_flag(stack: Stack, on: bool) -> None:
    _bare_kill_switch(stack.aws("appconfig"), stack, on)


def _bare_kill_switch(ac: Any, stack: Stack, on: bool = True, wait: bool = True) -> None:
    import json

    store = next(iter(stack.catalog_data["flag_stores"].values()))
    app = next(a for a in ac.list_applications()["Items"] if a["Name"] == store["application"])
    env = next(e for e in ac.list_environments(ApplicationId=app["Id"])["Items"] if e["Name"] == store["environment"])
    prof = next(p for p in ac.list_configuration_profiles(ApplicationId=app["Id"])["Items"]
                if p["Name"] == store["profile"])
    latest = max(v["VersionNumber"] for v in ac.list_hosted_configuration_versions(
        ApplicationId=app["Id"], ConfigurationProfileId=prof["Id"])["Items"])
    doc = json.loads(ac.get_hosted_configuration_version(ApplicationId=app["Id"], ConfigurationProfileId=prof["Id"],
                                                         VersionNumber=latest)["Content"].read())
    doc["values"]["payments_disabled"]["enabled"] = on
    new = ac.create_hosted_configuration_version(ApplicationId=app["Id"], ConfigurationProfileId=prof["Id"],
                                                 Content=json.dumps(doc).encode(), ContentType="application/json")
    dep = ac.start_deployment(ApplicationId=app["Id"], EnvironmentId=env["Id"], ConfigurationProfileId=prof["Id"],
                              ConfigurationVersion=str(new["VersionNumber"]),
                              DeploymentStrategyId="AppConfig.AllAtOnce")
    while wait and ac.get_deployment(ApplicationId=app["Id"], EnvironmentId=env["Id"],
                                     DeploymentNumber=dep["DeploymentNumber"])["State"] != "COMPLETE":
        time.sleep(0.05)


async def fleet(stack: Stack, size: int, repeat: int) -> Row:
    from concurrent.futures import ThreadPoolExecutor

    from common.models import LambdaRollbackInput
    from sandbox.lambda_fleet import ensure_function, use_simple_lambda
    from workflows.lambda_fn import LambdaRollback

    row = Row(f"{size}-function Lambda fleet rollback", "s", goal=10, note="<= 10 s")
    use_simple_lambda(stack.info.endpoint_url)
    lam, iam = stack.aws("lambda", threads=16), stack.aws("iam", threads=16)
    names = [f"bench-fleet-{i:04d}" for i in range(size)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: ensure_function(lam, iam, n, versions=2), names))
    stack.catalog_data["functions"] = {**stack.catalog_data.get("functions", {}),
                                       **{n: {"function_name": n} for n in names}}
    stack.write_catalog()

    def reset_aliases() -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: lam.update_alias(FunctionName=n, Name="production", FunctionVersion="2",
                                                     RoutingConfig={"AdditionalVersionWeights": {}}), names))

    for i in range(repeat):
        reset_aliases()
        req = LambdaRollbackInput(functions=names, severity="SEV-2", requested_by="dana", reason="bench",
                                  id_token=stack.token_for("dana"), monitor_minutes=0.01)
        t0 = time.monotonic()
        h = await stack.client.start_workflow(LambdaRollback.run, req, id=f"bench-fleet-{i}-{uuid.uuid4().hex[:4]}",
                                              task_queue=stack.task_queue)
        # until the rollback finishes (changed, verified, its short monitoring done, reported): polling
        # 200 aliases meanwhile would compete with it for moto and time in whole polls
        await asyncio.wait_for(h.result(), 300)
        row.ours.append(time.monotonic() - t0)
        if not _all_on(lam, names, "1"):
            row.note += f"; run {i}: finished with aliases not on the target"
        reset_aliases()
        t0 = time.monotonic()  # bare: list versions, read the alias, move it, read it back; 16 at a time

        def one(n: str) -> None:
            lam.list_versions_by_function(FunctionName=n)
            lam.get_alias(FunctionName=n, Name="production")
            lam.update_alias(FunctionName=n, Name="production", FunctionVersion="1")
            lam.get_alias(FunctionName=n, Name="production")

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, names))
        row.bare.append(time.monotonic() - t0)
    return row


def _all_on(lam: Any, names: list[str], version: str) -> bool:
    return all(lam.get_alias(FunctionName=n, Name="production")["FunctionVersion"] == version for n in names)


async def waiting(stack: Stack, count: int, deadlocks: Deadlocks) -> list[Row]:
    from common.models import RollbackStatus, ServiceRollbackInput
    from workflows.service import ServiceRollback

    from concurrent.futures import ThreadPoolExecutor

    from sandbox.fleet import CLUSTER, FAMILY

    # each its own ECS service (one rollback per resource: the same service twice would be refused)
    ecs, api = stack.aws("ecs", threads=16), stack.catalog_data["services"]["api"]
    names = [f"bench-svc-{i:04d}" for i in range(count)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: ecs.create_service(cluster=CLUSTER, serviceName=n, taskDefinition=f"{FAMILY}:43",
                                                   desiredCount=1), names))
    for n in names:
        stack.catalog_data["services"][n] = {**api, "ecs": {**api["ecs"], "service": n}}
    stack.write_catalog()
    before = rss_mb()
    ids = [f"bench-wait-{n}-{uuid.uuid4().hex[:4]}" for n in names]
    sem = asyncio.Semaphore(50)

    async def start(name: str, wf_id: str) -> None:
        async with sem:  # zoe holds no role: each waits for approval
            await stack.client.start_workflow(ServiceRollback.run, ServiceRollbackInput(
                service=name, severity="SEV-1", requested_by="zoe", reason="bench"),
                id=wf_id, task_queue=stack.task_queue)

    from common.temporal import PHASE

    t0 = time.monotonic()
    await asyncio.gather(*(start(n, i) for n, i in zip(names, ids)))
    # the target is about rollbacks in flight, waiting: measure once every one of them waits (a burst of
    # starts is a separate number: how long until all wait)
    waiting_query = f'{PHASE.name}="awaiting_approval" AND WorkflowId STARTS_WITH "bench-wait-"'
    deadline, all_waiting = t0 + max(120, count / 2), None
    while time.monotonic() < deadline:
        if (await stack.client.count_workflows(waiting_query)).count >= count:
            all_waiting = time.monotonic() - t0
            break
        await asyncio.sleep(1)
    # in flight and waiting, as people ask: the burst's last announcements and approval requests (a few
    # hundred notify activities queued behind the starts) have gone out first
    await asyncio.sleep(SETTLE_S)
    samples: list[float] = []
    failures = 0
    sem = asyncio.Semaphore(8)  # latency, not throughput: a few people and the Web UI asking at once

    async def query(wf_id: str) -> None:
        nonlocal failures
        async with sem:
            t0 = time.monotonic()
            try:
                await stack.client.get_workflow_handle(wf_id).query("status", result_type=RollbackStatus)
                samples.append((time.monotonic() - t0) * 1000)
            except Exception:  # noqa: BLE001
                failures += 1

    await asyncio.gather(*(query(random.choice(ids)) for _ in range(max(200, count))))
    after = rss_mb()
    await asyncio.gather(*(_terminate(stack, i) for i in ids))  # nothing is measured after them
    return [
        Row(f"{count} rollbacks started in a burst: all waiting", "s",
            ours=[all_waiting] if all_waiting is not None else [], goal=None,
            note="no target: from the first start until every one waits for approval"
                 + ("" if all_waiting is not None else f"; not all within {deadline - t0:.0f} s")),
        Row(f"{count} waiting rollbacks: process RSS growth", "MB", ours=[after - before], goal=500,
            note=f"<= 500 MB (worker process RSS {after:.0f} MB; the sandbox runs in its own)"),
        Row(f"{count} waiting rollbacks: status query", "ms", ours=samples, goal=100, use_p99=True,
            note=f"p99 <= 100 ms; p99 {_p99(samples):.0f} ms; {failures} failed; asked {SETTLE_S:g} s after "
                 "all waited" if samples else f"p99 <= 100 ms; {failures} failed"),
        Row(f"{count} waiting rollbacks: TMPRL1101", "count", ours=[float(deadlocks.count)], goal=0, note="zero"),
    ]


# --- the table ------------------------------------------------------------------------------------------

def render(rows: list[Row], load: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"make bench: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, load average {load}")
    for col in ("target", "N", "min", "median", "max", "bare median", "ratio", "verdict"):
        table.add_column(col, justify="left" if col in ("target", "verdict") else "right")
    for r in rows:
        if not r.ours:
            table.add_row(r.target, "0", "-", "-", "-", "-", "-", f"[red]NOT MEASURED[/red] ({r.note})")
            continue
        med = statistics.median(r.ours)
        bare = statistics.median(r.bare) if r.bare else None
        stat = r.stat()
        ok = r.goal is None or (stat is not None and stat <= r.goal)
        verdict = r.note if r.goal is None else ("[green]meets[/green]" if ok else "[red]misses[/red]") + f" {r.note}"
        fmt = (lambda x: f"{x:.0f} {r.unit}") if r.unit in ("ms", "MB", "count") else (lambda x: f"{x:.2f} {r.unit}")
        table.add_row(r.target, str(len(r.ours)), fmt(min(r.ours)), fmt(med), fmt(max(r.ours)),
                      fmt(bare) if bare is not None else "-", f"{med / bare:.2f}x" if bare else "-", verdict)
    Console(width=max(160, Console().width)).print(table)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="repetitions of the timed targets")
    parser.add_argument("--waiting", type=int, default=1000, help="rollbacks left waiting for approval")
    parser.add_argument("--fleet", type=int, default=200, help="functions in the Lambda fleet")
    parser.add_argument("--only", nargs="*", default=["alert", "kill", "fleet", "waiting"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    deadlocks = Deadlocks()
    logging.getLogger().addHandler(deadlocks)
    sent = Sent()
    sent.install()
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rollback-bench-") as tmp:
        async with Stack(Path(tmp)) as stack:
            steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("alert", lambda: alert_to_first_change(stack, sent, args.repeat)),
                ("kill", lambda: kill_switch(stack, args.repeat)),
                ("fleet", lambda: fleet(stack, args.fleet, max(1, args.repeat // 5))),
                ("waiting", lambda: waiting(stack, args.waiting, deadlocks)),
            ]
            for name, run in steps:
                if name not in args.only:
                    continue
                print(f"bench: {name} ...", flush=True)
                try:
                    got = await run()
                    rows += got if isinstance(got, list) else [got]
                except Exception as e:  # noqa: BLE001  (a benchmark reports, never stops half-way)
                    log.exception("bench: %s failed", name)
                    rows.append(Row(name, "", note=f"failed: {type(e).__name__}: {e}"[:200]))
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    render(rows, f"{load_before} before, {load_after} after, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    asyncio.run(main())
