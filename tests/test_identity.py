"""Authority that cannot be forged (issue 9): every approval, rejection, severity change and
requester privilege counts only with a proof the worker verifies.

Real parts: the sandbox's OIDC issuer serving its discovery document and JWKS over HTTP (the tokens
are really signed, the worker really fetches the keys), the worker's verification activity, the
time-skipping server, moto behind every AWS call (tests/support/moto_faults.py counts them). Each
forged attempt is sent the way an outsider with access to Temporal would send it (a signal as the
Web UI sends it, the ``decide`` update as starter.py does, a start typed in the Web UI), counts for
nothing, changes nothing in AWS, and is recorded with its reason.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from activities.identity import mint_automation_token
from common.api import Rollbacks, workflow_id
from common.catalog import CatalogError, load_catalog
from common.identity import request_digest
from common.models import Decision, DecisionRequest, Escalation, RollbackStatus, ServiceRollbackInput
from common.settings import Settings
from sandbox.catalog import alert_rules
from tests.conftest import AUTOMATION_KEY, RunCatalog, id_token, in_process_worker, write_catalog
from tests.helpers import bad_metric, cancel_when_idle, new_id, running_revision, status_of, wait_for, wait_phase
from tests.support.recorder import Recorder
from worker import build_worker
from workflows.flags import FeatureFlagRollback
from workflows.service import ServiceRollback

BAD, GOOD = (43, "v1.2.3"), (42, "v1.2.2")


def request(service: str, **kw) -> ServiceRollbackInput:
    fields = dict(service=service, severity="SEV-1", requested_by="zoe", reason="error rate after v1.2.3",
                  monitor_minutes=5)
    fields.update(kw)
    if "id_token" not in kw and "automation_token" not in kw:
        fields["id_token"] = id_token(fields["requested_by"])
    return ServiceRollbackInput(**fields)


async def start(env, worker, req, wf_id: str | None = None):
    return await env.client.start_workflow(ServiceRollback.run, req, id=wf_id or new_id("id"),
                                           task_queue=worker.task_queue)


async def cancelled(handle) -> None:
    """Cancel, and wait until the run has closed (and so let go of its target)."""
    await cancel_when_idle(handle)


def unchanged(aws) -> None:
    assert aws.faults.calls["UpdateService"] == 0 and aws.faults.calls["ModifyListener"] == 0
    assert running_revision(aws) == BAD


# --- OIDC tokens: forged, stale, someone else's ---------------------------------------------

async def test_forged_stale_and_borrowed_tokens_count_for_nothing(ts_env, aws, catalog):
    alice = {"sub": "alice", "email": "alice@rastup.com"}
    now = time.time()
    full = {**alice, "iss": aws.issuer.url, "aud": aws.issuer.audience, "iat": int(now), "exp": int(now) + 600}
    forged = {  # what was sent -> the reason recorded
        "no proof": (None, "no proof was sent: send id_token"),
        "expired": (aws.issuer.mint(alice, issued=now - 3600, minutes=10), "token expired 50 min ago"),
        "wrong audience": (aws.issuer.mint({**alice, "aud": "another-app"}),
                           "token is for audience 'another-app', not 'rollback-orchestrator'"),
        "wrong issuer": (aws.issuer.mint({**alice, "iss": "https://login.evil.example/"}),
                         "token issued by 'https://login.evil.example/', not the catalog's issuer"),
        "wrong key": (aws.issuer.mint(alice, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      "token signature does not verify with the issuer's keys (forged or altered)"),
        "alg none": (jwt.encode(full, None, algorithm="none"), "token signed with alg 'none'; accepted: RS256, ES256"),
        "HS256 with a guessable key": (jwt.encode(full, "the-issuer-public-key-as-a-secret-0123456789",
                                                  algorithm="HS256", headers={"kid": aws.issuer.kid}),
                                       "token signed with alg 'HS256'"),
        "not in the catalog": (aws.issuer.mint({"sub": "mallory", "email": "mallory@rastup.com"}),
                               "mallory@rastup.com is not in the catalog"),
        "someone else's": (id_token("bob"), "the token proves bob (bob@rastup.com), not alice"),
        "too old": (aws.issuer.mint(alice, issued=now - 2 * 3600, minutes=180),
                    "token issued 120 min ago; tokens up to 60 min old are accepted"),
        "not valid yet": (aws.issuer.mint({**alice, "nbf": int(now) + 600}), "token not valid yet (nbf in 10 min)"),
        "not a token": ("let-me-in", "id_token is not a JWT"),
    }
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api))
        await wait_phase(handle, "awaiting_approval")
        for i, (what, (token, _)) in enumerate(forged.items()):
            # alternately as the Web UI sends a signal and as starter.py sends the decide update
            if i % 2:
                outcome = await handle.execute_update(ServiceRollback.decide, DecisionRequest(
                    decision="approve", approver="alice", id_token=token))
                assert not outcome.counted and outcome.message.startswith("identity not proven: "), what
            else:
                await handle.signal(ServiceRollback.approve, Decision(approver="alice", id_token=token))
        await handle.signal(ServiceRollback.reject, Decision(approver="alice", reason="forged reject"))
        s = await wait_for(handle, lambda s: len(s.approvals.refused) == len(forged) + 1, what="every refusal")
        for (what, (_, reason)), refused in zip(forged.items(), s.approvals.refused):
            assert (refused.approver, refused.action) == ("alice", "approve"), what
            assert refused.reason.startswith("identity not proven: ") and reason in refused.reason, (what, refused)
        assert (s.approvals.refused[-1].action, s.approvals.refused[-1].reason.split(":")[0]) == (
            "reject", "identity not proven")
        assert s.phase.value == "awaiting_approval" and s.approvals.received == [] and s.approvals.rejected_by is None
        unchanged(aws)
        dumped = s.model_dump_json()
        assert not any(token and token in dumped for token, _ in forged.values())  # reasons, never tokens

        outcome = await handle.execute_update(ServiceRollback.decide, DecisionRequest(
            decision="approve", approver="alice", id_token=id_token("alice")))
        assert outcome.counted, outcome.message
        result: RollbackStatus = await handle.result()
    assert result.phase.value == "succeeded" and running_revision(aws) == GOOD
    proof = result.approvals.received[0].proof
    assert (proof.kind, proof.issuer, proof.subject) == ("oidc", f"{aws.http_base}/oidc", "alice@rastup.com")
    assert "Approved by: alice at " in result.report and f"[OIDC token from {aws.http_base}/oidc" in result.report
    assert "Refused decisions: alice (approve): identity not proven: no proof was sent" in result.report


# --- requester privileges: a typed requester gets none -------------------------------------

def automation_catalog(tmp_path: Path, aws) -> RunCatalog:
    catalog = write_catalog(tmp_path, aws, {"automation_may_proceed": ["alertmanager:high-error-rate",
                                                                       "auto-rollback:error-rate"]})
    catalog.data["alert_rules"] = alert_rules()
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    load_catalog(catalog.path)  # a catalog the worker accepts
    return catalog


async def test_a_typed_requester_gets_no_privilege_and_waits_for_proven_approvals(ts_env, aws, tmp_path):
    """The Web UI starts of the issue: 'alertmanager:high-error-rate' at SEV-1 (the automation rule),
    'dana' at SEV-2 (the on-call engineer's own approval), dana's kill switch at SEV-4: each waits."""
    catalog = automation_catalog(tmp_path, aws)
    svc = catalog.api
    typed = {"service": svc, "severity": "SEV-1", "requested_by": "alertmanager:high-error-rate",
             "reason": "alertmanager alert HighErrorRate: 5xx at 2.4 %"}
    signed_for_another = mint_automation_token(
        SecretStr(AUTOMATION_KEY), requested_by=typed["requested_by"], kind="service", target=svc,
        digest=request_digest(ServiceRollbackInput(**{**typed, "severity": "SEV-3"})), via="receiver")
    attempts = [  # (start input as typed in the Web UI, why its requester is not proven)
        (typed, "no proof was sent"),
        ({**typed, "automation_token": jwt.encode({"sub": typed["requested_by"]}, "x" * 32, algorithm="HS256")},
         "automation token not signed with the worker's ROLLBACK_AUTOMATION_KEY"),
        ({**typed, "automation_token": signed_for_another},
         "automation token was signed for another request (this one was changed after it was signed)"),
        ({**typed, "severity": "SEV-2", "requested_by": "dana", "reason": "errors"}, "no proof was sent"),
        ({**typed, "severity": "SEV-2", "requested_by": "dana", "reason": "errors", "id_token": id_token("alice")},
         "the token proves alice (alice@rastup.com), not dana"),
    ]
    async with in_process_worker(ts_env.client, catalog) as worker:
        for fields, why in attempts:
            handle = await ts_env.client.start_workflow("ServiceRollback", fields, id=new_id("typed"),
                                                        task_queue=worker.task_queue)
            s = await wait_phase(handle, "awaiting_approval")
            assert s.requester_proof is None and why in s.requester_not_proven, (fields["requested_by"], s)
            assert s.approvals.received == [] and not s.approvals.satisfied
            assert s.approvals.eligible == (["dana"] if fields["severity"] == "SEV-2" else ["alice", "bob", "carol"])
            await cancelled(handle)
        # the kill switch policy (on-call engineer at SEV-3/4: immediate) needs a proven requester too
        flag = catalog.name("payments_disabled")
        handle = await ts_env.client.start_workflow(
            "FeatureFlagRollback", {"flag": flag, "action": "kill_switch", "severity": "SEV-4",
                                    "requested_by": "dana", "reason": "card data exposed"},
            id=new_id("typed-kill"), task_queue=worker.task_queue)
        s = await wait_phase(handle, "awaiting_approval")
        assert s.approvals.eligible == ["dana"] and s.approvals.received == []
        await handle.signal(FeatureFlagRollback.approve, Decision(approver="dana"))  # still typed: refused
        s = await wait_for(handle, lambda s: s.approvals.refused, what="refusal")
        assert s.phase.value == "awaiting_approval"
        assert aws.faults.calls["CreateHostedConfigurationVersion"] == 0 and aws.faults.calls["StartDeployment"] == 0
        await cancelled(handle)
    unchanged(aws)


# --- severity changes are decisions too ----------------------------------------------------

async def test_escalations_need_proof_a_reason_and_the_right_person(ts_env, aws, catalog):
    slack = Recorder().start()
    settings = Settings(ROLLBACK_SLACK_WEBHOOK_URL=SecretStr(f"{slack.url}/slack"))
    try:
        async with build_worker(ts_env.client, settings, catalog.path, task_queue=f"tq-{uuid.uuid4().hex[:8]}") \
                as worker:
            handle = await start(ts_env, worker, request(catalog.api, severity="SEV-0"))
            await wait_phase(handle, "awaiting_approval")
            down = dict(severity="SEV-4", reason="complete outage")
            for e in (Escalation(by="dana", **down),  # the typed "dana"
                      Escalation(by="mallory", id_token=id_token("mallory", email="mallory@rastup.com"), **down),
                      Escalation(by="zoe", id_token=id_token("zoe"), **down),
                      Escalation(by="alice", id_token=id_token("alice"), **down),
                      Escalation(by="dana", id_token=id_token("dana"), severity="SEV-4")):
                await handle.signal(ServiceRollback.escalate, e)
            s = await wait_for(handle, lambda s: len(s.approvals.refused) == 5, what="five refusals")
            reasons = [r.reason.removeprefix("severity change SEV-0 -> SEV-4 not applied: ") for r in s.approvals.refused]
            assert reasons[0].startswith("identity not proven: no proof was sent")
            assert reasons[1].startswith("identity not proven: mallory@rastup.com is not in the catalog")
            assert reasons[2] == "zoe may not change the severity (policy.severity_setters: on-call engineers, approvers)"
            assert reasons[3] == ("SEV-0 -> SEV-4 lowers the approvals needed, so it takes someone the matrix accepts "
                                  "as approver at SEV-4 (dana); alice is not")
            assert reasons[4].startswith("a severity change needs a reason")
            assert {r.action for r in s.approvals.refused} == {"escalate"}
            assert s.severity == "SEV-0" and s.severity_changes == [] and s.approvals.required[0].count == 2
            unchanged(aws)

            await handle.signal(ServiceRollback.escalate, Escalation(by="dana", id_token=id_token("dana"), **down))
            s = await wait_for(handle, lambda s: s.severity == "SEV-4", what="the proven escalation")
            change = s.severity_changes[0]
            assert (change.from_severity, change.to_severity, change.by, change.reason, change.proof.kind) == (
                "SEV-0", "SEV-4", "dana", "complete outage", "oidc")
            # zoe asked, not the on-call engineer: lowering the bar does not approve it
            assert s.phase.value == "awaiting_approval" and s.approvals.eligible == ["dana"]
            unchanged(aws)
            await handle.signal(ServiceRollback.approve, Decision(approver="dana", id_token=id_token("dana")))
            result: RollbackStatus = await handle.result()
        assert result.phase.value == "succeeded" and running_revision(aws) == GOOD
        texts = [r.body["text"] for r in slack.at("/slack")]
        announced = [t for t in texts if t.startswith("SEVERITY CHANGED")]
        assert len(announced) == 1 and announced[0].startswith(
            f"SEVERITY CHANGED: service rollback of {catalog.api}: SEV-0 -> SEV-4 by dana: complete outage.")
        ask = next(r.body for r in slack.at("/slack") if "needs approval" in r.body["text"])
        buttons = ask["blocks"][1]["elements"]  # Approve / Reject for this run (Slack interactive approvals)
        assert [(b["action_id"], b["value"]) for b in buttons] == [
            ("approve", f"{handle.id}/{handle.result_run_id}"), ("reject", f"{handle.id}/{handle.result_run_id}")]
    finally:
        slack.stop()


async def test_a_severity_change_never_decides_a_paused_step(ts_env, aws, catalog):
    # v1.2.2 looks bad too: the check before the second step fails and the rollback pauses at 50 %
    bad_metric(aws, "Rastup/API", "ErrorRate", 9.0, {"Service": "api", "Version": "v1.2.2"})
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await start(ts_env, worker, request(catalog.api_bg, severity="SEV-2", requested_by="dana",
                                                     rollout_percentages=[50, 100]))
        await wait_for(handle, lambda s: s.extra.get("rollout_percentage") == 50, what="first step")
        await ts_env.sleep(timedelta(minutes=6))
        await wait_phase(handle, "paused", timeout=60)
        modified = aws.faults.calls["ModifyListener"]
        # the on-call engineer (the requester, proven) lowers the bar to SEV-4: before, this approved the pause
        await handle.signal(ServiceRollback.escalate, Escalation(severity="SEV-4", by="dana", reason="outage",
                                                                 id_token=id_token("dana")))
        s = await wait_for(handle, lambda s: s.severity == "SEV-4", what="escalation")
        assert any("a severity change never decides it" in e.what for e in s.events)
        await ts_env.sleep(timedelta(minutes=10))
        s = await status_of(handle)
        assert s.phase.value == "paused" and not s.approvals.satisfied and s.approvals.received == []
        assert aws.faults.calls["ModifyListener"] == modified  # traffic held at 50 %
        await handle.signal(ServiceRollback.reject, Decision(approver="dana", id_token=id_token("dana"),
                                                             reason="investigate first"))
        with pytest.raises(Exception):
            await handle.result()
    assert aws.faults.calls["ModifyListener"] == modified


# --- the decision matrix end to end, with proofs -------------------------------------------

@pytest.mark.parametrize("severity,approvers", [
    ("SEV-0", ["alice", "bob"]), ("SEV-1", ["carol"]), ("SEV-2", ["dana"]), ("SEV-3", ["dana"]), ("SEV-4", ["dana"]),
])
async def test_the_decision_matrix_with_proven_approvals(ts_env, aws, catalog, severity, approvers):
    """Through the API starter.py uses (the decide update with each approver's own ID token)."""
    async with in_process_worker(ts_env.client, catalog) as worker:
        rb = Rollbacks(ts_env.client, worker.task_queue, catalog.path)
        handle = await start(ts_env, worker, request(catalog.api, severity=severity),
                             wf_id=workflow_id("service", catalog.api))  # the id rb.start gives it
        for i, person in enumerate(approvers):
            outcome = await rb.approve("service", catalog.api, approver=person, id_token=id_token(person))
            assert outcome.counted, outcome.message
            if i < len(approvers) - 1:
                unchanged(aws)
        result: RollbackStatus = await handle.result()
    assert result.phase.value == "succeeded" and running_revision(aws) == GOOD
    assert [(r.approver, r.proof.kind, r.proof.subject) for r in result.approvals.received] == [
        (p, "oidc", f"{p}@rastup.com") for p in approvers]
    assert result.requester_proof.subject == "zoe@rastup.com"


# --- identity.mode: unverified, and catalogs that say nothing --------------------------------

async def test_unverified_mode_must_be_explicit_and_says_so_everywhere(ts_env, aws, tmp_path):
    catalog = write_catalog(tmp_path, aws)
    catalog.data["identity"] = {"mode": "unverified"}
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    slack = Recorder().start()
    settings = Settings(ROLLBACK_SLACK_WEBHOOK_URL=SecretStr(f"{slack.url}/slack"))
    try:
        async with build_worker(ts_env.client, settings, catalog.path, task_queue=f"tq-{uuid.uuid4().hex[:8]}") \
                as worker:
            handle = await start(ts_env, worker, request(catalog.api, id_token=None))
            await wait_phase(handle, "awaiting_approval")
            await handle.signal(ServiceRollback.approve, Decision(approver="alice"))  # a typed name counts
            result: RollbackStatus = await handle.result()
    finally:
        slack.stop()
    assert result.phase.value == "succeeded" and not result.verified
    assert [(r.approver, r.proof.kind) for r in result.approvals.received] == [("alice", "unverified")]
    assert "Approvals are not verified" in result.report
    assert any(e.what.startswith("APPROVALS ARE NOT VERIFIED") for e in result.events)
    texts = [r.body["text"] for r in slack.at("/slack")]
    assert texts and all(t.startswith("[approvals are not verified] ") for t in texts)


def test_a_catalog_that_does_not_say_how_people_prove_who_they_are_is_refused(tmp_path, aws):
    base = write_catalog(tmp_path, aws).data

    def problems(data: dict) -> str:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        with pytest.raises(CatalogError) as e:
            load_catalog(path)
        return str(e.value)

    no_identity = {k: v for k, v in base.items() if k != "identity"}
    assert "identity: missing: say how approvals are proven" in problems(no_identity)
    assert "or identity: {mode: unverified} to accept typed names" in problems(no_identity)
    people = dict(base["people"])
    del people["carol"]
    text = problems({**base, "people": people})
    assert ("people.approvers: 'carol' has no email (identity.oidc.person_claim) or slack_id under people.carol, "
            "so nobody could prove to be carol") in text
    text = problems({**base, "people": {**base["people"], "bob": {"mail": "bob@rastup.com"}}})
    assert "people.bob.mail: unknown field; a person takes slack_id and the claim identity.oidc.person_claim " \
           "names ('email')" in text
    text = problems({**base, "people": {**base["people"], "bob": {"email": "ALICE@rastup.com"}}})
    assert "people.bob.email: 'ALICE@rastup.com' is also alice's; each person needs their own" in text
    text = problems({**base, "identity": {"mode": "oidc", "oidc": {**base["identity"]["oidc"], "algorithms": ["HS256"]}}})
    assert "'HS256' not allowed: ID tokens are checked with the provider's public keys" in text
    text = problems({**base, "people": {**base["people"], "aprovers": ["alice"]}})
    assert "'aprovers' is not a role (roles: approvers, on_call, dbas, security)" in text


def test_the_banner_and_the_cli_say_when_approvals_are_not_verified(tmp_path, aws):
    from rich.console import Console

    from common.catalog import Catalog
    from starter import render
    from worker import identity_line

    data = write_catalog(tmp_path, aws).data
    verified = Catalog.model_validate(data)
    unverified = Catalog.model_validate({**data, "identity": {"mode": "unverified"}})
    assert identity_line(verified, Settings()).startswith(
        f"Identity: decisions count only with proof: OIDC tokens from {aws.http_base}/oidc, Slack buttons")
    assert "APPROVALS ARE NOT VERIFIED" in identity_line(unverified, Settings())
    status = RollbackStatus(kind="service", target="api", severity="SEV-1", requested_by="zoe", reason="r",
                            verified=False, requester_not_proven="no proof was sent")
    console = Console(record=True, width=200)
    console.print(render(status))
    text = console.export_text()
    assert "approvals are not verified (identity.mode: unverified)" in text
    assert "requested by zoe (not proven: no proof was sent)" in text
