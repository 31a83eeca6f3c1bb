"""The runbook's auto-rollback job: the ``AutoRollbackCheck`` workflow against moto's metrics and
ECS (the sandbox's v1.2.3 emits a 2.4 % error rate, v1.2.2 0.2 %), and the Temporal Schedule the
worker creates, on the real dev server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr
from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleOverlapPolicy
from temporalio.service import RPCError

from common.api import AUTO_ROLLBACK_SCHEDULE, ensure_auto_rollback_schedule, workflow_id
from common.models import AutoRollbackCheckInput, AutoRollbackReport, RollbackStatus
from common.settings import Settings
from sandbox import aws_env
from sandbox.fleet import CLUSTER, SERVICE
from tests.conftest import FAST_POLICY, write_catalog
from tests.helpers import running_revision
from tests.support.recorder import Recorder
from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent


async def check(client: Client, task_queue: str) -> AutoRollbackReport:
    return await client.execute_workflow("AutoRollbackCheck", AutoRollbackCheckInput(),
                                         id=f"auto-rollback-check-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
                                         result_type=AutoRollbackReport)


async def test_a_breach_starts_one_rollback_that_proceeds_and_says_so_in_incidents(dev_env, aws, tmp_path):
    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "monitor_minutes": 0.05})
    svc, wid = catalog.api, workflow_id("service", catalog.api)
    slack = Recorder().start()
    settings = Settings(ROLLBACK_SLACK_WEBHOOK_URL=SecretStr(f"{slack.url}/slack"))
    try:
        async with build_worker(dev_env.client, settings, catalog.path, task_queue=f"tq-{uuid.uuid4().hex[:8]}") \
                as worker:
            # two checks at once (a slow run and the next): one rollback, the other joins it
            first, second = await asyncio.gather(check(dev_env.client, worker.task_queue),
                                                 check(dev_env.client, worker.task_queue))
            checks = [r.services for r in (first, second)]
            assert [len(c) for c in checks] == [1, 1]  # only the service marked auto_rollback: true
            a, b = checks[0][0], checks[1][0]
            assert (a.service, a.version, a.error_rate, a.threshold) == (svc, "v1.2.3", 2.4, 0.5)
            assert sorted([a.outcome, b.outcome]) == ["joined", "started"]
            assert a.workflow_id == b.workflow_id == wid
            assert "5-minute error rate 2.4% on v1.2.3 exceeds 0.5%" in a.detail

            result = await asyncio.wait_for(dev_env.client.get_workflow_handle(wid).result(), 60)
            s = RollbackStatus.model_validate(result)
            assert s.phase.value == "succeeded", s.message
            assert (s.requested_by, s.severity) == ("auto-rollback:error-rate", "SEV-2")
            assert (s.requester_proof.kind, s.requester_proof.issuer) == ("automation", "auto-rollback")
            assert not any("awaiting_approval" in e.what for e in s.events)  # the policy lets it proceed
            assert len(s.evidence) == 2 and {e.source for e in s.evidence} == {"auto-rollback"}
            assert s.evidence[0].labels == {"service": svc, "version": "v1.2.3", "error_rate": "2.4",
                                            "threshold": "0.5"}
            assert running_revision(aws) == (42, "v1.2.2")
            triggered = [r.body["text"] for r in slack.at("/slack") if r.body["text"].startswith("Auto-rollback")]
            assert len(triggered) == 1, triggered  # once, with a link to the rollback's Web UI page
            assert triggered[0].startswith(f"Auto-rollback triggered due to high error rate: {svc} 5-minute error "
                                           f"rate 2.4% on v1.2.3 exceeds 0.5%. Workflow: {wid}")
            assert f"/workflows/{wid}" in triggered[0]

            # five minutes later: the deployed v1.2.2 is below the threshold, nothing more happens
            after = (await check(dev_env.client, worker.task_queue)).services[0]
            assert (after.outcome, after.version, after.error_rate, after.workflow_id) == ("below", "v1.2.2", 0.2, "")
            assert [r.body["text"] for r in slack.at("/slack") if r.body["text"].startswith("Auto-rollback")] == \
                triggered
    finally:
        slack.stop()
        try:
            await dev_env.client.get_workflow_handle(wid).terminate("test cleanup")
        except RPCError:
            pass


async def test_the_schedule_is_kept_by_the_worker_runs_the_check_and_pauses_from_the_cli(dev_env, aws, tmp_path):
    catalog = write_catalog(tmp_path, aws, FAST_POLICY)
    svc = catalog.api
    aws.client("ecs").update_service(cluster=CLUSTER, service=SERVICE, taskDefinition=f"{SERVICE}:42")  # v1.2.2
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ROLLBACK_"))}
    env.update(aws_env(aws.endpoint_url), TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
               ROLLBACK_CATALOG=str(catalog.path), ROLLBACK_AWS="real")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "starter.py", "schedule", *args], cwd=ROOT, env={**env},
                              capture_output=True, text=True, timeout=30)

    client = dev_env.client
    handle = client.get_schedule_handle(AUTO_ROLLBACK_SCHEDULE)
    try:  # the dev server is shared: workers started by other tests (worker.py) create it too
        await handle.delete()
    except RPCError:
        pass
    async with build_worker(client, Settings(), catalog.path, task_queue=f"tq-{uuid.uuid4().hex[:8]}") as worker:
        try:
            missing = await asyncio.to_thread(cli, "status")
            assert missing.returncode == 2
            assert "no schedule 'auto-rollback': the worker creates it at start-up ('make run')" in missing.stderr

            assert await ensure_auto_rollback_schedule(client, worker.task_queue) == "created"
            d = (await handle.describe()).schedule
            assert [i.every for i in d.spec.intervals] == [timedelta(minutes=5)]
            assert d.policy.overlap == ScheduleOverlapPolicy.SKIP
            assert isinstance(d.action, ScheduleActionStartWorkflow)
            assert (d.action.workflow, d.action.task_queue) == ("AutoRollbackCheck", worker.task_queue)

            paused = await asyncio.to_thread(cli, "pause", "--note", "deploy freeze")
            assert paused.returncode == 0, paused.stderr
            assert "auto-rollback schedule auto-rollback: PAUSED (every 5 min, overlap: skip); " \
                   "note: deploy freeze" in paused.stdout
            # the worker restarting (make run again) updates it, and leaves it paused
            assert await ensure_auto_rollback_schedule(client, worker.task_queue) == "updated"
            d = await handle.describe()
            assert d.schedule.state.paused and d.schedule.state.note == "deploy freeze"
            assert [s.id async for s in await client.list_schedules()].count(AUTO_ROLLBACK_SCHEDULE) == 1
            resumed = await asyncio.to_thread(cli, "resume")
            assert resumed.returncode == 0, resumed.stderr
            assert "active (every 5 min" in resumed.stdout and "next checks: " in resumed.stdout

            # a run of the schedule: v1.2.2 is deployed, its error rate is below 0.5 %: nothing starts
            await handle.trigger()
            for _ in range(100):
                recent = (await handle.describe()).info.recent_actions
                if recent:
                    break
                await asyncio.sleep(0.1)
            run = client.get_workflow_handle(recent[0].action.workflow_id)
            report = await asyncio.wait_for(run.result(), 30)
            report = AutoRollbackReport.model_validate(report)
            assert [(c.service, c.outcome, c.version, c.error_rate) for c in report.services] == [
                (svc, "below", "v1.2.2", 0.2)]
            status = await asyncio.to_thread(cli, "status")
            assert status.returncode == 0 and "ran " in status.stdout and "auto-rollback-check" in status.stdout
            try:
                await client.get_workflow_handle(workflow_id("service", svc)).describe()
                raise AssertionError("a rollback was started below the threshold")
            except RPCError:
                pass
        finally:
            try:
                await handle.delete()
            except RPCError:
                pass
