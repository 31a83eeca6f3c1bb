"""A whole release rolled back in one request, as the ``ReleaseRollback`` workflow (issue 15).

The runbook leaves the order of a multi-component rollback to experience; this is it written
down: flags and kill switches first ("Feature Flags (Fastest)"), then the services, the Lambda
functions, the frontend, and a database last and only when the release says it must ("Database
rollbacks are risky and should be avoided"). Each component is rolled back by its own procedure,
as a child workflow, so it keeps its own steps, checks, locks and report.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError, is_cancelled_exception
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.identity import IdentityActivities
    from activities.releases import FoundRelease, ReleaseActivities
    from common.identity import Vouch
    from common.models import (
        ComponentState, DatabaseRollbackInput, FeatureFlagRollbackInput, FrontendRollbackInput, LambdaRollbackInput,
        Phase, ReleaseRollbackInput, RollbackRequest, RollbackStatus, ServiceRollbackInput,
    )
    from common.releases import Component, plan, waves
    from workflows import changes
    from workflows.base import GateClosed, RollbackWorkflow
    from workflows.database import DatabaseRollback
    from workflows.flags import FeatureFlagRollback
    from workflows.frontend import FrontendRollback
    from workflows.gate import ExtraRequirement
    from workflows.lambda_fn import LambdaRollback
    from workflows.options import QUICK, call
    from workflows.report import render_report
    from workflows.service import ServiceRollback
    from workflows.timeline import StepFailed, innermost_message
    from common.models import Step

IDENTIFY = "Identify release components"
PLAN = "Plan each component's rollback"
APPROVAL = "Approval"

# component kind -> (the procedure's kind, its workflow, how its name reads)
PROCEDURE: dict[str, tuple[str, Any, str]] = {
    "flag": ("flag", FeatureFlagRollback.run, "flag"),
    "kill_switch": ("flag", FeatureFlagRollback.run, "kill switch"),
    "service": ("service", ServiceRollback.run, "service"),
    "lambda": ("lambda", LambdaRollback.run, "Lambda function"),
    "frontend": ("frontend", FrontendRollback.run, "frontend"),
    "database": ("database", DatabaseRollback.run, "database"),
}
# what the release shipped is what must be running for a component to be rolled back (no version is
# reported for flags, sites and migrations: their procedures compare states themselves)
VERSIONED = ("service", "lambda")


def step_name(c: Component) -> str:
    return f"Roll back {PROCEDURE[c.kind][2]} {c.name}"


def _version_key(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def previous_release(prefixes: list[str], shipped: str) -> str | None:
    """The newest release prefix before ``shipped`` (v1.2.10 after v1.2.9), or None."""
    older = [p for p in prefixes if _version_key(p) < _version_key(shipped) and p != shipped]
    return max(older, key=_version_key) if older else None


def _status_in(e: ChildWorkflowError) -> RollbackStatus | None:
    """A failed component's own status, which it hands over with its failure (workflows/base.py)."""
    cause = e.cause
    details = getattr(cause, "details", None) or ()
    try:
        return RollbackStatus.model_validate(details[0]) if details else None
    except ValidationError:
        return None


