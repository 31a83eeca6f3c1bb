"""Record workflow histories for the replay test (tests/test_replay.py).

Run after a deliberate, patched change of workflow code, never to "fix" a failing replay:

    .venv/bin/python -m pytest tests/record_histories.py

Each scenario runs on the time-skipping server against the sandbox fleet and its complete
history is written to tests/histories/<name>.json.
"""

from __future__ import annotations

from pathlib import Path

from common.models import ConfigRollbackInput, Decision, FeatureFlagRollbackInput, FrontendRollbackInput, LambdaRollbackInput, ServiceRollbackInput
from sandbox.lambda_fleet import FUNCTION, catalog_entry
from tests.test_lambda import use_functions
from workflows.config import ConfigRollback
from workflows.flags import FeatureFlagRollback
from workflows.frontend import FrontendRollback
from workflows.lambda_fn import LambdaRollback
from tests.conftest import in_process_worker
from tests.helpers import wait_phase
from workflows.service import ServiceRollback

OUT = Path(__file__).parent / "histories"


def req(service: str, **kw) -> ServiceRollbackInput:
    return ServiceRollbackInput(**{"service": service, "severity": "SEV-2", "requested_by": "dana",
                                   "reason": "recorded scenario", **kw})


async def save(handle, name: str) -> None:
    history = await handle.fetch_history()
    (OUT / f"{name}.json").write_text(history.to_json())


