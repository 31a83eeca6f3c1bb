"""Runbook section 3, "Infrastructure Rollback" > "Terraform/CDK Changes", as ``InfraRollback``.

Identify previous state (``git log``), check out the previous version (in a worktree of
this run's own: the operator's checkout is never touched), ``terraform plan
-out=rollback.plan``, show the plan (counts and addresses) and wait for approval of THAT plan
(its sha256 is in the request), ``terraform apply rollback.plan`` (the saved plan: nothing is
planned again), verify (the catalog's validation command and checks).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.terraform import (
        PLAN_FILE, Applied, Checkout, CheckoutRequest, CommandOutcome, PlanRequest, PlanSummary, ApplyRequest,
        Resolved, ResolveRequest, TerraformActivities, ValidateRequest,
    )
    from common.catalog import Endpoints, Stack
    from common.models import CheckResult, InfraRollbackInput, Phase, RollbackStatus
    from workflows.base import RollbackWorkflow
    from workflows import lock
    from workflows.checks import endpoint_probes, http_checks
    from workflows.gate import ExtraRequirement
    from workflows.options import RETRY, call
    from workflows.timeline import Refused, StepFailed

IDENTIFY = "Identify previous state"
CHECKOUT = "Checkout previous version"
PLAN = "Plan rollback"
APPROVAL = "Approval"
APPLY = "Apply rollback"
VERIFY = "Verify infrastructure"
MONITOR = "Monitor post-rollback"
SHOWN = 20  # addresses per action listed in the status; the rest are counted

# git: a clone or fetch may be slow; transient network errors are retried.
GIT = dict(start_to_close_timeout=timedelta(minutes=11), schedule_to_close_timeout=timedelta(minutes=30),
           retry_policy=RETRY)


def _terraform(stack: Stack, attempts: int) -> dict:
    """Terraform runs heartbeat, so a lost worker is noticed in a minute; a retry after one is safe."""
    return dict(start_to_close_timeout=timedelta(minutes=stack.timeout_minutes * 4 + 2),
                heartbeat_timeout=timedelta(seconds=60), retry_policy=replace(RETRY, maximum_attempts=attempts))


@workflow.defn(name="InfraRollback", failure_exception_types=[ValidationError])
class InfraRollback(RollbackWorkflow):
    """Returns a Terraform stack to an earlier commit by applying exactly the plan people approved.

    A plan that destroys anything needs the policy's ``destroy_requires_approvals`` approvers
    (two by default) whatever the severity. If the state moved between plan and apply, the
    apply fails (terraform refuses the stale plan) and is not retried.
    """

    kind = "infra"

    @workflow.run
    async def run(self, request: InfraRollbackInput) -> RollbackStatus:
        self.request = request
        steps = [IDENTIFY, CHECKOUT, PLAN, APPROVAL, APPLY, VERIFY] + ([MONITOR] if request.monitor_minutes else [])
        return await self.conduct(request, request.stack, steps, self.execute)

    async def execute(self) -> None:
        req, tl = self.request, self.timeline
        assert self.catalog is not None and tl is not None
        stack = self.catalog.stack(req.stack)

        async with tl.step(IDENTIFY) as st:
            found: Resolved = await call(TerraformActivities.resolve_stack_commits,
                                         ResolveRequest(name=req.stack, stack=stack, to_commit=req.to_commit),
                                         options=GIT)
            head, target = found.head, found.target
            self.s.from_version, self.s.to_version = head.short, target.short
            self.s.extra["recent_commits"] = found.recent
            if target.sha == head.sha:
                raise Refused(f"{req.to_commit} is {stack.branch}'s HEAD ({head}): nothing to roll back")
            st.detail = (f"{stack.branch} is at {head}; rolling back to {target}"
                         + ("" if found.on_branch else f" (not an ancestor of {stack.branch})"))

        async with tl.step(CHECKOUT) as st:
            co: Checkout = await call(TerraformActivities.checkout_stack, CheckoutRequest(
                name=req.stack, stack=stack, commit=target.sha, run_id=workflow.info().run_id), options=GIT)
            self.s.extra["worktree"] = co.worktree
            st.detail = f"{target.short} checked out in {co.worktree} (the operator's checkout is not touched)"

        async with tl.step(PLAN) as st:
            plan: PlanSummary = await call(TerraformActivities.plan_stack,
                                           PlanRequest(stack=stack, config_dir=co.config_dir),
                                           options=_terraform(stack, attempts=5))
            self.s.plan = _plan_lines(req.stack, target.short, plan)
            self.s.extra["terraform_plan"] = plan.model_dump(exclude={"output"}) | {
                "add": plan.add, "change": plan.change, "destroy": plan.destroy}
            self.s.extra["plan_output"] = plan.output
            st.detail = f"{plan.counts}; {PLAN_FILE} sha256 {plan.sha256[:12]}"
            self._publish()

        if not plan.has_changes:
            for name in (APPROVAL, APPLY):
                tl.skip(name, "the plan changes nothing")
        if req.dry_run:
            for name in ((APPROVAL, APPLY) if plan.has_changes else ()) + (VERIFY,) + (
                    (MONITOR,) if req.monitor_minutes else ()):
                tl.skip(name, "dry run")
            self.s.message = f"dry run: planned {plan.counts}; nothing was applied"
            return

        await self.begin([lock.stack(stack.repository, stack.directory)])
        applied: Applied | None = None
        if plan.has_changes:
            await self._approve(stack, head.short, target.short, plan)
            self.set_phase(Phase.rolling_back)
            async with tl.step(APPLY) as st:
                applied = await call(TerraformActivities.apply_stack_plan, ApplyRequest(
                    stack=stack, config_dir=co.config_dir, sha256=plan.sha256, state=plan.state),
                    options=_terraform(stack, attempts=3))
                self.s.extra["apply_output"] = applied.output
                st.detail = (f"applied {PLAN_FILE} (sha256 {plan.sha256[:12]}): {plan.counts}; state now "
                             f"{applied.state}" + (" (an earlier attempt had applied it)" if applied.already else ""))

        self.set_phase(Phase.validating)
        await self._verify(stack, co)
        if req.monitor_minutes:
            policy = self.catalog.policy
            async with tl.step(MONITOR) as st:
                st.detail = await self.monitor(req.monitor_minutes, policy.monitor_interval_minutes,
                                               lambda: self._checks(stack, co))
        self.s.message = (f"stack {req.stack} rolled back to {target}: {plan.counts}" if applied else
                          f"stack {req.stack} already matches {target}: nothing was applied")

    def left_behind(self) -> tuple[str, str]:
        return ("the plan was applied (or partly: terraform stops at the first error); the state file says what "
                "exists", f"to return the stack to {self.s.from_version}: "
                + self.starter(self.request.stack, f"--set to_commit={self.s.from_version}")
                + " (its plan shows what it changes, before approval)")

    async def _approve(self, stack: Stack, head: str, target: str, plan: PlanSummary) -> None:
        assert self.catalog is not None
        need = self.catalog.policy.destroy_requires_approvals
        destroys = [*plan.delete, *plan.replace]
        context = (f"terraform apply {PLAN_FILE} (sha256 {plan.sha256}) to stack {self.request.stack}: "
                   f"{stack.branch} {head} -> {target}, made against state {plan.state}. {plan.counts}. "
                   + " ".join(f"{label}: {', '.join(_cap(addrs))}." for label, addrs in _actions(plan) if addrs))
        extra = []
        if destroys:
            context += f" The plan DESTROYS {len(destroys)} resource(s): {need} approvers must approve."
            extra.append(ExtraRequirement(role="approvers", count=need, at_least=True,
                                          label="approver (plan destroys resources)"))
        await self.approval(context=context, extra=extra)

    async def _verify(self, stack: Stack, co: Checkout) -> None:
        """Runbook: "npm run infra:validate": tried up to the policy's validation_attempts."""
        assert self.catalog is not None and self.timeline is not None
        v = stack.validation
        if not v.command and not v.checks:
            self.timeline.skip(VERIFY, f"no validation in the catalog (stacks.{self.request.stack}.validation)")
            return
        policy = self.catalog.policy
        async with self.timeline.step(VERIFY) as st:
            for attempt in range(1, policy.validation_attempts + 1):
                results = await self._checks(stack, co)
                self.s.checks = results
                failed = [r for r in results if r.ok is False]
                if not failed:
                    st.detail = f"{len(results)} check(s) passed" + (f" (attempt {attempt})" if attempt > 1 else "")
                    return
                if attempt < policy.validation_attempts:
                    self._event(f"validation attempt {attempt} failed; trying again in "
                                f"{policy.validation_retry_seconds:g}s")
                    await workflow.sleep(policy.validation_retry_seconds)
            raise StepFailed("the rollback was applied but the infrastructure validation failed: "
                             + "; ".join(f"{r.name}: {r.detail}" for r in failed))

    async def _checks(self, stack: Stack, co: Checkout) -> list[CheckResult]:
        v, results = stack.validation, []
        if v.command:
            out: CommandOutcome = await call(
                TerraformActivities.validate_stack, ValidateRequest(stack=stack, config_dir=co.config_dir),
                options=dict(start_to_close_timeout=timedelta(minutes=v.timeout_minutes + 2),
                             heartbeat_timeout=timedelta(seconds=60), retry_policy=replace(RETRY, maximum_attempts=3)))
            self.s.extra["validation_output"] = out.output
            last = out.output.strip().splitlines()[-1:] or [""]
            how = f"exited {out.exit_code}" if out.exit_code is not None else "did not finish"
            results.append(CheckResult(name="validation command", ok=out.ok, value=out.exit_code,
                                       detail=f"`{' '.join(v.command)}` {how}" + (f": {last[0]}" if last[0] else ""),
                                       at=workflow.now()))
        if v.checks:
            results += await http_checks(endpoint_probes(Endpoints(), v.checks, None))
        return results


def _actions(plan: PlanSummary) -> list[tuple[str, list[str]]]:
    return [("add", plan.create), ("change", plan.update), ("replace", plan.replace), ("destroy", plan.delete)]


def _cap(addrs: list[str]) -> list[str]:
    return addrs[:SHOWN] + ([f"... and {len(addrs) - SHOWN} more"] if len(addrs) > SHOWN else [])


def _plan_lines(stack: str, target: str, plan: PlanSummary) -> list[str]:
    lines = [f"terraform plan of {stack} at {target}: {plan.counts}"]
    lines += [f"{label}: {a}" for label, addrs in _actions(plan) for a in _cap(addrs)]
    if plan.outputs_change:
        lines.append("outputs change")
    lines += [f"{PLAN_FILE} sha256 {plan.sha256}", f"made against state {plan.state}",
              f"terraform apply -input=false {PLAN_FILE}"]
    return lines