@workflow.defn(name="ReleaseRollback", failure_exception_types=[ValidationError])
class ReleaseRollback(RollbackWorkflow):
    """Rolls back every component of a release under ONE approval, in the runbook's order.

    - The plan (each component's current and target version, from its own procedure's dry run) is in
      the status before anything is asked or changed; an unknown release or component changes and
      announces nothing.
    - One approval satisfies the strictest requirement of all parts: the severity's approvers, plus a
      database administrator when a database is in the plan. The worker vouches for it to each child,
      which asks no one again.
    - Components run as child workflows of their procedures, group by group (flags, services, functions,
      frontend, database); a group's members run at once. Each child takes its own resource locks.
    - A failed component stops the rest and asks a human whether to continue with the others; a cancel
      stops every child; nothing is ever rolled forward.
    - The post-rollback actions run once, here, for the whole release.
    """

    kind = "release"

    @workflow.run
    async def run(self, request: ReleaseRollbackInput) -> RollbackStatus:
        self.request = request
        self.components: list[Component] = []
        self.results: dict[str, RollbackStatus] = {}  # component key -> its child's final status
        return await self.conduct(request, request.release, [IDENTIFY, PLAN, APPROVAL], self.execute)

    async def execute(self) -> None:
        req, tl = self.request, self.timeline
        assert self.catalog is not None and tl is not None
        async with tl.step(IDENTIFY) as st:
            found: FoundRelease = await call(ReleaseActivities.find_release, req.release, options=QUICK)
            comps, unknown = plan(found.release, req.leave_out)
            if unknown:
                raise StepFailed(f"leave_out names {', '.join(map(repr, unknown))}, which release {req.release} does "
                                 f"not have (its components: {', '.join(found.release.names())}); nothing was changed")
            if not comps:
                raise StepFailed(f"release {req.release} leaves nothing to roll back (components: "
                                 f"{', '.join(found.release.names()) or 'none'}, left out: "
                                 f"{', '.join(req.leave_out) or 'none'}); nothing was changed")
            self.components = comps
            self.s.components = [ComponentState(kind=c.kind, name=c.name, from_version=c.version or None)
                                 for c in comps]
            self.s.components += [ComponentState(kind=c.kind, name=c.name, phase="left_out", message="left out")
                                  for c in found.release.components() if c.name in req.leave_out]
            self.s.from_version = req.release
            kept_db = [n for n, d in found.release.databases.items() if not d.required]
            st.detail = (f"{found.source}: " + ", ".join(f"{PROCEDURE[c.kind][2]} {c.name}"
                                                         + (f" {c.version}" if c.version else "") for c in comps)
                         + (f"; left out: {', '.join(req.leave_out)}" if req.leave_out else "")
                         + (f"; database(s) {', '.join(kept_db)} stay (not required)" if kept_db else ""))
            at = len(self.s.steps) - 1  # before "Report"
            self.s.steps[at:at] = [Step(name=step_name(c)) for c in comps]

        async with tl.step(PLAN) as st:
            await asyncio.gather(*(self._plan_one(c) for c in comps))
            active = [c for c in comps if self._state(c).phase == "planned"]
            self.s.plan = self._plan_lines(active)
            st.detail = f"{len(active)} component(s) to roll back" + (
                f"; not on the release's version: {', '.join(self._label(c) for c in comps if c not in active)}"
                if len(active) < len(comps) else "")
        for c in comps:
            if c not in active:
                tl.skip(step_name(c), self._state(c).message)
        if not active:
            raise StepFailed("no component of the release runs what the release shipped; nothing was changed")
        if req.dry_run:
            for name in [APPROVAL, *(step_name(c) for c in active)]:
                tl.skip(name, "dry run")
            self.s.message = "dry run: nothing was changed; the plan lists what a real run would do, in order"
            return

        await self._check_vouching()
        await self.begin([])  # announce; each component takes its own resources' locks
        databases = [c for c in active if c.kind == "database"]
        extra = [ExtraRequirement(role="dbas", label="database administrator")] if databases else []
        await self.approval(context=f"roll back release {req.release}: " + "; ".join(self.s.plan), extra=extra)
        assert self.gate is not None
        approved_by = [r.approver for r in self.gate.view.received]
        # kept: a later "continue?" decision has a gate (and status.approvals) of its own
        self.s.extra["release_approved_by"] = approved_by

        self.set_phase(Phase.rolling_back)
        groups = waves(active)
        for i, group in enumerate(groups):
            await asyncio.gather(*(self._run_one(c, approved_by) for c in group))
            failed = [c for c in group if self._state(c).phase != Phase.succeeded.value]
            if failed:
                rest = [c for g in groups[i + 1:] for c in g]
                await self._after_failure(failed, rest)
                self.set_phase(Phase.rolling_back)
        bad = [c for c in active if self._state(c).phase != Phase.succeeded.value]
        self.s.to_version = f"before {req.release}"
        self.s.message = (f"release {req.release} rolled back: " + self._tally()
                          + (f"; continued past the failure of {', '.join(self._label(c) for c in bad)}" if bad else ""))
        if bad:
            raise StepFailed(f"{len(bad)} component(s) not rolled back")

    # --- planning ------------------------------------------------------------------

    async def _check_vouching(self) -> None:
        """The one approval reaches the components only through the worker's signature: without the
        key every component would ask again, so the release refuses before announcing or asking."""
        if not self._uses_proofs() or (self.catalog is not None and self.catalog.identity is not None
                                       and not self.catalog.identity.verified):
            return
        token = await call(IdentityActivities.vouch, Vouch(
            requested_by=self.s.requested_by, kind=self.kind, target=self.s.target, digest="", via="check",
            approved_by=["check"]))
        if not token:
            raise StepFailed("ROLLBACK_AUTOMATION_KEY is not set on the worker, so the release's one approval cannot "
                             "be vouched to its components (each would ask again): set it on the worker "
                             "(docs/identity.md), or roll the components back one by one; nothing was changed")

    def _state(self, c: Component) -> ComponentState:
        return next(s for s in self.s.components if s.kind == c.kind and s.name == c.name)

    def _label(self, c: Component) -> str:
        return f"{PROCEDURE[c.kind][2]} {c.name}"

    def _child_id(self, c: Component, what: str = "") -> str:
        return f"{self.s.workflow_id}-{what}{c.kind}-{c.name}"

    async def _request(self, c: Component, dry_run: bool) -> RollbackRequest:
        req, cs = self.request, self._state(c)
        common: dict[str, Any] = dict(severity=self.s.severity, requested_by=req.requested_by,
                                      reason=f"release {req.release} rollback: {req.reason}"[:4000],
                                      dry_run=dry_run, monitor_minutes=req.monitor_minutes)
        target = None if dry_run else cs.to_version
        if c.kind == "flag":
            return FeatureFlagRollbackInput(flag=c.name, action="disable", all_cities=True, **common)
        if c.kind == "kill_switch":
            return FeatureFlagRollbackInput(flag=c.name, action="kill_switch", **common)
        if c.kind == "service":
            return ServiceRollbackInput(service=c.name, to_version=target, **common)
        if c.kind == "lambda":
            return LambdaRollbackInput(function=c.name, to_version=target, **common)
        if c.kind == "frontend":
            return FrontendRollbackInput(site=c.name, strategy="release_sync",
                                         to_release=await self._previous_site_release(c), **common)
        assert self.catalog is not None
        steps = int(c.version.split()[0]) if c.version else 1
        return DatabaseRollbackInput(database=c.name, mode="migration", steps=steps, **common)

    async def _previous_site_release(self, c: Component) -> str:
        """A site goes back to the newest release prefix of its versions bucket before the one shipped."""
        cs = self._state(c)
        if cs.to_version:
            return cs.to_version
        assert self.catalog is not None
        site = self.catalog.site(c.name)
        if not site.versions_bucket:
            raise StepFailed(f"site {c.name!r} has no versions_bucket in the catalog, so its release before "
                             f"{c.version} cannot be restored; leave it out (leave_out) and roll it back by hand")
        prefixes: list[str] = await call(ReleaseActivities.release_prefixes, site.versions_bucket, options=QUICK)
        previous = previous_release(prefixes, c.version)
        if previous is None:
            raise StepFailed(f"s3://{site.versions_bucket} holds no release of site {c.name} before {c.version} "
                             f"(it holds: {', '.join(prefixes) or 'nothing'})")
        cs.to_version = previous
        return previous

    async def _plan_one(self, c: Component) -> None:
        """The component's own procedure, as a dry run: its current and target versions, its plan."""
        cs = self._state(c)
        try:
            request = await self._request(c, dry_run=True)
            result: RollbackStatus = await workflow.execute_child_workflow(
                PROCEDURE[c.kind][1], request, id=self._child_id(c, "plan-"), memo=self._memo(),
                parent_close_policy=ParentClosePolicy.TERMINATE)
        except ChildWorkflowError as e:
            if is_cancelled_exception(e):
                raise
            raise StepFailed(f"{self._label(c)} cannot be planned: {innermost_message(e)}") from None
        if result.phase != Phase.planned:
            raise StepFailed(f"{self._label(c)} cannot be planned: {result.message or result.phase.value}")
        cs.from_version = result.from_version or cs.from_version
        cs.to_version = result.to_version or cs.to_version
        if c.kind in VERSIONED and c.version and result.from_version and result.from_version != c.version:
            cs.phase = "not_started"
            cs.message = (f"runs {result.from_version}, not {c.version} from the release: not rolled back "
                          "(a release rollback never moves a component the release did not leave in place)")
        self._publish()

    def _plan_lines(self, active: list[Component]) -> list[str]:
        lines = []
        for n, group in enumerate(waves(active), 1):
            together = " (at once)" if len(group) > 1 else ""
            for c in group:
                cs = self._state(c)
                what = {"flag": "disable in every city", "kill_switch": "enable the kill switch"}.get(
                    c.kind, f"{cs.from_version or c.version or '?'} -> {cs.to_version or '?'}")
                lines.append(f"{n}{together}. {self._label(c)}: {what}")
        return lines

    def _memo(self) -> dict[str, Any]:
        return {"part_of": self.s.workflow_id, "automatic": self.s.automatic}

    # --- running -----------------------------------------------------------------------

    async def _run_one(self, c: Component, approved_by: list[str]) -> None:
        """One component as a child rollback, approved by the release's approval. Never raises for a
        failed component (the caller asks a human); a cancel propagates to the child and here."""
        assert self.timeline is not None
        cs = self._state(c)
        kind = PROCEDURE[c.kind][0]
        if changes.cancel_requested():
            raise asyncio.CancelledError(f"cancel requested: {self._label(c)} not started")
        try:
            async with self.timeline.step(step_name(c)) as st:
                request = await self.vouched(await self._request(c, dry_run=False), kind, c.name, approved_by)
                cs.phase, cs.workflow_id = "running", self._child_id(c)
                self._publish()
                try:
                    result: RollbackStatus = await workflow.execute_child_workflow(
                        PROCEDURE[c.kind][1], request, id=cs.workflow_id, memo=self._memo(),
                        parent_close_policy=ParentClosePolicy.REQUEST_CANCEL)
                except ChildWorkflowError as e:
                    if is_cancelled_exception(e) or changes.cancel_requested():
                        cs.phase = Phase.cancelled.value
                        raise asyncio.CancelledError(f"cancel requested: {self._label(c)} cancelled") from None
                    cs.phase, cs.message = Phase.failed.value, innermost_message(e)
                    failed = _status_in(e)
                    if failed is not None:
                        self.results[c.key] = failed
                    raise StepFailed(cs.message) from None
                self.results[c.key] = result
                cs.phase, cs.message = result.phase.value, result.message
                cs.from_version, cs.to_version = result.from_version or cs.from_version, result.to_version or cs.to_version
                if result.phase != Phase.succeeded:
                    raise StepFailed(f"ended {result.phase.value}: {result.message}")
                st.detail = f"{cs.from_version or ''} -> {cs.to_version or ''} ({cs.workflow_id}): {result.message}"
        except asyncio.CancelledError:
            if cs.phase == "running":
                cs.phase = Phase.cancelled.value
            raise
        except StepFailed:
            pass  # recorded in the component's state and its step
        finally:
            self._publish()

    async def _after_failure(self, failed: list[Component], rest: list[Component]) -> None:
        """A component failed: stop, say what is and is not rolled back, and ask whether to go on."""
        names = ", ".join(self._label(c) for c in failed)
        why = "; ".join(f"{self._label(c)}: {self._state(c).message}" for c in failed)
        if not rest:
            raise StepFailed(f"{names} failed ({why})")
        for c in rest:
            self._state(c).phase = "waiting"
        self._publish()
        try:
            await self.approval(
                context=(f"{names} failed ({why}). {self._tally()}. Approve to continue with "
                         f"{', '.join(self._label(c) for c in rest)}; reject to stop here"),
                step=f"Continue after {names} failed?", auto_approve_requester=False, waiting_phase=Phase.paused)
        except GateClosed:
            for c in rest:
                self._state(c).phase = "not_started"
            raise StepFailed(f"stopped after {names} failed ({why}); {self.s.message}") from None
        for c in rest:
            self._state(c).phase = "planned"

    def _tally(self) -> str:
        done = [s for s in self.s.components if s.phase == Phase.succeeded.value]
        not_done = [s for s in self.s.components if s.phase != Phase.succeeded.value]
        label = {k: v[2] for k, v in PROCEDURE.items()}
        return ("rolled back: " + (", ".join(f"{label[s.kind]} {s.name}" + (f" ({s.from_version} -> {s.to_version})"
                                                                              if s.to_version else "") for s in done)
                                   or "none")
                + "; not rolled back: " + (", ".join(f"{label[s.kind]} {s.name} ({s.phase})" for s in not_done)
                                           or "none"))

    # --- the frame's hooks ----------------------------------------------------------------

    def _failure_message(self, e: BaseException) -> str:
        message = innermost_message(e)
        if not any(s.phase not in ("planned", "left_out", "not_started") for s in self.s.components):
            return message + ("" if "nothing was changed" in message else "; nothing was changed")
        return f"{message}. {self._tally()}. Nothing was rolled forward; each component's status lists its changes"

    async def _wrap_up_cancelled(self) -> None:
        for s in self.s.components:
            if s.phase in ("planned", "waiting"):
                s.phase = "not_started"
        self.s.message = (f"cancelled during {self.s.phase.value}: every running component was cancelled and no "
                          f"other was started. {self._tally()}. Each component's own status lists the changes it "
                          "made before the cancel")
        await self._wrap_up(Phase.cancelled)

    def render_report(self) -> str:
        """The release's report, then each component's own steps and timeline."""
        parts = [render_report(self.s)]
        if self.s.extra.get("release_approved_by"):
            parts += ["", f"Release approved by: {', '.join(self.s.extra['release_approved_by'])} (one approval for "
                          "every component)"]
        for c in self.components:
            r = self.results.get(c.key)
            if r is None:
                continue
            parts += ["", f"## {self._label(c)}: {r.phase.value} ({r.workflow_id})", "",
                      f"{r.from_version or '?'} → {r.to_version or '?'}" + (f": {r.message}" if r.message else ""), ""]
            parts += [f"- Approved: {a.approver}" + (f" ({a.note})" if a.note else "") for a in r.approvals.received]
            parts += [f"- Change: {ch.what} ({ch.state})" for ch in r.changes]
            parts += [f"- {a.action}: {a.state}" + (f" ({a.detail})" if a.detail else "") for a in r.actions]
            parts += ["", "| step | state | detail |", "|---|---|---|"]
            parts += [f"| {st.name} | {st.state.value} | {st.detail} |" for st in r.steps]
            parts += ["", "Timeline:", ""] + [f"- {e.at:%H:%M:%S} {e.what}" for e in r.events]
        return "\n".join(parts)
