"""The approval rules of the runbook's decision matrix, on the gate's own logic (no server)."""

from datetime import datetime, timezone

import pytest

from common.catalog import People
from common.identity import ProofRecord
from common.models import Decision
from common.policy import Policy
from workflows.gate import ApprovalGate, ExtraRequirement

NOW = datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc)
PEOPLE = People(approvers=["alice", "bob", "carol"], on_call=["dana"], dbas=["erin"])
OIDC = ProofRecord(kind="oidc", issuer="https://login.rastup.com/", subject="dana@rastup.com")
AUTOMATION = ProofRecord(kind="automation", issuer="auto-rollback", subject="auto-rollback:error-rate")


def gate(severity: str, requester: str = "zoe", **kw) -> ApprovalGate:
    g = ApprovalGate(policy=kw.pop("policy", Policy()), people=PEOPLE, requester=requester, severity=severity, **kw)
    g.open = True
    return g


def test_sev0_needs_two_distinct_approvers():
    g = gate("SEV-0")
    assert g.approve(Decision(approver="alice"), NOW)[0]
    assert not g.view.satisfied
    counted, why = g.approve(Decision(approver="alice"), NOW)
    assert not counted and "count once" in why
    assert not g.view.satisfied
    assert g.approve(Decision(approver="bob"), NOW)[0]
    assert g.view.satisfied


def test_requester_cannot_approve_own_sev1_and_is_not_listed_as_eligible():
    g = gate("SEV-1", requester="alice")
    assert "alice" not in g.view.eligible
    counted, why = g.approve(Decision(approver="alice"), NOW)
    assert not counted and "requested this rollback" in why
    assert g.view.refused[0].approver == "alice"


def test_unknown_approver_refused_with_who_could():
    g = gate("SEV-1")
    counted, why = g.approve(Decision(approver="mallory"), NOW)
    assert not counted
    assert "not an eligible approver" in why and "alice" in why


def test_sev2_on_call_requester_is_approved_at_start_but_others_wait():
    g = gate("SEV-2", requester="dana", requester_proof=OIDC)
    assert g.approve_at_start(NOW) and g.view.received[0].proof == OIDC
    g = gate("SEV-2", requester="zoe")
    assert not g.approve_at_start(NOW)
    assert g.view.eligible == ["dana"]
    assert not g.approve(Decision(approver="alice"), NOW)[0]  # approvers are not on call
    assert g.approve(Decision(approver="dana"), NOW)[0] and g.view.satisfied


def test_escalation_recomputes_requirement():
    g = gate("SEV-1")
    g.approve(Decision(approver="alice"), NOW)
    assert g.view.satisfied
    g.escalate("SEV-0")
    assert not g.view.satisfied and g.waiting_for().startswith("1 approver")


def test_extra_requirement_needs_a_different_person():
    people = People(approvers=["alice", "erin"], on_call=["dana"], dbas=["erin"])
    g = ApprovalGate(policy=Policy(), people=people, requester="zoe", severity="SEV-1",
                     extra=[ExtraRequirement(role="dbas")])
    g.open = True
    g.approve(Decision(approver="erin"), NOW)
    assert not g.view.satisfied  # erin cannot be both the approver and the DBA
    g.approve(Decision(approver="alice"), NOW)
    assert g.view.satisfied
    assert {r.label: r.met_by for r in g.view.required} == {"approver (SEV-1)": ["alice"],
                                                            "database administrator": ["erin"]}


@pytest.mark.parametrize("sev,n", [("SEV-0", 2), ("SEV-1", 1), ("SEV-2", 1), ("SEV-3", 1), ("SEV-4", 1)])
def test_default_policy_is_the_runbook_matrix(sev, n):
    assert Policy().rule(sev).approvals == n
    assert Policy().rule(sev).approver_role == ("approvers" if sev in ("SEV-0", "SEV-1") else "on_call")


def test_automation_listed_in_the_policy_proceeds_but_extra_requirements_stay():
    listed = Policy(automation_may_proceed=["auto-rollback:error-rate"])
    g = gate("SEV-3", requester="auto-rollback:error-rate", policy=listed, requester_proof=AUTOMATION)
    assert g.approve_at_start(NOW) and g.view.satisfied
    g = gate("SEV-3", requester="alertmanager:some-other-rule", policy=listed, requester_proof=AUTOMATION)
    assert not g.approve_at_start(NOW) and not g.view.satisfied
    g = gate("SEV-3", requester="auto-rollback:error-rate", extra=[ExtraRequirement(role="dbas")], policy=listed,
             requester_proof=AUTOMATION)
    g.approve_at_start(NOW)
    assert not g.view.satisfied and g.view.eligible == ["erin"]


@pytest.mark.parametrize("requester", ["alertmanager:high-error-rate", "auto-rollback:error-rate"])
def test_nothing_is_automation_unless_the_catalog_lists_it(requester):
    """Copying the README's example rule high-error-rate must not make it a rollback without approval."""
    assert Policy().automation_may_proceed == []
    g = gate("SEV-3", requester=requester, requester_proof=AUTOMATION)
    assert not g.approve_at_start(NOW) and not g.view.satisfied


def test_a_typed_requester_gets_no_privilege():
    """A name typed into requested_by, unproven, is neither the on-call engineer nor automation."""
    listed = Policy(automation_may_proceed=["auto-rollback:error-rate"])
    for requester in ("dana", "auto-rollback:error-rate"):
        g = gate("SEV-2", requester=requester, policy=listed)
        assert not g.approve_at_start(NOW) and g.view.received == [] and not g.view.satisfied
    # automation's proof does not make a person of it, nor a person's proof automation
    assert not gate("SEV-2", requester="dana", requester_proof=AUTOMATION).approve_at_start(NOW)
    assert not gate("SEV-2", requester="auto-rollback:error-rate", requester_proof=OIDC,
                    policy=listed).approve_at_start(NOW)
    # identity.mode: unverified (said explicitly in the catalog): names count as typed
    assert gate("SEV-2", requester="dana", requester_proof=ProofRecord(kind="unverified")).approve_at_start(NOW)


def test_who_the_matrix_accepts_at_a_severity():
    g = gate("SEV-0", requester="alice")
    assert g.accepts_at("SEV-4", "dana") and not g.accepts_at("SEV-4", "alice")
    assert g.accepts_at("SEV-1", "bob") and not g.accepts_at("SEV-1", "alice")  # never the requester at SEV-1
