"""What every rollback procedure shares: status, signals, the approval step, the per-target
lock, phases and search attributes, the monitoring window, the final report.

A procedure subclasses ``RollbackWorkflow``, lists its runbook steps, and implements
``execute``; ``conduct`` wraps it with everything an on-call engineer relies on.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.catalog import CatalogActivities
    from activities.identity import IdentityActivities
    from activities.incidents import IncidentActivities, IncidentNote
    from activities.notify import Notification, NotifyActivities
    from activities.temporal_locks import LockActivities, LockHolder, LockRequest, LocksRequest, LocksResult
    from common.catalog import Catalog, UnknownTarget
    from common.catalog_scope import CatalogScope
    from common.identity import (
        Action, ProofCheck, ProofRecord, SeverityChange, SlackCallback, Verified, Vouch, lowers_the_bar,
        request_digest,
    )
    from common.models import (
        FINAL_PHASES, ActionResult, Approvals, CheckResult, Decision, DecisionOutcome, DecisionRequest, Escalation,
        Evidence, MonitoringProgress, Phase, Refusal, RollbackRequest, RollbackStatus,
    )
    from common.policy import ROLE_LABEL
    from common.temporal import KIND, PHASE, SEVERITY, TARGET
    from workflows import bounds, changes
    from workflows.changes import Ledger
    from workflows.checklist import evaluate as evaluate_checklist
    from workflows.gate import ApprovalGate, ExtraRequirement, severity_approvers
    from workflows.fast_path import FAST_PATH
    from workflows.options import BATCH, NOTIFY, VERIFY, call, read
    from workflows.pages import Pager
    from workflows.report import render_report, render_summary
    from workflows.timeline import Refused, StepFailed, Timeline, innermost_message as _innermost
    from workflows import telemetry
    from workflows.verdicts import PATCH as VERDICTS, blocking

APPROVAL = "Approval"
# The rules of issue 10 ("never worse"): resolve before announcing or locking, resource locks,
# a ledger of changes, cancel always wins, pages. Runs started before it replay as they ran.
NEVER_WORSE = "never-worse"
# Decisions and requester privileges count only with a verified proof (common/identity.py). Runs
# recorded before this replay as they ran: names counted as typed.
IDENTITY_PATCH = "identity-proofs"
# No evidence, no pass: a monitoring window in which a required check never had data does not mark
# the restored version known-good nor say "no regression".
MONITOR_EVIDENCE = "monitor-evidence"
# A rejection without a reason (the Web UI's or temporal's signal, not only starter.py) is refused and
# recorded, so whoever comes next learns why a rollback was stopped. Slack's Reject button carries no text
# (its thread in #incidents does): a signed click still counts.
REJECT_NEEDS_REASON = "reject-needs-reason"
# A decision's proof is checked by a regular activity in signal and update handlers, never a local one. A
# local activity's result reaches its handler at a wall-clock moment on the first run and at another on
# replay, so a handler resuming beside the procedure's own steps could order its commands differently:
# an escalation sent right after a start left a run that failed replay (TMPRL1100) and so wedged after a
# worker restart (the SDK's bug: temporalio/sdk-python#1573). Runs recorded before replay as they ran.
HANDLER_PROOFS = "handler-proofs-as-activities"
NO_REJECT_REASON = ('a rejection needs a reason: say why, so the next person knows ("reason" in the signal, '
                    'or starter.py reject --reason)')
MAX_REFUSALS = 100  # outsiders can send any number of forged decisions: the status keeps the latest


class GateClosed(Exception):
    """The gate ended without approval (rejected or timed out); nothing was changed."""


class RollbackWorkflow:
    """Base class. Guarantees, for every procedure:

    - nothing changes before the approvals the policy requires are in;
    - two rollbacks that would touch the same resource never act at once (the later one is refused,
      naming the running one);
    - nothing is announced or locked before the request is resolved (``begin``): a request that
      fails there announces nothing;
    - every step and every change is visible in ``status`` as it happens, and the phase is a
      search attribute;
    - a cancel always wins: no change starts after it, and the status says what was changed
      before it (workflows/changes.py).
    """

    kind = "rollback"
    customer_facing = False  # procedures set it from their catalog entry (status page updates)
    rehearsal_steps: tuple[str, ...] = ()  # steps whose changes customers never see (e.g. staging)

    def __init__(self) -> None:
        self._status: RollbackStatus | None = None
        self.timeline: Timeline | None = None
        self.gate: ApprovalGate | None = None
        self.catalog: Catalog | None = None
        self._early: list[tuple[str, Decision, Verified | None]] = []
        self._early_escalations: list[Escalation] = []
        self._early_evidence: list[Evidence] = []
        self._early_evidence_count = 0
        self._lock_ids: list[str] = []  # usually one; a fleet rollback also locks each member
        self.ledger: Ledger | None = None  # the changes made; None when replaying a run from before it
        self.pager: Pager | None = None
        self._begun = False  # resolved, locked and announced
        self._requester: ProofRecord | None = None  # how requested_by was proven (None: not, no privilege)
        # Decisions are verified concurrently but applied one at a time in the order they arrived.
        self._tickets, self._turn = 0, 0
        self._finished: set[int] = set()
        self._ending = False
        self.unverified: list[str] = []  # required checks with no evidence in the whole monitoring window
        self._fast = False  # workflows/fast_path.py; False when replaying a run from before it
        self._announcing: asyncio.Task[bool] | None = None

    @property
    def s(self) -> RollbackStatus:
        assert self._status is not None
        return self._status

    # --- handlers every procedure offers ---------------------------------------------

    @workflow.query
    def status(self) -> RollbackStatus | None:
        """Where the rollback stands: phase, versions, approvals, steps, checks."""
        return bounds.fit(self._status) if self._status is not None else None

    @workflow.signal
    async def approve(self, decision: Decision) -> None:
        await self._decide("approve", decision)

    @workflow.signal
    async def reject(self, decision: Decision) -> None:
        await self._decide("reject", decision)

    @workflow.update
    async def decide(self, req: DecisionRequest) -> DecisionOutcome:
        """Approve or reject and learn whether it counted once its proof is checked (starter.py, Slack)."""
        counted, message = await self._decide(req.decision, Decision(
            approver=req.approver, comment=req.comment, reason=req.reason, id_token=req.id_token, slack=req.slack))
        assert self.gate is not None
        return DecisionOutcome(counted=counted, message=message, approvals=self.gate.view)

    @decide.validator
    def _decide_validator(self, req: DecisionRequest) -> None:
        if self.gate is None or not self.gate.open:
            phase = self._status.phase.value if self._status else "starting"
            raise ValueError(f"no approval is pending for this rollback (phase: {phase})")

    @workflow.signal
    def add_evidence(self, e: Evidence) -> None:
        """An alert (or a repeat of one) about this target: kept in the status, changes nothing."""
        if self._status is None:
            if len(self._early_evidence) < bounds.MAX_EVIDENCE:
                self._early_evidence.append(e)
            self._early_evidence_count += 1
            return
        self.s.evidence_received += 1
        if len(self.s.evidence) >= bounds.MAX_EVIDENCE:
            return  # an alert storm: the first ones are kept verbatim, the rest counted
        self.s.evidence.append(e)
        self._event(f"evidence from {e.source}: {e.summary}" if e.summary else f"evidence from {e.source}")
        self._publish()

    @workflow.signal
    async def escalate(self, e: Escalation) -> None:
        """Change the severity (e.g. the incident got worse); the approval requirement follows.
        A decision like any other: it needs proof, a reason and a person the policy allows."""
        if not self._uses_proofs():
            self._escalate_as_typed(e)
            return
        ticket = self._take_ticket()
        announce = None
        try:
            proven = await self._prove(e.by, "escalate", id_token=e.id_token, handler=True)
            await workflow.wait_condition(lambda: self._turn == ticket and (self.catalog is not None or self._ending))
            announce = self._apply_escalation(e, proven)
        finally:
            self._done(ticket)
        if announce:
            await self._notify(announce)

    def _escalate_as_typed(self, e: Escalation) -> None:
        """Before identity proofs (histories recorded then): the name counted as typed."""
        if self._status is None:
            self._early_escalations.append(e)  # arrived with the start: applied once the status exists
            return
        if self._status.phase in FINAL_PHASES:
            return
        old = self.s.severity
        self.s.severity = e.severity
        self._event(f"severity changed {old} -> {e.severity} by {e.by}" + (f": {e.comment}" if e.comment else ""))
        workflow.upsert_search_attributes([SEVERITY.value_set(e.severity)])
        if self.gate is not None:
            self.gate.escalate(e.severity)
            if self.gate.open and self.gate.approve_at_start(workflow.now()):
                self._event(f"{self.s.requested_by} is on call: approved at {e.severity} per the decision matrix")
            self.s.approvals = self.gate.view
        self._publish()

    # --- identity: every decision's proof is checked here, once for every procedure ------

    def _uses_proofs(self) -> bool:
        return workflow.patched(IDENTITY_PATCH)

    def _take_ticket(self) -> int:
        self._tickets += 1
        return self._tickets - 1

    def _done(self, ticket: int) -> None:
        self._finished.add(ticket)
        while self._turn in self._finished:
            self._turn += 1

    async def _prove(self, claimed: str, action: Action, *, id_token: str | None = None,
                     slack: SlackCallback | None = None, automation_token: str | None = None,
                     kind: str = "", target: str = "", digest: str = "", handler: bool = False) -> Verified:
        """The verification activity's answer; a check that cannot run refuses, saying why. ``handler``: asked
        from a signal or update handler, where it is never a local activity (HANDLER_PROOFS)."""
        info = workflow.info()
        check = ProofCheck(claimed=claimed, action=action, workflow_id=info.workflow_id, run_id=info.run_id,
                           id_token=id_token, slack=slack, automation_token=automation_token, kind=kind,
                           target=target, request_digest=digest)
        local = self._fast and not (handler and workflow.patched(HANDLER_PROOFS))
        try:
            return await (read if local else call)(IdentityActivities.verify_identity, check, options=VERIFY)
        except FailureError as e:
            if is_cancelled_exception(e):
                raise
            return Verified.refused(f"could not be checked: {_innermost(e)}")

    def requester_proven(self) -> bool:
        """requested_by proved to be a person (or the catalog says identities are not verified)."""
        return self._requester is not None and self._requester.kind in ("oidc", "slack", "unverified")

    async def _prove_requester(self, request: RollbackRequest) -> None:
        """Who asked, proven or not: an unproven request runs, but its requester has no privilege."""
        assert self.catalog is not None
        if not self._uses_proofs():
            self._requester = ProofRecord(kind="unverified")
            return
        self.s.verified = self.catalog.identity is None or self.catalog.identity.verified
        if not self.s.verified:
            self._event("APPROVALS ARE NOT VERIFIED: the catalog says identity.mode: unverified, so typed names count")
        v = await self._prove(request.requested_by, "start", id_token=request.id_token,
                              automation_token=request.automation_token, kind=self.kind, target=self.s.target,
                              digest=request_digest(request))
        if v.ok and v.proof is not None:
            self._requester = self.s.requester_proof = v.proof
            self._event(f"requested by {request.requested_by}: {v.proof.describe()}")
        else:
            self.s.requester_not_proven = v.reason
            self._event(f"requested by {request.requested_by}, NOT proven ({v.reason}): the request gets no "
                        "privilege and waits for proven approvals")
        self._publish()

    async def vouched(self, request: RollbackRequest, kind: str, target: str,
                      approved_by: list[str] | None = None) -> RollbackRequest:
        """A child rollback's request, signed by the worker for this rollback's proven requester and,
        with ``approved_by``, for the approval this rollback received (the child then asks no one)."""
        proven = self._requester is not None and self._requester.kind != "unverified"
        if not self._uses_proofs() or not (proven or approved_by):
            return request
        token = await call(IdentityActivities.vouch, Vouch(
            requested_by=request.requested_by, kind=kind, target=target, digest=request_digest(request),
            via=f"{self.kind} rollback {workflow.info().workflow_id}", proof=self._requester if proven else None,
            approved_by=approved_by or []))
        return request.model_copy(update={"automation_token": token}) if token else request

    def _refused(self, who: str, action: str, reason: str) -> tuple[bool, str]:
        refused = self.s.approvals.refused
        refused.append(Refusal(approver=who, at=workflow.now(), reason=reason, action=action))
        del refused[:-MAX_REFUSALS]
        self._event(f"{action} by {who} refused: {reason}")
        self._publish()
        return False, reason

    async def _decide(self, what: str, d: Decision) -> tuple[bool, str]:
        if not self._uses_proofs():
            return self._apply_decision(what, d, None)
        ticket = self._take_ticket()
        try:
            proven = await self._prove(d.approver, what, id_token=d.id_token, slack=d.slack,  # type: ignore[arg-type]
                                       handler=True)
            await workflow.wait_condition(lambda: self._turn == ticket)
            return self._apply_decision(what, d, proven)
        finally:
            self._done(ticket)

    def _apply_decision(self, what: str, d: Decision, proven: Verified | None) -> tuple[bool, str]:
        """``proven`` None: a run recorded before proofs, where the name counted as typed."""
        if proven is not None and not proven.ok:
            if self._status is None:  # cannot happen after a verification, which waits for the status
                return False, f"identity not proven: {proven.reason}"
            return self._refused(d.approver, what, f"identity not proven: {proven.reason}")
        proof = proven.proof if proven is not None else None
        if self.gate is None or not self.gate.open:
            if self._status is None or self._status.phase == Phase.starting:
                self._early.append((what, d, proven))  # applied when the gate opens
                return True, f"{what} recorded; it is applied when the approval step opens"
            reason = f"no approval is pending (phase: {self.s.phase.value})"
            if proven is not None:
                return self._refused(d.approver, what, reason)
            self.s.approvals.refused.append(Refusal(approver=d.approver, at=workflow.now(), reason=reason))
            return False, reason
        if (what == "reject" and d.slack is None and not (d.reason or d.comment).strip()
                and workflow.patched(REJECT_NEEDS_REASON)):
            return self._refused(d.approver, what, NO_REJECT_REASON)
        counted, message = (self.gate.approve if what == "approve" else self.gate.reject)(d, workflow.now(), proof)
        how = f" [{proof.describe()}]" if proof is not None else ""
        self._event(message + how if counted else f"{what} by {d.approver} refused: {message}")
        self._publish()
        return counted, message

    def _apply_escalation(self, e: Escalation, proven: Verified) -> str | None:
        """Apply a proven severity change the policy allows; returns what to announce in #incidents."""
        old, new = self.s.severity, e.severity

        def refuse(why: str) -> None:
            self._refused(e.by, "escalate", f"severity change {old} -> {new} not applied: {why}")

        if self.s.phase in FINAL_PHASES or self.catalog is None:
            return refuse(f"the rollback has ended ({self.s.phase.value})")
        if not proven.ok or proven.proof is None:
            return refuse(f"identity not proven: {proven.reason}")
        who, why = proven.person, (e.reason or e.comment).strip()
        policy, people = self.catalog.policy, self.catalog.people
        if not why:
            return refuse("a severity change needs a reason (starter.py escalate --reason, or \"reason\" in the signal)")
        if new == old:
            return refuse(f"the rollback is already {old}")
        if not any(who in getattr(people, role) for role in policy.severity_setters):
            setters = ", ".join(ROLE_LABEL[r] + "s" for r in policy.severity_setters)
            return refuse(f"{who} may not change the severity (policy.severity_setters: {setters})")
        if lowers_the_bar(old, new):
            accepted = severity_approvers(policy, people, self.s.requested_by, new)
            if who not in accepted:
                return refuse(f"{old} -> {new} lowers the approvals needed, so it takes someone the matrix accepts as "
                              f"approver at {new} ({', '.join(sorted(accepted)) or 'nobody'}); {who} is not")
        proof = proven.proof
        self.s.severity = new
        self.s.severity_changes.append(SeverityChange(at=workflow.now(), from_severity=old, to_severity=new, by=who,
                                                      reason=why, proof=proof))
        self._event(f"severity changed {old} -> {new} by {who} [{proof.describe()}]: {why}")
        workflow.upsert_search_attributes([SEVERITY.value_set(new)])
        gate = self.gate
        if gate is not None and gate.auto_approve:
            gate.escalate(new)
            if gate.open and gate.approve_at_start(workflow.now()):
                self._event(f"{self.s.requested_by} is on call: approved at {new} per the decision matrix")
            self.s.approvals = gate.view
        elif gate is not None and gate.open:
            self._event("the paused step still needs the approval it asked for: a severity change never decides it")
        self._publish()
        return (f"SEVERITY CHANGED: {self.kind} rollback of {self.s.target}: {old} -> {new} by {who}: {why}. "
                f"Workflow: {self.s.workflow_id}")

    # --- the frame around every procedure --------------------------------------------

    async def conduct(self, request: RollbackRequest, target: str, steps: list[str],
                      execute: Callable[[], Awaitable[None]]) -> RollbackStatus:
        never_worse = workflow.patched(NEVER_WORSE)  # before the first command
        self._fast = workflow.patched(FAST_PATH)
        info = workflow.info()
        self._uses_proofs()  # decided once, at the start (replay: runs recorded before proofs stay as they were)
        self._status = RollbackStatus(
            kind=self.kind, target=target, severity=request.severity, requested_by=request.requested_by,
            reason=request.reason, dry_run=request.dry_run, workflow_id=info.workflow_id,
            started_at=workflow.now(), automatic=bool(workflow.memo_value("automatic", False)))
        if never_worse:
            self.ledger = Ledger(self.s)
            self.pager = Pager(self)
        self.timeline = Timeline(self.s, steps + ["Report"])
        workflow.upsert_search_attributes([
            KIND.value_set(self.kind), TARGET.value_set(target), SEVERITY.value_set(request.severity),
            PHASE.value_set(Phase.starting.value),
        ])
        self._event(f"{self.kind} rollback of {target} requested by {request.requested_by} "
                    f"({request.severity}): {request.reason}")
        if not request.dry_run:
            telemetry.count(telemetry.STARTED, kind=self.kind)
        for e in self._early_escalations:
            self._escalate_as_typed(e)
        for ev in self._early_evidence:
            self.add_evidence(ev)
        self.s.evidence_received += self._early_evidence_count - len(self._early_evidence)
        closed = False
        try:
            if self._fast:
                self.catalog = await read(CatalogActivities.catalog_for, self.catalog_scope(request, target))
            else:
                self.catalog = await call(CatalogActivities.load_catalog)
            await self._prove_requester(request)
            if self.ledger is None and not request.dry_run:  # a run from before begin(): as it ran then
                if not await self._acquire_lock(target):
                    return await self._wrap_up(Phase.refused)
                await self._announce_start()
            await execute()
            if changes.cancel_wins():  # a cancel that something swallowed still wins
                raise asyncio.CancelledError("cancel requested")
            return bounds.fit(await self._wrap_up(Phase.planned if request.dry_run else Phase.succeeded))
        except GateClosed:
            return bounds.fit(await self._wrap_up(self.s.phase))
        except Refused as e:
            self.s.message = f"refused: {e}"
            return bounds.fit(await self._wrap_up(Phase.refused))
        except asyncio.CancelledError:
            await self._wrap_up_cancelled()
            raise
        except (StepFailed, UnknownTarget, FailureError) as e:
            if changes.cancel_wins():
                await self._wrap_up_cancelled()
                raise asyncio.CancelledError("cancel requested") from None
            self.s.message = self._failure_message(e)
            await self._wrap_up(Phase.failed)
            # a release rollback's component hands its whole status to the release (its report)
            details = [bounds.fit(self.s).model_dump(mode="json")] if self.part_of else []
            raise ApplicationError(self.s.message, *details, type=type(e).__name__, non_retryable=True) from None
        except GeneratorExit:  # the run's coroutine closed without an eviction (a worker or test server gone):
            closed = True  # the run goes on elsewhere from its history; here no workflow context is left
            raise
        finally:
            if not closed:
                await self._release_lock()

    async def begin(self, resources: list[str]) -> None:
        """The request is resolved (catalog entry, target version, plan): take the lock of every
        resource it will touch (all or nothing; Refused naming the running rollback if one is in
        use), then announce it in #incidents. Procedures call it before their first change or
        approval step, so a request that fails to resolve locks and announces nothing."""
        if self.ledger is None or self._begun:
            return  # a run from before begin(): conduct locked and announced at the start
        info = workflow.info()
        result: LocksResult = await call(LockActivities.acquire_locks, LocksRequest(
            resources=resources, holder=LockHolder(
                workflow_id=info.workflow_id, run_id=info.run_id,
                description=f"{self.kind} rollback of {self.s.target} by {self.s.requested_by}")), options=BATCH)
        if not result.acquired:
            h = result.holder
            who = f"workflow {h.workflow_id} ({h.description})" if h else "another rollback"
            raise Refused(f"{result.resource} is in use by {who}. Follow or cancel that one "
                          f"('starter.py status {h.workflow_id if h else '<id>'}'); two rollbacks never act on "
                          "one resource at once. Nothing was changed")
        self._lock_ids = result.lock_ids
        self.s.extra["locked"] = resources
        self._begun = True
        if self._fast:  # alongside the work; approval requests and the outcome wait for it
            self._announcing = asyncio.create_task(self._announce_start())
        else:
            await self._announce_start()

    def catalog_scope(self, request: RollbackRequest, target: str) -> CatalogScope:
        """The catalog names this rollback acts on (a fleet overrides it)."""
        return CatalogScope(kind=self.kind, names=[target])

    async def _announced(self) -> None:
        """The start announcement, when it runs alongside the work: wait for it to be posted."""
        if self._announcing is not None:
            task, self._announcing = self._announcing, None
            await task

    @property
    def part_of(self) -> str:
        """The release rollback this one is a component of ('' if none): it announces and acts once for all."""
        return str(workflow.memo_value("part_of", ""))

    async def _announce_start(self) -> bool:
        if self.part_of:
            return False  # the release rollback announced it
        return await self._act("post start to #incidents", self._post_incidents(
            f"ROLLBACK STARTED: {self.kind} {self.s.target} ({self.s.severity}) by {self.s.requested_by}: "
            f"{self.s.reason}. Workflow: {self.s.workflow_id}"))

    async def _wrap_up_cancelled(self) -> None:
        if self.ledger is None:
            self.s.message = (f"cancelled during {self.s.phase.value}; no further changes were made. "
                              f"State reached: {self._state_reached()}")
        else:
            left = [st.name for st in self.s.steps if st.state.value in ("pending", "running", "cancelled")
                    and st.name != "Report"]
            self.s.message = (f"cancelled during {self.s.phase.value}; no further changes were made. "
                              f"Changes made before the cancel: {self.ledger.describe()}. "
                              f"Steps: {self._state_reached()}; not done: {', '.join(left) or 'nothing'}")
        await self._wrap_up(Phase.cancelled)

    def _failure_message(self, e: BaseException) -> str:
        """What failed and, after a change, the state it left and how to return to a clean one."""
        message = _innermost(e)
        if self.ledger is None or not self.ledger.made:
            return message + ("" if self.ledger is None or "nothing was changed" in message
                              else "; nothing was changed")
        state, clean = self.left_behind()
        return (f"{message}. State left: {state + '; ' if state else ''}changes made: {self.ledger.describe()}. "
                f"To return to a clean state: {clean}")

    def left_behind(self) -> tuple[str, str]:
        """After a failure that followed a change: the state it left (traffic weights, which side runs
        what, what was copied) and the command or rollback that returns to a clean state. Procedures
        say it precisely; this is the general answer."""
        return "", (f"the changes listed are the only ones made ('starter.py status {self.s.workflow_id}'): fix "
                    "the cause and start the rollback again, or start one to the version you want")

    def starter(self, target: str, *options: str) -> str:
        """A ``starter.py start`` command that works as printed (for the hints of ``left_behind``)."""
        kind = "" if self.kind == "service" else f" --kind {self.kind}"
        return (f"starter.py start {target}{kind} --severity {self.s.severity} --requested-by {self.s.requested_by} "
                f"--reason 'undo {self.s.workflow_id}'" + "".join(f" {o}" for o in options))

    async def _wrap_up(self, phase: Phase) -> RollbackStatus:
        """The end of every rollback: the validation checklist, the post-rollback actions, the report."""
        self._ending = True  # decisions still in flight are refused, and waited for below
        self.s.ended_at = workflow.now()
        self.set_phase(phase)
        if not self.s.dry_run:
            telemetry.count(telemetry.FINISHED, kind=self.kind, outcome=phase.value)
        report = self.timeline.get("Report") if self.timeline else None
        if report is not None and report.state.value == "pending":
            now = workflow.now()
            report.state, report.started_at, report.ended_at = report.state.succeeded, now, now
        self.s.checklist = evaluate_checklist(self.s)
        self.s.report = bounds.report(self.render_report())
        announced = self.ledger is None or self._begun  # a request that never resolved announces nothing
        try:
            await self._announced()
        except asyncio.CancelledError:
            pass  # a cancel interrupted the announcement: the outcome below says what happened
        if not self.s.dry_run and announced:
            await self._post_rollback_actions(phase)
            self.s.report = bounds.report(self.render_report())  # now with the actions' outcomes
        self._publish()
        await workflow.wait_condition(workflow.all_handlers_finished)  # every decision answered and recorded
        return self.s

    def render_report(self) -> str:
        """The final report (Markdown); a release rollback adds each component's timeline."""
        return render_report(self.s)

    async def _post_rollback_actions(self, phase: Phase) -> None:
        """Runbook "Post-Rollback Actions", Immediate: #incidents, status page, incident ticket.
        Each is retried, then recorded as failed; none can fail or block the rollback."""
        if self.part_of:
            self._record_action("post-rollback actions", "skipped", f"done once for the release by {self.part_of}")
            return
        title = f"{self.kind} rollback of {self.s.target}: {phase.value}"
        steps = "\n".join(f"- {st.name}: {st.state.value}" + (f" ({st.detail})" if st.detail else "")
                          for st in self.s.steps)
        await self._act("post outcome to #incidents", self._post_incidents(
            f"ROLLBACK {phase.value.upper()}: {title} ({self.s.severity}). {self.s.message}\n{steps}\n"
            f"Workflow: {self.s.workflow_id}"))
        if phase not in (Phase.succeeded, Phase.failed, Phase.cancelled):
            return  # nothing was changed: no incident to open or announce
        note = IncidentNote(workflow_id=self.s.workflow_id, title=title, outcome=phase.value,
                            severity=self.s.severity, body=self.s.report, at=workflow.now())
        if not self.customer_facing:
            self._record_action("update status page", "skipped", f"{self.s.target} is not customer-facing")
        elif self.ledger is not None and not [c for c in self.ledger.made if c.step not in self.rehearsal_steps]:
            # customers hear only of real changes
            self._record_action("update status page", "skipped", "no change was made")
        else:
            await self._act("update status page", call(IncidentActivities.update_status_page, note, options=NOTIFY))
        await self._act("create incident ticket", call(IncidentActivities.create_ticket, note, options=NOTIFY))

    def _post_incidents(self, text: str) -> Awaitable[str]:
        return call(NotifyActivities.notify, Notification(text=text, workflow_id=self.s.workflow_id), options=NOTIFY)

    async def _act(self, action: str, outcome: Awaitable[str]) -> bool:
        """A post-rollback action or announcement: recorded; a failure never fails the rollback."""
        try:
            detail = await outcome
        except asyncio.CancelledError:
            if self.s.phase not in FINAL_PHASES:
                raise  # the cancel wins
            # it arrived while the outcome of an ended rollback was being posted: that outcome stands
            self._record_action(action, "failed", "interrupted by a cancel that arrived after the rollback ended")
            return False
        except FailureError as e:
            self._record_action(action, "failed", _innermost(e))
            self._event(f"{action} failed: {_innermost(e)}")
            return False
        configured = not detail.startswith("not configured")
        self._record_action(action, "done" if configured else "not_configured", detail)
        return configured

    def _record_action(self, action: str, state: str, detail: str) -> None:
        self.s.actions.append(ActionResult(action=action, state=state, detail=detail, at=workflow.now()))

    def _state_reached(self) -> str:
        done = [st.name for st in self.s.steps if st.state.value == "succeeded"]
        return ("completed steps: " + ", ".join(done)) if done else "no step had completed"

    # --- pieces procedures use -------------------------------------------------------

    def set_phase(self, phase: Phase) -> None:
        if self.s.phase != phase:
            self._time_metrics(phase)
            self._event(f"phase: {phase.value}")
        self.s.phase = phase
        workflow.upsert_search_attributes([PHASE.value_set(phase.value)])
        self._publish()

    def _time_metrics(self, phase: Phase) -> None:
        since = workflow.now() - (self.s.started_at or workflow.now())
        seen = {e.what for e in self.s.events}
        if phase == Phase.rolling_back and "phase: rolling_back" not in seen:
            telemetry.seconds(telemetry.FIRST_CHANGE, since, kind=self.kind)
        validated = phase == Phase.monitoring or (phase == Phase.succeeded and "phase: monitoring" not in seen)
        if validated and not self.s.dry_run:
            telemetry.seconds(telemetry.RECOVERY, since, kind=self.kind)

    def _event(self, what: str) -> None:
        if self.timeline:
            self.timeline.event(what)

    def _publish(self) -> None:
        workflow.set_current_details(bounds.text(render_summary(self.s), bounds.MAX_DETAILS))

    async def _notify(self, text: str) -> None:
        """Best effort: a failed notification is recorded, never fails the rollback."""
        try:
            await call(NotifyActivities.notify, Notification(text=text, workflow_id=self.s.workflow_id),
                       options=NOTIFY)
        except FailureError as e:
            self._event(f"notification failed: {_innermost(e)}")

    async def approval(self, context: str, extra: list[ExtraRequirement] | None = None,
                       step: str = APPROVAL, auto_approve_requester: bool = True,
                       waiting_phase: Phase = Phase.awaiting_approval) -> None:
        """Wait for the approvals the policy (plus ``extra``) requires. Raises GateClosed."""
        assert self.catalog is not None and self.timeline is not None
        if self.gate is not None:  # a later gate (a paused step): the earlier decisions stay on record
            self.s.earlier_approvals.append(self.s.approvals.model_copy(update={"refused": []}))
        self.gate = ApprovalGate(policy=self.catalog.policy, people=self.catalog.people,
                                 requester=self.s.requested_by, severity=self.s.severity,
                                 extra=extra or [], context=context,
                                 view=Approvals(refused=list(self.s.approvals.refused)),
                                 requester_proof=self._requester, auto_approve=auto_approve_requester)
        self.s.approvals = self.gate.view
        self.s.approvals.step = step
        async with self.timeline.step(step) as st:
            self.gate.open = True
            if auto_approve_requester and self.gate.approve_at_start(workflow.now()):
                how = f" [{self._requester.describe()}]" if self._requester else ""
                self._event(f"approved once for {self._requester.via} by {', '.join(self.gate.vouched)}: nobody "
                            "is asked again" if self.gate.vouched and self._requester else
                            f"{self.s.requested_by} is on call: approved at start per the decision matrix{how}")
            for what, d, proven in self._early:
                self._apply_decision(what, d, proven)
            self._early.clear()
            if not self.gate.decided:
                self.set_phase(waiting_phase)
                text = (f"{self.kind} rollback of {self.s.target} ({self.s.severity}) needs approval: "
                        f"{context}. Waiting for {self.gate.waiting_for()}. Workflow: {self.s.workflow_id}")
                await self._announced()
                await (self._ask(text) if self._uses_proofs() else self._notify(text))
            waited_from = workflow.now()
            outcome = "cancelled"
            try:
                outcome = await self.gate.wait(remind=self._remind)
            finally:
                if self.pager is not None and self.pager.paged:
                    await self.pager.decided(outcome)
            telemetry.seconds(telemetry.APPROVAL_WAIT, workflow.now() - waited_from, kind=self.kind)
            if outcome == "approved":
                st.detail = "approved by " + ", ".join(r.approver for r in self.gate.view.received)
                return
            if outcome == "rejected":
                rej = self.gate.view.rejected_by
                assert rej is not None
                self.s.message = f"rejected by {rej.approver}" + (f": {rej.comment}" if rej.comment else "")
                st.detail = self.s.message
                self.set_phase(Phase.rejected)
            else:
                self.s.message = (f"no decision within {self.catalog.policy.approval_timeout_minutes:g} minutes "
                                  f"(waited for {self.gate.waiting_for()}); nothing was changed")
                st.detail = self.s.message
                self.set_phase(Phase.timed_out)
            raise GateClosed(self.s.message)

    async def _ask(self, text: str) -> None:
        """The approval request in #incidents, with Approve / Reject buttons for this run (Slack)."""
        note = Notification(text=text, workflow_id=self.s.workflow_id, run_id=workflow.info().run_id, buttons=True)
        try:
            await call(NotifyActivities.notify, note, options=NOTIFY)
        except FailureError as e:
            if is_cancelled_exception(e):
                raise
            self._event(f"notification failed: {_innermost(e)}")

    async def _remind(self, what: str) -> None:
        self._event(f"reminder sent: {what}")
        await self._notify(f"REMINDER: {self.kind} rollback of {self.s.target} ({self.s.severity}) is "
                           f"{what}. Workflow: {self.s.workflow_id}")
        if self.pager is not None:
            await self.pager.response_time_passed(what.removeprefix("waiting for "))

    async def _acquire_lock(self, target: str) -> bool:
        """Take the lock of ``target`` (released when the rollback ends); False and a message if held."""
        info = workflow.info()
        lock_id = f"rollback-lock-{self.kind}-{target}"
        result = await call(LockActivities.acquire_lock, LockRequest(
            lock_id=lock_id,
            holder=LockHolder(workflow_id=info.workflow_id, run_id=info.run_id,
                              description=f"{self.kind} rollback of {target} by {self.s.requested_by}")))
        if result.acquired:
            self._lock_ids.append(lock_id)
            return True
        holder = result.holder
        self.s.message = (f"refused: another rollback of {self.kind} {target!r} is in flight: workflow "
                          f"{holder.workflow_id if holder else '?'} ({holder.description if holder else ''}). "
                          "Follow or cancel that one; two rollbacks of one target never act at once.")
        return False

    async def _release_lock(self) -> None:
        if self.ledger is not None:
            if self._lock_ids:
                await call(LockActivities.release_locks, self._lock_ids, options=BATCH)
                self._lock_ids = []
            return
        while self._lock_ids:
            lock_id = self._lock_ids.pop()
            try:
                await workflow.get_external_workflow_handle(lock_id).signal("release")
            except Exception as e:  # the lock also frees itself when its holder ends
                workflow.logger.warning("could not release %s: %s", lock_id, e)

    async def shift_in_steps(self, percentages: list[int], step: str, apply: Callable[[int], Awaitable[None]],
                             check: Callable[[], Awaitable[list[CheckResult]]]) -> list[int]:
        """A gradual rollback (runbook: "Wait 5 minutes, monitor metrics"): ``apply`` each
        percentage in turn; before each next one, wait the policy's gradual_step_wait_minutes
        (a durable timer) and ``check``. A failed check holds traffic where it is and asks a
        human (``pause``). Returns the percentages applied."""
        assert self.catalog is not None
        done: list[int] = []
        for i, pct in enumerate(percentages):
            if i > 0:
                await workflow.sleep(timedelta(minutes=self.catalog.policy.gradual_step_wait_minutes))
                results = await check()
                self.s.checks = results
                # verdicts: an inconclusive required check (no evidence) pauses too
                failed = blocking(results) if workflow.patched(VERDICTS) else [r for r in results if r.ok is False]
                if failed:
                    await self.pause(step, pct, done[-1], failed)
                    self.set_phase(Phase.rolling_back)
            await apply(pct)
            done.append(pct)
        return done

    async def pause(self, step: str, next_pct: int, at_pct: int, failed: list[CheckResult]) -> None:
        """A check failed between gradual steps: hold traffic where it is and ask a human.
        Raises StepFailed (traffic left where it is) if the answer is no or does not come."""
        why = "; ".join(f"{r.name}: {r.detail}" for r in failed)
        try:
            await self.approval(context=f"continue to {next_pct}%? traffic is held at {at_pct}% because {why}",
                                step=step + f" (paused at {at_pct}%)", auto_approve_requester=False,
                                waiting_phase=Phase.paused)
        except GateClosed:
            raise StepFailed(f"gradual rollback stopped at {at_pct}% after a failed check ({why}); "
                             "traffic was left where it is") from None

    async def monitor(self, minutes: float, interval_minutes: float,
                      check: Callable[[], Awaitable[list[CheckResult]]]) -> str:
        """The post-rollback monitoring window: check every interval until the window ends.

        A regression is reported loudly (status + notification); nothing is rolled forward.
        """
        self.set_phase(Phase.monitoring)
        end = workflow.now() + timedelta(minutes=minutes)
        rounds = unchecked = 0
        progress = self.s.monitoring = MonitoringProgress(rounds=math.ceil(minutes / interval_minutes), ends_at=end)
        required: dict[str, bool] = {}  # required check -> had a passing reading in this window
        while workflow.now() < end:
            left = (end - workflow.now()).total_seconds()
            progress.next_check_at = workflow.now() + timedelta(seconds=min(left, interval_minutes * 60))
            await workflow.sleep(min(left, interval_minutes * 60))
            results = await check()
            rounds += 1
            progress.round, progress.next_check_at = rounds, None
            self.s.checks = results
            await self.report_regressions([r for r in results if r.ok is False], "during monitoring")
            for r in (r for r in results if r.ok is None and not r.optional):
                unchecked += 1
                self._event(f"not checked during monitoring: {r.name}: {r.detail}")
            for r in (r for r in results if not r.optional):
                required[r.name] = required.get(r.name, False) or r.ok is True
            self._publish()
        if workflow.patched(MONITOR_EVIDENCE):
            self.unverified = [name for name, passed in required.items() if not passed]
            if self.unverified and not self.s.regressions:
                self._event("monitoring INCONCLUSIVE: no evidence in the whole window for "
                            + ", ".join(self.unverified) + "; the restored version is not marked known-good")
                return (f"{minutes:g} min, {rounds} round(s) of checks, INCONCLUSIVE: no evidence for "
                        + ", ".join(self.unverified) + f" ({unchecked} inconclusive reading(s)): see events")
        return (f"{minutes:g} min, {rounds} round(s) of checks, "
                + (f"{len(self.s.regressions)} regression(s)" if self.s.regressions else "no regression")
                + (f", {unchecked} inconclusive check(s): see events" if unchecked else ""))

    def monitoring_outcome(self) -> str:
        """How the monitoring window ended, for the final message."""
        if self.s.regressions:
            return f"; {len(self.s.regressions)} regression(s) seen while monitoring: see status"
        if self.unverified:
            return ("; monitoring was INCONCLUSIVE (no evidence for " + ", ".join(self.unverified)
                    + "): the restored version is not marked known-good")
        return "; monitoring found no regression"

    @property
    def monitored_good(self) -> bool:
        """Monitoring passed on evidence: no regression, and every required check passed at least once."""
        return not self.s.regressions and not self.unverified

    async def report_regressions(self, bad: list[CheckResult], when: str) -> None:
        """Loudly (status, events, #incidents); nothing is rolled forward or back: a human decides."""
        for r in bad:
            self.s.regressions.append(r)
            self._event(f"REGRESSION {when}: {r.name}: {r.detail}")
            await self._notify(f"REGRESSION after {self.kind} rollback of {self.s.target}: "
                               f"{r.name}: {r.detail}. Nothing was rolled forward; a human decides.")
