"""A rollback never makes things worse (issue 10): a typo announces nothing, locks are per
resource across procedures, nothing wedges, pages are pages, and a failure after a change says
the state it left. Real HTTP receivers stand in for Slack, the status page, the ticket system
and PagerDuty (tests/support/recorder.py); moto behind AWS; the time-skipping server."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
import yaml
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from activities.temporal_locks import lock_id
from common.api import BadRequest, Rollbacks
from common.catalog import Catalog
from common.models import Decision, Evidence, RollbackStatus
from sandbox.catalog import databases_dict
from sandbox.lambda_fleet import FUNCTION, catalog_entry
from tests.conftest import id_token, in_process_worker, proven
from tests.helpers import (cancel_when_idle, failure_text, new_id, running_revision, signal_when_idle, status_of,
                           wait_for, wait_phase)
from tests.support.recorder import Recorder

SLACK, PAGE, TICKETS, PD = "/services/T0/B0/hook", "/v1/pages/p1", "/tickets", "/v2/enqueue"
BASE = proven({"severity": "SEV-2", "requested_by": "dana", "reason": "errors after the release"})


@pytest.fixture()
def outside(monkeypatch):
    """Slack, status page, ticket system and PagerDuty (primary and secondary), all recorded."""
    rec = Recorder().start()
    monkeypatch.setenv("ROLLBACK_SLACK_WEBHOOK_URL", rec.url + SLACK)
    monkeypatch.setenv("ROLLBACK_STATUSPAGE_URL", rec.url + PAGE)
    monkeypatch.setenv("ROLLBACK_TICKET_URL", rec.url + TICKETS)
    monkeypatch.setenv("ROLLBACK_PAGERDUTY_ROUTING_KEY", "pd-primary")
    monkeypatch.setenv("ROLLBACK_PAGERDUTY_SECONDARY_ROUTING_KEY", "pd-secondary")
    monkeypatch.setenv("ROLLBACK_PAGERDUTY_URL", rec.url + PD)
    yield rec
    rec.stop()


async def exists(client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
        return True
    except RPCError as e:
        assert e.status == RPCStatusCode.NOT_FOUND
        return False


async def released(client, lock: str) -> bool:
    """The lock is free (never taken, or its workflow has ended): released locks end in a moment."""
    for _ in range(100):
        if not await exists(client, lock) or \
                (await client.get_workflow_handle(lock).describe()).status.name != "RUNNING":
            return True
        await asyncio.sleep(0.1)
    return False


async def fails(client, workflow: str, fields: dict, task_queue: str) -> tuple[str, RollbackStatus | None]:
    handle = await client.start_workflow(workflow, fields, id=new_id(), task_queue=task_queue)
    with pytest.raises(WorkflowFailureError) as excinfo:
        await handle.result()
    try:
        status = await status_of(handle)
    except Exception:  # noqa: BLE001  (a request that never validated has no status)
        status = None
    return failure_text(excinfo), status


# --- a typo announces nothing -----------------------------------------------------------------

@pytest.mark.parametrize("case", ["service to_version", "unknown service", "lambda to_version", "config to_version"])
async def test_a_typo_fails_fast_naming_the_field_and_announces_nothing(ts_env, aws, catalog, outside, case):
    catalog.data["functions"] = {catalog.name(FUNCTION): catalog_entry()}
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    workflow, fields, expect, old_lock = {
        "service to_version": ("ServiceRollback", {"service": catalog.api, "to_version": "v1.2.22"},
                               "to_version 'v1.2.22' matches no task-definition revision", catalog.api),
        "unknown service": ("ServiceRollback", {"service": "apii"}, "service 'apii' is not in the catalog", "apii"),
        "lambda to_version": ("LambdaRollback", {"function": catalog.name(FUNCTION), "to_version": "22"},
                              "to_version '22' is not a published version", catalog.name(FUNCTION)),
        "config to_version": ("ConfigRollback", {"target": catalog.name("app-settings"), "to_version": "22"},
                              "to_version '22' is not a hosted configuration version of app-settings",
                              catalog.name("app-settings")),
    }[case]
    async with in_process_worker(ts_env.client, catalog) as worker:
        text, s = await fails(ts_env.client, workflow, {**fields, **BASE}, worker.task_queue)
        assert expect in text
        # nothing posted, paged, ticketed or put on the status page; no lock taken with the typo as its name
        assert outside.received == [], [(r.path, r.body) for r in outside.received]
        kind = {"ServiceRollback": "service", "LambdaRollback": "lambda", "ConfigRollback": "config"}[workflow]
        assert not await exists(ts_env.client, f"rollback-lock-{kind}-{old_lock}")
        assert not await exists(ts_env.client, lock_id("ecs service rastup-prod/api-service", worker.task_queue))
    assert s is not None and s.phase.value == "failed" and s.actions == []
    assert aws.faults.changes() == {}


async def test_the_status_page_hears_only_of_real_changes(ts_env, aws, catalog, outside):
    # Before: an AccessDenied on the very first change still opened a public incident ("We rolled back a change").
    aws.faults.inject("UpdateService", "denied")
    async with in_process_worker(ts_env.client, catalog) as worker:
        text, s = await fails(ts_env.client, "ServiceRollback", {"service": catalog.api, **BASE}, worker.task_queue)
    assert "access denied" in text and "nothing was changed" in text
    assert outside.at(PAGE) == []  # nothing changed: customers hear nothing
    assert [r.body["outcome"] for r in outside.at(TICKETS)] == ["failed"]  # the team gets its follow-up
    assert {a.action: a.detail for a in s.actions}["update status page"] == "no change was made"


# --- one lock per resource, across procedures -------------------------------------------------

async def test_procedures_touching_the_same_service_never_act_at_once(ts_env, aws, catalog):
    # Before: locks were per procedure: a secret rollback (or a database cutover) force-redeployed
    # api-service while a service rollback of api was mid-flight.
    catalog.data["databases"] = {catalog.name("rastup-prod"): {**databases_dict(aws.http_base)["rastup-prod"],
                                                               "app_service": catalog.api}}
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    async with in_process_worker(ts_env.client, catalog) as worker:
        service = await ts_env.client.start_workflow(
            "ServiceRollback", {"service": catalog.api, **BASE, "severity": "SEV-1", "requested_by": "zoe"},
            id=new_id("svc"), task_queue=worker.task_queue)
        await wait_phase(service, "awaiting_approval")
        for workflow, fields in (
                ("ConfigRollback", {"target": catalog.name("api-key")}),
                ("DatabaseRollback", {"database": catalog.name("rastup-prod"), "mode": "snapshot_restore",
                                      "snapshot_id": aws.fleet.db_snapshot})):
            refused: RollbackStatus = await ts_env.client.execute_workflow(
                workflow, {**fields, **BASE}, id=new_id(), task_queue=worker.task_queue, result_type=RollbackStatus)
            assert refused.phase.value == "refused", refused.message
            assert "ecs service rastup-prod/api-service is in use by workflow " + service.id in refused.message
            assert f"service rollback of {catalog.api} by zoe" in refused.message
        assert aws.faults.changes() == {}  # neither moved the secret nor restored a database
        try:  # (the time-skipping server may have let its 4 hours pass while we waited on the others)
            await service.signal("reject", Decision(approver="dana", id_token=id_token("dana"), reason="done"))
        except RPCError:
            pass
        assert RollbackStatus.model_validate(await service.result()).phase.value in ("rejected", "timed_out")
        # released: the secret rollback goes ahead now
        done: RollbackStatus = await ts_env.client.execute_workflow(
            "ConfigRollback", {"target": catalog.name("api-key"), **BASE}, id=new_id(), task_queue=worker.task_queue,
            result_type=RollbackStatus)
    assert done.phase.value == "succeeded", done.message
    assert done.extra["locked"] == ["secret rastup/prod/api-key", "ecs service rastup-prod/api-service"]


def test_lock_ids_are_bounded_whatever_the_names():
    long = "lambda function " + "x" * 500
    ids = {lock_id(r, "rollbacks") for r in (long, long + "y", "ecs service rastup-prod/api-service")}
    assert len(ids) == 3 and all(len(i) <= 80 for i in ids)
    assert lock_id("ecs service rastup-prod/api-service", "rollbacks").startswith(
        "rollback-lock-ecs-service-rastup-prod-api-service-")
    assert lock_id("s", "queue-a") != lock_id("s", "queue-b")  # one orchestrator deployment's locks


async def test_a_fleet_takes_its_locks_at_once_all_or_nothing(ts_env, aws, catalog):
    from sandbox.lambda_fleet import ensure_function

    names = [f"fleet-fn-{i}" for i in range(12)]
    for name in names:
        ensure_function(aws.client("lambda"), aws.client("iam"), name, versions=2)
    catalog.data["functions"] = {catalog.name(n): {"function_name": n} for n in names}
    Catalog.model_validate(catalog.data)
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    fleet = {"functions": [catalog.name(n) for n in names], **BASE}
    async with in_process_worker(ts_env.client, catalog) as worker:
        one = await ts_env.client.start_workflow(
            "LambdaRollback", {"function": catalog.name(names[7]), **BASE, "severity": "SEV-1", "requested_by": "zoe"},
            id=new_id("one"), task_queue=worker.task_queue)
        await wait_phase(one, "awaiting_approval")
        h = await ts_env.client.start_workflow("LambdaRollback", fleet, id=new_id("fleet"), task_queue=worker.task_queue)
        refused = RollbackStatus.model_validate(await h.result())
        assert refused.phase.value == "refused" and f"lambda function {names[7]} is in use by workflow {one.id}" \
            in refused.message
        # all or nothing: none of the other eleven stays locked
        for n in names[:7] + names[8:]:
            assert await released(ts_env.client, lock_id(f"lambda function {n}", worker.task_queue))
        await one.signal("reject", Decision(approver="dana", id_token=id_token("dana"),
                                            reason="the fleet goes instead"))
        await one.result()
        h = await ts_env.client.start_workflow("LambdaRollback", {**fleet, "monitor_minutes": 5}, id=new_id("fleet"),
                                               task_queue=worker.task_queue)
        s = RollbackStatus.model_validate(await h.result())
        assert s.phase.value == "succeeded", s.message
        # twelve locks, one activity: not one workflow task per function
        acquired = [e for e in (await h.fetch_history()).events
                    if e.HasField("activity_task_scheduled_event_attributes")
                    and "lock" in e.activity_task_scheduled_event_attributes.activity_type.name]
        assert [e.activity_task_scheduled_event_attributes.activity_type.name for e in acquired] == [
            "acquire_locks", "release_locks"]


# --- nothing wedges ---------------------------------------------------------------------------

@pytest.mark.parametrize("workflow,fields", [
    ("ServiceRollback", {"service": "api"}),
    ("FeatureFlagRollback", {"flag": "new_feature_enabled", "action": "disable", "all_cities": True}),
])
async def test_a_600_kb_reason_is_refused_at_once_never_wedges(ts_env, aws, catalog, outside, workflow, fields):
    # Before: the status went over 2 MB, every workflow task failed (TMPRL1103) forever.
    target = {k: catalog.name(v) if k in ("service", "flag") else v for k, v in fields.items()}
    huge = {**target, **BASE, "reason": "x" * 600_000}
    kind = "service" if workflow == "ServiceRollback" else "flag"
    with pytest.raises(BadRequest) as excinfo:  # the API (starter.py, the receiver) refuses it, naming the field
        Rollbacks(ts_env.client, "unused", catalog.path).build_request(kind, huge)
    assert "reason: String should have at most 4000 characters" in str(excinfo.value)
    async with in_process_worker(ts_env.client, catalog) as worker:  # typed into the Web UI: fails at once
        text, _ = await asyncio.wait_for(fails(ts_env.client, workflow, huge, worker.task_queue), 30)
    assert "reason" in text and "at most 4000 characters" in text
    assert outside.received == [] and aws.faults.changes() == {}


@pytest.mark.parametrize("workflow,fields", [
    ("ServiceRollback", {"service": "api"}),
    ("FeatureFlagRollback", {"flag": "new_feature_enabled", "action": "disable", "all_cities": True}),
])
async def test_alerts_with_huge_labels_never_wedge_a_rollback(ts_env, aws, catalog, workflow, fields):
    # Before: 12 alerts carrying 200 KB labels, kept as evidence, took the status over 2 MB: queries failed,
    # approve/reject/cancel did nothing, new alerts "joined" the dead workflow.
    target = {k: catalog.name(v) if k in ("service", "flag") else v for k, v in fields.items()}
    async with in_process_worker(ts_env.client, catalog) as worker:
        h = await ts_env.client.start_workflow(workflow, {**target, **BASE, "severity": "SEV-1", "requested_by": "zoe"},
                                               id=new_id(), task_queue=worker.task_queue)
        await wait_phase(h, "awaiting_approval")
        for i in range(12):  # signalled straight through Temporal, as any client can: dropped, not kept
            await h.signal("add_evidence", {"source": "alertmanager", "labels": {"blob": "x" * 200_000, "n": str(i)}})
        for i in range(300):  # the largest evidence allowed, many times over: the first kept, the rest counted
            await h.signal("add_evidence", Evidence(source="alertmanager", summary="s" * 2000,
                                                    labels={f"k{j:02d}": "v" * 256 for j in range(32)}))
        s = await wait_for(h, lambda s: s.evidence_received == 300, 30, "the evidence")
        assert len(s.evidence) == 10
        assert len(s.model_dump_json()) < 512 * 1024  # far below Temporal's 2 MB: queries keep working
        await cancel_when_idle(h)  # and a cancel still works
        assert (await status_of(h)).phase.value == "cancelled"
    # the receiver answers 422 naming the label, and starts nothing
    from receiver import GenericAlert, Receiver
    from receiver import Refused as ReceiverRefused

    body = json.dumps({"source": "alertmanager", "status": "firing",
                       "labels": {"alertname": "HighErrorRate", "service": catalog.api, "blob": "x" * 200_000}})
    with pytest.raises(ReceiverRefused) as refused:
        Receiver.parse(body.encode(), GenericAlert, "generic alert")
    assert refused.value.status == 422 and refused.value.problems == [
        "labels.blob: String should have at most 256 characters"]


# --- pages are pages; tickets are tickets -------------------------------------------------------

async def test_an_undecided_gate_pages_the_on_call_then_the_secondary_and_resolves(ts_env, aws, catalog, outside):
    # Before: a gate past its response time only repeated itself in #incidents for four hours: nobody was paged.
    async with in_process_worker(ts_env.client, catalog) as worker:
        h = await ts_env.client.start_workflow(
            "ServiceRollback", {"service": catalog.api, **BASE, "requested_by": "zoe", "monitor_minutes": 5},
            id=new_id("page"), task_queue=worker.task_queue)
        await wait_phase(h, "awaiting_approval")
        assert outside.at(PD) == []  # SEV-2: 15 minutes to respond
        await ts_env.sleep(timedelta(minutes=16))
        await wait_for(h, lambda s: any(a.action == "page the primary on-call" for a in s.actions), 30, "the page")
        assert len(outside.at(PD)) == 1
        await ts_env.sleep(timedelta(minutes=15))
        await wait_for(h, lambda s: any(a.action == "page the secondary on-call" for a in s.actions), 30,
                       "the second page")
        s = RollbackStatus.model_validate(
            await signal_when_idle(h, "approve", Decision(approver="dana", id_token=id_token("dana"))))
    events = [r.body for r in outside.at(PD)]
    key = f"rollback/{h.id}/{h.result_run_id}"
    assert [(e["routing_key"], e["event_action"], e["dedup_key"]) for e in events] == [
        ("pd-primary", "trigger", key), ("pd-secondary", "trigger", key),
        ("pd-primary", "resolve", key), ("pd-secondary", "resolve", key)]
    trigger = events[0]["payload"]
    assert trigger["severity"] == "error" and trigger["source"] == "rollback-orchestrator"
    assert "no decision within its response time" in trigger["summary"] and "dana" in trigger["summary"]
    assert s.phase.value == "succeeded"
    assert outside.at("/v2/change/enqueue") == []  # with a ticket system the follow-up is the ticket
    assert [r.body["outcome"] for r in outside.at(TICKETS)] == ["succeeded"]


async def test_sev0_has_no_response_time_so_nobody_is_paged(ts_env, aws, catalog, outside):
    async with in_process_worker(ts_env.client, catalog) as worker:
        h = await ts_env.client.start_workflow(
            "ServiceRollback", {"service": catalog.api, **BASE, "severity": "SEV-0", "requested_by": "zoe"},
            id=new_id(), task_queue=worker.task_queue)
        await wait_phase(h, "awaiting_approval")
        # 2.5 hours, not 3: the reminders are hourly, and a skip that lands on one leaves that timer due a
        # few milliseconds later at real pace. If it fires while the reject's workflow task is with the
        # worker, that task cancels a fired timer, which this server refuses ("invalid history builder
        # state for action") and never retries: the run is stranded (temporalio/sdk-java#3088).
        await ts_env.sleep(timedelta(hours=2, minutes=30))
        await wait_for(h, lambda s: sum("reminder sent" in e.what for e in s.events) >= 2, 30, "reminders")
        await signal_when_idle(h, "reject", Decision(approver="alice", id_token=id_token("alice"), reason="not needed"))
    assert outside.at(PD) == []


# --- failures say where they left things -----------------------------------------------------------

async def test_a_blue_green_failure_says_which_side_runs_what_and_how_to_get_back(ts_env, aws, catalog):
    # Before: AccessDenied on the listener change left the standby redeployed at 0 % traffic, unsaid.
    aws.faults.inject("ModifyListener", "denied")
    async with in_process_worker(ts_env.client, catalog) as worker:
        text, s = await fails(ts_env.client, "ServiceRollback",
                              {"service": catalog.api_bg, "rollout_percentages": [50, 100], **BASE},
                              worker.task_queue)
    assert running_revision(aws, "api-service-green") == (42, "v1.2.2")
    assert "access denied" in s.message
    assert ("State left: traffic: 0% on api-service-green (v1.2.2), 100% on api-service-blue (v1.2.3); "
            "api-service-green runs v1.2.2 and serves nothing") in s.message
    assert ("changes made: ecs update-service --cluster rastup-prod --service api-service-green "
            "--task-definition api-service:42") in s.message
    assert ("to put api-service-green back on v1.2.3: aws ecs update-service --cluster rastup-prod "
            "--service api-service-green --task-definition api-service:43") in s.message
    assert "start the rollback again: it reuses api-service-green" in s.message
    assert s.message in text
    (deployed, shift) = s.changes
    assert deployed.state == "made" and deployed.step == "Execute rollback"
    assert shift.state == "failed" and shift.what.startswith(f"elbv2 modify-listener --listener-arn {aws.fleet.listener_arn}")
    assert shift.what.endswith(": api-green 50%, api-blue 50%") and "access denied" in shift.detail


async def test_a_frontend_failure_says_what_was_copied_and_how_to_restore(ts_env, aws, catalog):
    aws.faults.inject("CreateInvalidation", "denied")
    site = catalog.name("web")
    async with in_process_worker(ts_env.client, catalog) as worker:
        text, s = await fails(ts_env.client, "FrontendRollback",
                              {"site": site, "strategy": "release_sync", "to_release": "v1.2.2", **BASE},
                              worker.task_queue)
    assert "access denied" in s.message
    assert "State left: " in s.message and "object(s) copied and" in s.message
    assert (f"starter.py start {site} --kind frontend --severity SEV-2 --requested-by dana --reason 'undo "
            f"{s.workflow_id}' --set strategy=object_versions --set restore_to={s.started_at:%Y-%m-%dT%H:%M:%SZ} "
            "--set exact=true") in s.message
