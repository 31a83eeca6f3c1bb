"""ServiceRollback behaviour: gradual steps, faults, bad input, the one-per-target rule,
cancellation and dry runs. Time-skipping server; moto and the sandbox endpoints behind it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowFailureError

from common.models import Decision, RollbackStatus, ServiceRollbackInput
from tests.conftest import id_token, in_process_worker
from tests.helpers import (bad_metric, cancel_when_idle, failure_text, new_id, running_revision, status_of,
                           wait_for, wait_phase)
from workflows.service import ServiceRollback


def request(service: str, **kw) -> ServiceRollbackInput:
    fields = dict(service=service, severity="SEV-2", requested_by="dana", reason="error rate after v1.2.3")
    fields.update(kw)
    fields.setdefault("id_token", id_token(fields["requested_by"]))  # proven, as starter.py sends it
    return ServiceRollbackInput(**fields)


def weights(aws) -> dict[str, int]:
    listener = aws.client("elbv2").describe_listeners(ListenerArns=[aws.fleet.listener_arn])["Listeners"][0]
    groups = listener["DefaultActions"][0]["ForwardConfig"]["TargetGroups"]
    names = {aws.fleet.blue_target_group_arn: "blue", aws.fleet.green_target_group_arn: "green"}
    return {names[g["TargetGroupArn"]]: g["Weight"] for g in groups}



async def test_gradual_rollback_shifts_traffic_in_steps_with_waits(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api_bg, rollout_percentages=[25, 50, 100]),
            id=new_id(), task_queue=worker.task_queue)
        result: RollbackStatus = await handle.result()
    assert result.phase.value == "succeeded", result.message
    assert weights(aws) == {"blue": 0, "green": 100}
    assert running_revision(aws, "api-service-green") == (42, "v1.2.2")
    assert running_revision(aws, "api-service-blue") == (43, "v1.2.3")  # the bad side is left alone
    shifts = [e for e in result.events if e.what.startswith("traffic:")]
    assert [e.what.split("%")[0] for e in shifts] == ["traffic: 25", "traffic: 50", "traffic: 100"]
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(shifts, shifts[1:])]
    assert all(g >= 5 * 60 for g in gaps), gaps  # runbook: "Wait 5 minutes, monitor metrics"
    assert aws.faults.calls["ModifyListener"] == 3


async def test_failing_check_between_steps_pauses_and_never_flips_back(ts_env, aws, catalog):
    # The good version looks bad too: the check before the second step fails.
    bad_metric(aws, "Rastup/API", "ErrorRate", 9.0, {"Service": "api", "Version": "v1.2.2"})
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api_bg, rollout_percentages=[50, 100]),
            id=new_id(), task_queue=worker.task_queue)
        await wait_for(handle, lambda s: s.extra.get("rollout_percentage") == 50, what="first step")
        await ts_env.sleep(timedelta(minutes=6))  # the wait before the next step passes
        s = await wait_phase(handle, "paused", timeout=60)
        assert weights(aws) == {"blue": 50, "green": 50}
        assert "error_rate" in s.approvals.context and "held at 50%" in s.approvals.context
        # the start's approval stays on record (before: the paused step's gate replaced it)
        assert [(g.step, [r.approver for r in g.received], g.satisfied) for g in s.earlier_approvals] == [
            ("Approval", ["dana"], True)]
        assert s.approvals.step.startswith("Execute rollback (paused at 50%)"), s.approvals.step
        await handle.signal(ServiceRollback.reject, Decision(approver="dana", id_token=id_token("dana"),
                                                             reason="investigate first"))
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        s = await status_of(handle)
    assert "stopped at 50%" in failure_text(excinfo)
    assert weights(aws) == {"blue": 50, "green": 50}  # held, not moved back
    assert s.phase.value == "failed"


async def test_throttling_and_5xx_are_retried_to_success(ts_env, aws, catalog):
    aws.faults.inject("UpdateService", "throttle", "5xx", "throttle", "5xx")
    aws.faults.inject("DescribeServices", "5xx")
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(
            ServiceRollback.run, request(catalog.api, monitor_minutes=5), id=new_id(), task_queue=worker.task_queue)
    assert result.phase.value == "succeeded"
    assert running_revision(aws) == (42, "v1.2.2")
    assert aws.faults.calls["UpdateService"] == 5  # four faults, then the change


async def test_access_denied_fails_fast_with_a_clear_message(ts_env, aws, catalog):
    aws.faults.inject("UpdateService", "denied")
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api), id=new_id(), task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        s = await status_of(handle)
    msg = failure_text(excinfo)
    assert "access denied" in msg and "ecs update-service" in msg and "IAM" in msg
    assert aws.faults.calls["UpdateService"] == 1  # not retried
    assert running_revision(aws) == (43, "v1.2.3")
    assert s.phase.value == "failed" and "access denied" in s.message
    assert next(st for st in s.steps if st.name == "Execute rollback").state.value == "failed"


@pytest.mark.parametrize("bad,expect", [
    ({"service": "apii"}, "service 'apii' is not in the catalog (known: api-"),
    ({"to_version": "v9.9.9"}, "to_version 'v9.9.9' matches no task-definition revision"),
    ({"severity": "SEV-9"}, "severity"),
    ({"requested_by": None}, "requested_by"),
    ({"rollout_percentages": [50, 70]}, "end at 100"),
    ({"colour": "blue"}, "colour"),
])
async def test_bad_input_fails_at_once_and_changes_nothing(ts_env, aws, catalog, bad, expect):
    raw = {"service": catalog.api, "severity": "SEV-2", "requested_by": "dana", "reason": "errors"}
    raw.update({k: v for k, v in bad.items()})
    raw = {k: v for k, v in raw.items() if v is not None}
    async with in_process_worker(ts_env.client, catalog) as worker:
        # Raw JSON as the Web UI sends it: no client-side model in the way.
        handle = await ts_env.client.start_workflow("ServiceRollback", raw, id=new_id(),
                                                    task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
    assert expect in failure_text(excinfo)
    assert aws.faults.calls["UpdateService"] == 0
    assert running_revision(aws) == (43, "v1.2.3")


async def test_two_rollbacks_of_one_target_never_act_at_once_whatever_their_ids(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        first = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api, requested_by="zoe"), id="typed-in-the-ui-1",
            task_queue=worker.task_queue)
        await wait_phase(first, "awaiting_approval")
        second = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api, requested_by="dana"), id="typed-in-the-ui-2",
            task_queue=worker.task_queue)
        refused = await second.result()
        assert refused.phase.value == "refused"
        assert "typed-in-the-ui-1" in refused.message
        assert aws.faults.calls["UpdateService"] == 0
        await first.signal(ServiceRollback.reject, Decision(approver="dana", id_token=id_token("dana"), reason="done"))
        assert (await first.result()).phase.value == "rejected"
        # the lock is released when the holder ends: the next rollback goes ahead
        third = await ts_env.client.execute_workflow(
            ServiceRollback.run, request(catalog.api, monitor_minutes=5), id="typed-in-the-ui-3",
            task_queue=worker.task_queue)
    assert third.phase.value == "succeeded"


async def test_cancel_stops_changes_and_records_state(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api, requested_by="zoe"), id=new_id(), task_queue=worker.task_queue)
        await wait_phase(handle, "awaiting_approval")
        await cancel_when_idle(handle)
        s = await status_of(handle)
    assert s.phase.value == "cancelled"
    assert "no further changes" in s.message and "Identify previous stable version" in s.message
    assert next(st for st in s.steps if st.name == "Approval").state.value == "cancelled"
    assert aws.faults.calls["UpdateService"] == 0


async def test_cancel_during_monitoring_keeps_the_good_version(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api), id=new_id(), task_queue=worker.task_queue)
        await wait_phase(handle, "monitoring", timeout=60)
        await cancel_when_idle(handle)  # between rounds of checks
        s = await status_of(handle)
    assert s.phase.value == "cancelled"
    assert running_revision(aws) == (42, "v1.2.2")
    assert aws.faults.calls["UpdateService"] == 1


async def test_dry_run_returns_the_plan_and_changes_nothing(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(
            ServiceRollback.run, request(catalog.api, requested_by="zoe", severity="SEV-0", dry_run=True),
            id=new_id(), task_queue=worker.task_queue)
    assert result.phase.value == "planned"
    assert any("--task-definition api-service:42" in p for p in result.plan)
    assert result.to_version == "v1.2.2"
    assert aws.faults.calls["UpdateService"] == 0
    assert {st.name: st.state.value for st in result.steps}["Execute rollback"] == "skipped"


async def test_regression_during_monitoring_is_reported_not_rolled_forward(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api), id=new_id(), task_queue=worker.task_queue)
        await wait_phase(handle, "monitoring", timeout=60)
        # v1.2.2 regresses: its latency is high in every minute of the window
        bad_metric(aws, "Rastup/API", "Latency", 5000.0, {"Service": "api", "Version": "v1.2.2"}, unit="Milliseconds")
        result = await handle.result()
    assert result.phase.value == "succeeded"
    assert result.regressions and result.regressions[0].name == "latency_p95"
    assert "REGRESSION" in " ".join(e.what for e in result.events)
    assert running_revision(aws) == (42, "v1.2.2")
    assert aws.faults.calls["UpdateService"] == 1


def add_staging(aws, catalog, smoke_url: str) -> None:
    """A staging counterpart: api-service-staging (same family) with its own smoke check."""
    import yaml

    ecs = aws.client("ecs")
    td = ecs.describe_services(cluster="rastup-prod", services=["api-service"])["services"][0]["taskDefinition"]
    ecs.create_service(cluster="rastup-prod", serviceName="api-service-staging", taskDefinition=td, desiredCount=2)
    catalog.data["services"][catalog.api]["staging"] = {
        "ecs": {"cluster": "rastup-prod", "service": "api-service-staging", "container": "api"},
        "smoke_checks": [{"name": "staging search", "url": smoke_url}]}
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))


async def test_target_is_verified_in_staging_before_approval(ts_env, aws, catalog):
    add_staging(aws, catalog, f"{aws.http_base}/api/search")
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api, requested_by="zoe"), id=new_id(), task_queue=worker.task_queue)
        s = await wait_phase(handle, "awaiting_approval")
        staging = next(st for st in s.steps if st.name == "Verify in staging")
        assert staging.state.value == "succeeded" and "v1.2.2 deployed in staging" in staging.detail
        assert running_revision(aws, "api-service-staging") == (42, "v1.2.2")
        assert running_revision(aws) == (43, "v1.2.3")  # production waits for the approval
        await handle.signal(ServiceRollback.approve, Decision(approver="dana", id_token=id_token("dana")))
        assert (await handle.result()).phase.value == "succeeded"
    assert running_revision(aws) == (42, "v1.2.2")


async def test_failing_staging_smoke_test_stops_before_production(ts_env, aws, catalog):
    add_staging(aws, catalog, f"{aws.http_base}/api/no-such-endpoint")
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            ServiceRollback.run, request(catalog.api), id=new_id(), task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
    assert "staging smoke test failed" in failure_text(excinfo)
    assert running_revision(aws) == (43, "v1.2.3")
