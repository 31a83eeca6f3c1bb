"""The approval gate inside ServiceRollback, on the time-skipping server with moto behind it."""

from __future__ import annotations

from common.models import Decision, DecisionRequest, Escalation, RollbackStatus, ServiceRollbackInput
from tests.conftest import in_process_worker, slack_proof
from tests.helpers import new_id, running_revision, wait_for, wait_phase
from workflows.service import ServiceRollback


def request(service: str, **kw) -> ServiceRollbackInput:
    fields = dict(service=service, severity="SEV-1", requested_by="zoe", reason="error rate after v1.2.3",
                  monitor_minutes=30)
    fields.update(kw)
    return ServiceRollbackInput(**fields)


async def start(env, worker, req):
    return await env.client.start_workflow(ServiceRollback.run, req, id=new_id("svc"), task_queue=worker.task_queue)


async def test_sev0_needs_two_distinct_approvers_then_rolls_back_and_monitors(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api, severity="SEV-0"))
        s = await wait_phase(handle, "awaiting_approval")
        assert s.from_version == "v1.2.3" and s.to_version == "v1.2.2"
        assert s.approvals.eligible == ["alice", "bob", "carol"]

        await handle.signal(ServiceRollback.approve, Decision(approver="alice", id_token=aws.token("alice")))
        await handle.signal(ServiceRollback.approve, Decision(approver="alice", id_token=aws.token("alice"),
                                                              comment="again"))
        s = await wait_for(handle, lambda s: len(s.approvals.refused) == 1, what="duplicate refused")
        assert "count once" in s.approvals.refused[0].reason
        assert s.phase.value == "awaiting_approval"
        assert running_revision(aws) == (43, "v1.2.3")  # nothing changed before approval

        await handle.signal(ServiceRollback.approve, Decision(approver="bob", id_token=aws.token("bob")))
        result: RollbackStatus = await handle.result()  # the 30-minute monitoring window skips

    assert result.phase.value == "succeeded"
    assert running_revision(aws) == (42, "v1.2.2")
    assert [r.approver for r in result.approvals.received] == ["alice", "bob"]
    monitor = next(st for st in result.steps if st.name == "Monitor post-rollback")
    assert monitor.state.value == "succeeded"
    assert (monitor.ended_at - monitor.started_at).total_seconds() >= 30 * 60
    assert "6 round(s)" in monitor.detail  # every 5 minutes for 30 minutes
    assert {c.name for c in result.checks} >= {"health", "ready", "version", "smoke: search", "error_rate"}
    assert all(c.ok for c in result.checks)
    assert "# Rollback report" in result.report and "Execute rollback" in result.report


async def test_self_approval_and_unknown_approver_refused(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api, requested_by="alice",
                                                     id_token=aws.token("alice")))
        await wait_phase(handle, "awaiting_approval")
        await handle.signal(ServiceRollback.approve, Decision(approver="alice", id_token=aws.token("alice")))
        await handle.signal(ServiceRollback.approve, Decision(approver="frank", id_token=aws.token("frank")))
        await handle.signal(ServiceRollback.approve, Decision(
            approver="mallory", id_token=aws.token("mallory", email="mallory@rastup.com")))
        s = await wait_for(handle, lambda s: len(s.approvals.refused) == 3, what="three refusals")
        reasons = {r.approver: r.reason for r in s.approvals.refused}
        assert "requested this rollback" in reasons["alice"]
        assert "not an eligible approver" in reasons["frank"]  # proven, in the catalog, but security
        assert reasons["mallory"] == ("identity not proven: mallory@rastup.com is not in the catalog: nobody "
                                      "under people: has email mallory@rastup.com")
        assert s.approvals.received == [] and s.phase.value == "awaiting_approval"
        await handle.signal(ServiceRollback.reject, Decision(approver="bob", id_token=aws.token("bob"),
                                                             reason="wrong service"))
        result = await handle.result()
    assert result.phase.value == "rejected"
    assert "wrong service" in result.message


async def test_reject_ends_with_no_ecs_change(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api))
        await wait_phase(handle, "awaiting_approval")
        await handle.signal(ServiceRollback.reject, Decision(approver="carol", id_token=aws.token("carol"),
                                                             reason="fix forward instead"))
        result = await handle.result()
    assert result.phase.value == "rejected"
    assert running_revision(aws) == (43, "v1.2.3")
    assert aws.faults.calls["UpdateService"] == 0
    assert [st.state.value for st in result.steps if st.name == "Execute rollback"] == ["pending"]