async def test_record(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        tq = worker.task_queue
        c = ts_env.client

        h = await c.start_workflow(ServiceRollback.run, req(catalog.api, severity="SEV-0", requested_by="zoe"),
                                   id="replay-sev0-two-approvers", task_queue=tq)
        await wait_phase(h, "awaiting_approval")
        await h.signal(ServiceRollback.approve, Decision(approver="alice"))
        await h.signal(ServiceRollback.approve, Decision(approver="alice"))
        await h.signal(ServiceRollback.approve, Decision(approver="bob"))
        await h.result()
        await save(h, "service_sev0_two_approvers_succeeded")

        h = await c.start_workflow(ServiceRollback.run, req(catalog.api, severity="SEV-1", requested_by="zoe"),
                                   id="replay-rejected", task_queue=tq)
        await wait_phase(h, "awaiting_approval")
        await h.signal(ServiceRollback.reject, Decision(approver="carol", reason="fix forward"))
        await h.result()
        await save(h, "service_rejected")

        h = await c.start_workflow(ServiceRollback.run, req(catalog.api, severity="SEV-1", requested_by="zoe"),
                                   id="replay-timed-out", task_queue=tq)
        await wait_phase(h, "awaiting_approval")
        await h.result()
        await save(h, "service_timed_out")

        h = await c.start_workflow(ServiceRollback.run, req(catalog.api_bg, rollout_percentages=[50, 100]),
                                   id="replay-gradual", task_queue=tq)
        await h.result()
        await save(h, "service_gradual_succeeded")

        h = await c.start_workflow(ServiceRollback.run, req(catalog.api, dry_run=True),
                                   id="replay-dry-run", task_queue=tq)
        await h.result()
        await save(h, "service_dry_run")

        h = await c.start_workflow(FeatureFlagRollback.run, FeatureFlagRollbackInput(
            flag=catalog.name("payments_disabled"), action="kill_switch", severity="SEV-4", requested_by="dana",
            reason="recorded scenario"), id="replay-flag-kill-switch", task_queue=tq)
        await h.result()
        await save(h, "flag_kill_switch_succeeded")

        h = await c.start_workflow(ConfigRollback.run, ConfigRollbackInput(
            target=catalog.name("api-key"), severity="SEV-2", requested_by="dana", reason="recorded scenario"),
            id="replay-config-secret", task_queue=tq)
        await h.result()
        await save(h, "config_secret_succeeded")

        h = await c.start_workflow(FrontendRollback.run, FrontendRollbackInput(
            site=catalog.name("web"), strategy="release_sync", to_release="v1.2.2", severity="SEV-2",
            requested_by="dana", reason="recorded scenario"), id="replay-frontend-sync", task_queue=tq)
        await h.result()
        await save(h, "frontend_release_sync_succeeded")

    use_functions(catalog, {FUNCTION: catalog_entry()})
    async with in_process_worker(ts_env.client, catalog) as worker:
        h = await ts_env.client.start_workflow(LambdaRollback.run, LambdaRollbackInput(
            function=catalog.name(FUNCTION), routing_steps=[50, 100], severity="SEV-2", requested_by="dana",
            reason="recorded scenario"), id="replay-lambda-routing", task_queue=worker.task_queue)
        await h.result()
        await save(h, "lambda_routing_succeeded")


async def test_record_never_worse(ts_env, aws, catalog):
    """Runs of issue 10's rules (workflow.patched("never-worse")): resolve, lock resources and announce,
    the change ledger, verdict tags, a cancel. Only these files are written:

        .venv/bin/python -m pytest tests/record_histories.py -k never_worse
    """
    use_functions(catalog, {FUNCTION: catalog_entry()})
    async with in_process_worker(ts_env.client, catalog) as worker:
        tq, c = worker.task_queue, ts_env.client
        h = await c.start_workflow(ServiceRollback.run, req(catalog.api), id="replay-never-worse-service",
                                   task_queue=tq)
        await h.result()
        await save(h, "never_worse_service_succeeded")

        h = await c.start_workflow(ServiceRollback.run, req(catalog.api, severity="SEV-1", requested_by="zoe"),
                                   id="replay-never-worse-cancelled", task_queue=tq)
        await wait_phase(h, "awaiting_approval")
        await h.cancel()
        try:
            await h.result()
        except Exception:  # noqa: BLE001  (a cancelled workflow's result raises)
            pass
        await save(h, "never_worse_service_cancelled")

        h = await c.start_workflow(LambdaRollback.run, LambdaRollbackInput(
            function=catalog.name(FUNCTION), severity="SEV-2", requested_by="dana", reason="recorded scenario"),
            id="replay-never-worse-lambda", task_queue=tq)
        await h.result()
        await save(h, "never_worse_lambda_succeeded")


async def test_record_verdicts(ts_env, aws, catalog):
    """Validation waiting for the serving version's own data (verdicts-await-evidence), after a baseline
    query error that is not kept (verdicts-unread-baseline)."""
    from datetime import timedelta

    from tests.helpers import wait_for
    from tests.test_verdicts import healthy_history, metric_of, noisy, put, with_metrics

    with_metrics(catalog, catalog.api, [metric_of(catalog)])
    healthy_history(aws, catalog, 0.2)
    aws.faults.inject("GetMetricData", "denied", "denied")
    inconclusive = lambda s: sum(1 for r in s.readings if r.verdict == "inconclusive")  # noqa: E731
    async with in_process_worker(ts_env.client, catalog) as worker:
        h = await ts_env.client.start_workflow(ServiceRollback.run, req(catalog.api, monitor_minutes=5),
                                               id="rec-verdicts", task_queue=worker.task_queue)
        for n in (1, 2, 3):
            await wait_for(h, lambda s: inconclusive(s) >= n)
            if n < 3:
                await ts_env.sleep(timedelta(seconds=21))
        put(aws, {"Service": catalog.suffix, "Version": "v1.2.2"}, noisy(0.2, 5), newest_minutes_ago=0.5)
        await h.result()
        await save(h, "service_validation_waits_for_evidence")


async def test_record_identity(ts_env, aws, catalog):
    """Decisions with proofs (identity-proofs): a typed approval refused, a proven severity change that
    lowers the bar (by someone the matrix accepts there), a proven approval through the decide update."""
    from common.models import DecisionRequest, Escalation
    from tests.conftest import id_token

    async with in_process_worker(ts_env.client, catalog) as worker:
        h = await ts_env.client.start_workflow(ServiceRollback.run, req(
            catalog.api, severity="SEV-0", requested_by="zoe", id_token=id_token("zoe"), monitor_minutes=5),
            id="rec-identity", task_queue=worker.task_queue)
        await wait_phase(h, "awaiting_approval")
        await h.signal(ServiceRollback.approve, Decision(approver="alice"))
        await h.signal(ServiceRollback.escalate, Escalation(severity="SEV-1", by="bob", reason="fewer users affected",
                                                          id_token=id_token("bob")))
        outcome = await h.execute_update(ServiceRollback.decide, DecisionRequest(
            decision="approve", approver="alice", id_token=id_token("alice")))
        assert outcome.counted, outcome.message
        result = await h.result()
        assert result.phase.value == "succeeded" and len(result.approvals.refused) == 1
        await save(h, "service_identity_proofs_succeeded")


async def test_record_fast_path(ts_env, aws, catalog):
    """Issue 13's fast path (fast-path): the scoped catalog, local reads, ECS identify, the announcement
    alongside the work; an approval request after it; a Lambda fleet at policy.fleet_concurrency.

        .venv/bin/python -m pytest tests/record_histories.py -k fast_path
    """
    from sandbox.lambda_fleet import ensure_function
    from tests.conftest import id_token
    from tests.test_lambda import OTHER

    ensure_function(aws.client("lambda"), aws.client("iam"), OTHER, versions=3)
    use_functions(catalog, {FUNCTION: catalog_entry(), OTHER: {"function_name": OTHER}})
    async with in_process_worker(ts_env.client, catalog) as worker:
        tq, c = worker.task_queue, ts_env.client
        h = await c.start_workflow(ServiceRollback.run, req(catalog.api, id_token=id_token("dana"), monitor_minutes=5),
                                   id="rec-fast-path-service", task_queue=tq)
        result = await h.result()
        assert result.phase.value == "succeeded", result.message
        await save(h, "fast_path_service_succeeded")

        h = await c.start_workflow(ServiceRollback.run, req(catalog.api, severity="SEV-1", requested_by="zoe",
                                                            to_version="v1.2.3", monitor_minutes=5),
                                   id="rec-fast-path-approved", task_queue=tq)
        await wait_phase(h, "awaiting_approval")
        await h.signal(ServiceRollback.approve, Decision(approver="alice", id_token=id_token("alice")))
        result = await h.result()
        assert result.phase.value == "succeeded", result.message
        await save(h, "fast_path_service_approved")

        h = await c.start_workflow(LambdaRollback.run, LambdaRollbackInput(
            functions=[catalog.name(FUNCTION), catalog.name(OTHER)], severity="SEV-2", requested_by="dana",
            reason="recorded scenario", id_token=id_token("dana"), monitor_minutes=5),
            id="rec-fast-path-fleet", task_queue=tq)
        result = await h.result()
        assert result.phase.value == "succeeded", result.message
        await save(h, "fast_path_lambda_fleet_succeeded")


async def test_record_handler_proofs(ts_env, aws, catalog):
    """Decisions proved by a regular activity in their handlers (handler-proofs-as-activities): an
    escalation to SEV-0, then its two approvals, each with the person's ID token.

        .venv/bin/python -m pytest tests/record_histories.py -k handler_proofs
    """
    from common.models import Escalation
    from tests.conftest import id_token

    async with in_process_worker(ts_env.client, catalog) as worker:
        h = await ts_env.client.start_workflow(
            ServiceRollback.run, req(catalog.api, severity="SEV-1", requested_by="zoe", id_token=id_token("zoe"),
                                     monitor_minutes=5),
            id="rec-handler-proofs", task_queue=worker.task_queue)
        await wait_phase(h, "awaiting_approval")
        await h.signal(ServiceRollback.escalate, Escalation(severity="SEV-0", by="dana", reason="worse",
                                                           id_token=id_token("dana")))
        for person in ("alice", "bob"):
            await h.signal(ServiceRollback.approve, Decision(approver=person, id_token=id_token(person)))
        result = await h.result()
        assert result.phase.value == "succeeded", result.message
        assert result.severity == "SEV-0" and sorted(a.approver for a in result.approvals.received) == ["alice", "bob"]
        await save(h, "handler_proofs_escalated_approved")


async def test_record_release(ts_env, aws, catalog):
    """A release rolled back under one approval (ReleaseRollback, issue 15): the release's history and
    one of its components' (approved by the release, announcing nothing itself). Only these files:

        .venv/bin/python -m pytest tests/record_histories.py -k release
    """
    from common.models import ReleaseRollbackInput
    from tests.conftest import id_token
    from tests.test_release import with_release
    from workflows.release import ReleaseRollback

    cat = with_release(catalog)
    async with in_process_worker(ts_env.client, cat) as worker:
        h = await ts_env.client.start_workflow(ReleaseRollback.run, ReleaseRollbackInput(
            release="v1.2.3", severity="SEV-2", requested_by="zoe", id_token=id_token("zoe"),
            reason="recorded scenario", monitor_minutes=5),
            id="release_succeeded", task_queue=worker.task_queue)  # = the file: replay takes its id from it
        await wait_phase(h, "awaiting_approval")
        await h.signal(ReleaseRollback.approve, Decision(approver="dana", id_token=id_token("dana")))
        result = await h.result()
        assert result.phase.value == "succeeded", result.message
        await save(h, "release_succeeded")
        child = next(c.workflow_id for c in result.components if c.kind == "service")
        await save(ts_env.client.get_workflow_handle(child), "release_component_service_succeeded")


async def test_record_fleet_batch(ts_env, aws, catalog):
    """Issue 13's fleet batches (fleet-batch): a Lambda fleet read, moved and checked with one activity
    per step for all its functions, at once and in routing steps. Only these files:

        .venv/bin/python -m pytest tests/record_histories.py -k fleet_batch
    """
    from sandbox.lambda_fleet import ensure_function
    from tests.conftest import id_token
    from tests.test_lambda import OTHER

    ensure_function(aws.client("lambda"), aws.client("iam"), OTHER, versions=3)
    use_functions(catalog, {FUNCTION: catalog_entry(), OTHER: {"function_name": OTHER}})
    names = [catalog.name(FUNCTION), catalog.name(OTHER)]
    async with in_process_worker(ts_env.client, catalog) as worker:
        for routing, name in ((None, "fleet_batch_lambda_succeeded"), ([50, 100], "fleet_batch_lambda_routing")):
            h = await ts_env.client.start_workflow(LambdaRollback.run, LambdaRollbackInput(
                functions=names, severity="SEV-2", requested_by="dana", reason="recorded scenario",
                id_token=id_token("dana"), monitor_minutes=5, routing_steps=routing), id=f"rec-{name}",
                task_queue=worker.task_queue)
            result = await h.result()
            assert result.phase.value == "succeeded", result.message
            await save(h, name)
