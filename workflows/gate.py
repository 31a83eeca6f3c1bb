"""The approval gate, written once for every procedure.

Who must approve comes from the policy (the runbook's decision matrix) plus any extra
requirement a procedure adds (a DBA for a snapshot restore, two people for a destroying
Terraform plan). Each approval is checked as it arrives; one that does not count is kept
in ``refused`` with the reason. Approvals are matched to requirement slots so one person
never fills two slots ("two approvals from one person count once").

The gate counts people, not proofs: ``workflows/base.py`` verifies each decision's proof first
(``common/identity.py``) and hands the gate only proven ones, with their ``ProofRecord``. The
requester's privileges (the on-call engineer's own approval, automation the policy lets proceed)
need ``requester_proof``: a typed name alone gets none.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Awaitable, Callable, Literal

from temporalio import workflow

from common.catalog import People
from common.identity import ProofRecord
from common.models import ApprovalRecord, Approvals, Decision, Refusal, Requirement
from common.policy import ROLE_LABEL, Policy, Role


def severity_approvers(policy: Policy, people: People, requester: str, severity: str) -> frozenset[str]:
    """Whom the matrix accepts as approver at ``severity`` (never the requester where the rule says so)."""
    rule = policy.rule(severity)
    eligible = set(getattr(people, rule.approver_role))
    if not rule.requester_may_approve:
        eligible.discard(requester)
    return frozenset(eligible)


@dataclass
class ExtraRequirement:
    """A requirement a procedure adds on top of the severity's."""

    role: Role
    count: int = 1
    label: str | None = None
    # True: ``count`` is a floor on that role's approvers in total, and the approvers the severity
    # itself requires from the same role count toward it ("two approvers whatever the severity").
    at_least: bool = False


@dataclass
class _Slot:
    label: str
    eligible: frozenset[str]


GateOutcome = Literal["approved", "rejected", "timed_out"]