async def test_a_reject_without_a_reason_is_refused_and_recorded(ts_env, aws, catalog):
    """Issue 14: only starter.py refused an empty reason; a signal from the Web UI or temporal recorded it."""
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api))
        await wait_phase(handle, "awaiting_approval")
        # as the Web UI sends it: one JSON argument, the reason left empty (or blank)
        await handle.signal("reject", {"approver": "carol", "id_token": aws.token("carol"), "reason": " "})
        s = await wait_for(handle, lambda s: s.approvals.refused, what="the empty reject refused")
        assert s.phase.value == "awaiting_approval" and s.approvals.rejected_by is None
        [refusal] = s.approvals.refused
        assert (refusal.approver, refusal.action) == ("carol", "reject")
        assert refusal.reason.startswith("a rejection needs a reason: say why, so the next person knows")
        outcome = await handle.execute_update(ServiceRollback.decide, DecisionRequest(
            decision="reject", approver="carol", id_token=aws.token("carol")))
        assert not outcome.counted and outcome.message.startswith("a rejection needs a reason"), outcome

        await handle.signal(ServiceRollback.reject, Decision(approver="carol", id_token=aws.token("carol"),
                                                             reason="fix forward instead"))
        result = await handle.result()
    assert result.phase.value == "rejected" and result.approvals.rejected_by.comment == "fix forward instead"
    assert [r.reason[:28] for r in result.approvals.refused] == ["a rejection needs a reason: "] * 2
    assert aws.faults.calls["UpdateService"] == 0


async def test_the_slack_reject_button_needs_no_typed_reason(ts_env, aws, catalog):
    """A button carries no text (the #incidents thread does): a signed Reject click counts as it did."""
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api))
        await wait_phase(handle, "awaiting_approval")
        await handle.signal(ServiceRollback.reject, Decision(approver="carol",
                                                             slack=slack_proof("U0CAROL", "reject", handle)))
        result = await handle.result()
    assert result.phase.value == "rejected" and result.approvals.rejected_by.approver == "carol"
    assert result.approvals.refused == []


async def test_no_decision_times_out_having_changed_nothing(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api))
        await wait_phase(handle, "awaiting_approval")
        result = await handle.result()  # 4 hours skip by
    assert result.phase.value == "timed_out"
    assert "no decision within 240 minutes" in result.message
    assert running_revision(aws) == (43, "v1.2.3")
    assert aws.faults.calls["UpdateService"] == 0
    # SEV-1's response time is 30 minutes: reminders were sent while waiting
    assert sum("reminder sent" in e.what for e in result.events) == 7


async def test_raising_severity_recomputes_the_requirement(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api, severity="SEV-1"))
        await wait_phase(handle, "awaiting_approval")
        await handle.signal(ServiceRollback.escalate, Escalation(severity="SEV-0", by="dana", reason="more users affected",
                                                                    id_token=aws.token("dana")))
        s = await wait_for(handle, lambda s: s.severity == "SEV-0", what="escalation")
        assert s.approvals.required[0].count == 2
        await handle.signal(ServiceRollback.approve, Decision(approver="alice", id_token=aws.token("alice")))
        s = await wait_for(handle, lambda s: len(s.approvals.received) == 1, what="one approval")
        assert s.phase.value == "awaiting_approval"  # SEV-1 would have been satisfied by now
        # ... and lowering to SEV-3 with the on-call engineer approving ends the wait
        await handle.signal(ServiceRollback.escalate, Escalation(severity="SEV-3", by="dana", reason="major outage now",
                                                                    id_token=aws.token("dana")))
        await handle.signal(ServiceRollback.approve, Decision(approver="dana", id_token=aws.token("dana")))
        result = await handle.result()
    assert result.phase.value == "succeeded"
    assert any("severity changed SEV-1 -> SEV-0 by dana" in e.what for e in result.events)
    assert [(c.from_severity, c.to_severity, c.by, c.reason, c.proof.kind) for c in result.severity_changes] == [
        ("SEV-1", "SEV-0", "dana", "more users affected", "oidc"), ("SEV-0", "SEV-3", "dana", "major outage now", "oidc")]
    assert running_revision(aws) == (42, "v1.2.2")


async def test_on_call_requester_at_sev2_is_approved_at_start(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api, severity="SEV-2", requested_by="dana",
                                                     id_token=aws.token("dana")))
        result = await handle.result()
    assert result.phase.value == "succeeded"
    assert result.approvals.received[0].approver == "dana"
    assert "approved at start" in result.approvals.received[0].note
    proof = result.approvals.received[0].proof
    assert (proof.kind, proof.issuer, proof.subject) == ("oidc", f"{aws.http_base}/oidc", "dana@rastup.com")
    assert result.requester_proof == proof