@dataclass
class ApprovalGate:
    policy: Policy
    people: People
    requester: str
    severity: str
    extra: list[ExtraRequirement] = field(default_factory=list)
    context: str = ""
    view: Approvals = field(default_factory=Approvals)
    open: bool = False
    requester_proof: ProofRecord | None = None  # None: requested_by is not proven, so it has no privilege
    auto_approve: bool = True  # False for a paused step: only an explicit approve / reject decides it

    def __post_init__(self) -> None:
        self.view.context = self.context
        self._recompute()

    # --- who may approve -------------------------------------------------------------

    @property
    def automation(self) -> bool:
        """The requester is automation the policy lets proceed (runbook: Automation), proven as such."""
        return self.requester in self.policy.automation_may_proceed and self._proven("automation")

    @property
    def vouched(self) -> list[str]:
        """A parent rollback's approval, signed by the worker for exactly this request (a release
        rollback's component): it satisfies this gate; a paused step still asks."""
        proof = self.requester_proof
        return list(proof.approved_by) if self.auto_approve and proof is not None and proof.via else []

    def _proven(self, *kinds: str) -> bool:
        proof = self.requester_proof
        return proof is not None and proof.kind in (*kinds, "unverified")

    def accepts_at(self, severity: str, person: str) -> bool:
        """Would the matrix accept ``person`` as approver at ``severity``?"""
        return person in severity_approvers(self.policy, self.people, self.requester, severity)

    def _requirements(self) -> list[tuple[str, int, frozenset[str]]]:
        rule = self.policy.rule(self.severity)
        reqs = []
        if self.vouched:
            return []
        if self.automation:
            return [(extra.label or ROLE_LABEL[extra.role], extra.count,
                     frozenset(set(getattr(self.people, extra.role)) - {self.requester})) for extra in self.extra]
        eligible = severity_approvers(self.policy, self.people, self.requester, self.severity)
        reqs.append((f"{ROLE_LABEL[rule.approver_role]} ({self.severity})", rule.approvals, eligible))
        for extra in self.extra:
            names = set(getattr(self.people, extra.role)) - {self.requester}
            count = extra.count
            if extra.at_least and extra.role == rule.approver_role and not rule.requester_may_approve:
                count = max(0, count - rule.approvals)
            if count:
                reqs.append((extra.label or ROLE_LABEL[extra.role], count, frozenset(names)))
        return reqs

    def _slots(self) -> list[_Slot]:
        return [_Slot(label, elig) for label, count, elig in self._requirements() for _ in range(count)]

    def _match(self) -> dict[int, str]:
        """Maximum matching of distinct approvers to slots (augmenting paths; sizes are tiny)."""
        slots = self._slots()
        people = [r.approver for r in self.view.received]
        owner: dict[int, str] = {}

        def place(person: str, seen: set[int]) -> bool:
            for i, slot in enumerate(slots):
                if person in slot.eligible and i not in seen:
                    seen.add(i)
                    if i not in owner or place(owner[i], seen):
                        owner[i] = person
                        return True
            return False

        for person in people:
            place(person, set())
        return owner

    def _recompute(self) -> None:
        reqs = self._requirements()
        owner = self._match()
        slots = self._slots()
        required = []
        for label, count, elig in reqs:
            met = [owner[i] for i, s in enumerate(slots) if s.label == label and i in owner]
            required.append(Requirement(label=label, count=count, eligible=sorted(elig), met_by=met))
        self.view.required = required
        already = {r.approver for r in self.view.received}
        self.view.eligible = sorted(
            {p for r in required if len(r.met_by) < r.count for p in r.eligible} - already
        )
        self.view.satisfied = len(owner) == len(slots)

    @property
    def decided(self) -> bool:
        return self.view.satisfied or self.view.rejected_by is not None

    # --- decisions -------------------------------------------------------------------

    def _refuse(self, d: Decision, at: datetime, reason: str, action: str = "approve") -> tuple[bool, str]:
        self.view.refused.append(Refusal(approver=d.approver, at=at, reason=reason, action=action))
        return False, reason

    def approve(self, d: Decision, at: datetime, proof: ProofRecord | None = None) -> tuple[bool, str]:
        """Record an approval by a proven person; returns (counted, message)."""
        if not self.open:
            return self._refuse(d, at, "no approval is pending for this rollback right now")
        who = d.approver
        if any(r.approver == who for r in self.view.received):
            return self._refuse(d, at, f"{who} already approved; two approvals from one person count once")
        reqs = self._requirements()
        if not any(who in elig for _, _, elig in reqs):
            if who == self.requester:
                return self._refuse(d, at, f"{who} requested this rollback and cannot approve it at "
                                           f"{self.severity}; ask: {', '.join(self._all_eligible())}")
            return self._refuse(d, at, f"{who} is not an eligible approver for this {self.severity} "
                                       f"rollback (eligible: {', '.join(self._all_eligible()) or 'nobody'}); "
                                       "add them to the catalog's people or ask an eligible person")
        self.view.received.append(ApprovalRecord(approver=who, at=at, comment=d.comment, proof=proof))
        self._recompute()
        left = "approved" if self.view.satisfied else f"still waiting for: {self.waiting_for()}"
        return True, f"approval by {who} counted; {left}"

    def reject(self, d: Decision, at: datetime, proof: ProofRecord | None = None) -> tuple[bool, str]:
        if not self.open:
            return self._refuse(d, at, "no approval is pending for this rollback right now", "reject")
        if d.approver != self.requester and d.approver not in self._all_eligible():
            return self._refuse(d, at, f"{d.approver} may not reject this rollback "
                                       f"(eligible approvers and the requester may)", "reject")
        self.view.rejected_by = ApprovalRecord(approver=d.approver, at=at, comment=d.reason or d.comment,
                                               proof=proof)
        return True, f"rejected by {d.approver}"

    def escalate(self, severity: str) -> None:
        self.severity = severity
        self._recompute()

    def approve_at_start(self, at: datetime) -> bool:
        """SEV-2+: a rollback requested by the on-call engineer is approved at start; so is one
        requested by automation the policy lets proceed. Both only when the requester is proven.
        A component of a release rollback is approved by the release's one approval."""
        if self.vouched:
            if not self.view.received:
                via = self.requester_proof.via if self.requester_proof else ""
                self.view.received += [ApprovalRecord(approver=who, at=at, proof=self.requester_proof,
                                                      note=f"approved once for {via}") for who in self.vouched]
                self._recompute()
            return True
        if self.automation:
            if not any(r.approver == self.requester for r in self.view.received):
                self.view.received.append(ApprovalRecord(
                    approver=self.requester, at=at, proof=self.requester_proof,
                    note="automation allowed to proceed by policy (automation_may_proceed)"))
                self._recompute()
            return True
        rule = self.policy.rule(self.severity)
        if rule.requester_may_approve and self.requester in getattr(self.people, rule.approver_role) \
                and self._proven("oidc", "slack"):
            if not any(r.approver == self.requester for r in self.view.received):
                self.view.received.append(ApprovalRecord(
                    approver=self.requester, at=at, proof=self.requester_proof,
                    note=f"requested by the {ROLE_LABEL[rule.approver_role]} at {self.severity}: "
                         "approved at start per the decision matrix"))
                self._recompute()
            return True
        return False

    def _all_eligible(self) -> list[str]:
        return sorted({p for _, _, elig in self._requirements() for p in elig})

    def waiting_for(self) -> str:
        parts = [r.missing() for r in self.view.required if len(r.met_by) < r.count]
        return "; ".join(parts) or "nothing"

    # --- waiting (workflow code) -----------------------------------------------------

    async def wait(self, remind: Callable[[str], Awaitable[None]]) -> GateOutcome:
        """Wait for a decision with durable timers, reminding at the severity's response time."""
        self.open = True
        try:
            deadline = workflow.now() + timedelta(minutes=self.policy.approval_timeout_minutes)
            while not self.decided:
                left = (deadline - workflow.now()).total_seconds()
                if left <= 0:
                    return "timed_out"
                every = self.policy.reminder_minutes(self.severity) * 60
                try:
                    await workflow.wait_condition(lambda: self.decided, timeout=min(left, every))
                except asyncio.TimeoutError:
                    if deadline > workflow.now():
                        await remind(f"waiting for {self.waiting_for()}")
            return "rejected" if self.view.rejected_by else "approved"
        finally:
            self.open = False
