"""Runbook section 1, "Application Service Rollback", as the ``ServiceRollback`` workflow."""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.ecs import Deployed, DeployRequest, EcsActivities, Identified, Revision, VersionQuery
    from activities.elbv2 import Elbv2Activities, Weights
    from activities.known_good import Place, choose, describe
    from common.catalog import BlueGreenSide, EcsRef, Service, Stage
    from common.models import CheckResult, Phase, RollbackStatus, ServiceRollbackInput
    from workflows.base import RollbackWorkflow
    from workflows import lock
    from workflows.checks import endpoint_probes, http_checks, live_ecs, metric_checks, serving_version, service_checks
    from workflows.known_good import refuse_automation, remember
    from workflows.fast_path import FAST_PATH
    from workflows.options import call, read
    from workflows.timeline import StepFailed
    from workflows.verdicts import EVIDENCE, PATCH, Verdicts, awaiting_evidence, baseline_ref, blocking, summary

IDENTIFY = "Identify previous stable version"
STAGING = "Verify in staging"
APPROVAL = "Approval"
EXECUTE = "Execute rollback"
VALIDATE = "Validate rollback"
MONITOR = "Monitor post-rollback"
STEPS = [IDENTIFY, STAGING, APPROVAL, EXECUTE, VALIDATE, MONITOR]


@workflow.defn(name="ServiceRollback", failure_exception_types=[ValidationError])
class ServiceRollback(RollbackWorkflow):
    """Rolls an ECS service back to its previous stable version, as the runbook's section 1.

    Each change (update-service, listener weights) is made once, after approval; traffic never
    moves back to the bad version on its own; the service is watched for 30 minutes after.
    """

    kind = "service"
    rehearsal_steps = (STAGING,)

    @workflow.run
    async def run(self, request: ServiceRollbackInput) -> RollbackStatus:
        self.request = request
        return await self.conduct(request, request.service, STEPS, self.execute)

    async def execute(self) -> None:
        req = self.request
        assert self.catalog is not None and self.timeline is not None
        svc = self.catalog.service(req.service)
        self.customer_facing = svc.customer_facing
        policy = self.catalog.policy
        if req.rollout_percentages and svc.blue_green is None:
            raise StepFailed(f"rollout_percentages needs a blue/green service, and {req.service!r} has no "
                             "blue_green entry in the catalog; leave rollout_percentages out to roll back at once")

        async with self.timeline.step(IDENTIFY) as st:
            ecs = svc.ecs if svc.blue_green is None else await self._live_side(svc)
            current: Deployed
            revisions: list[Revision]
            if workflow.patched(FAST_PATH):  # one short read: what runs and the target, not every revision
                found: Identified = await read(EcsActivities.identify, VersionQuery(ecs=ecs, to_version=req.to_version))
                current, revisions = found.current, found.revisions
            else:
                current = await call(EcsActivities.describe_deployed, ecs)
                revisions = await call(EcsActivities.list_versions, ecs)
            now = next((r for r in revisions if r.arn == current.task_definition.arn), current.task_definition)
            refuse_automation(self, _label(now), now.verdict)
            target, why = choose_target(current.task_definition, revisions, req.to_version)
            self.s.from_version, self.s.to_version = current.task_definition.version, target.version
            self.s.extra["target_task_definition"] = target.arn
            # The baselines: the target while it was serving, before the current version's deploy began.
            self.verdicts = Verdicts(self.catalog, baseline_ref(target.version, current.deployed_at, (
                f"the {current.task_definition.version} deploy" + (f" at {current.deployed_at:%Y-%m-%d %H:%M} UTC"
                                                                    if current.deployed_at else ""))), self.s)
            st.detail = (f"deployed: {current.task_definition.version} (revision {current.task_definition.revision}); "
                         f"target: {target.version} (revision {target.revision})" + (f": {why}" if why else ""))

        self.where: tuple[EcsRef, Revision, Revision] = (ecs, current.task_definition, target)
        self.sides: tuple[BlueGreenSide, BlueGreenSide, Revision | None] | None = None  # blue/green: live, standby
        self.s.plan = self._plan(svc, ecs, target)
        if req.dry_run:
            for name in (STAGING, APPROVAL, EXECUTE, VALIDATE, MONITOR):
                self.timeline.skip(name, "dry run")
            self.s.message = "dry run: nothing was changed; the plan lists what a real run would do"
            return

        await self.begin(resources(svc))
        if svc.staging is None:
            self.timeline.skip(STAGING, "no staging counterpart in the catalog")
        else:
            async with self.timeline.step(STAGING) as st:
                st.detail = await self._verify_in_staging(svc.staging, target)

        await self.approval(
            context=f"roll back {req.service} ({svc.ecs.cluster}/{svc.ecs.service}) from "
                    f"{self.s.from_version} to {target.version} ({target.arn.rsplit('/', 1)[-1]})")

        self.set_phase(Phase.rolling_back)
        async with self.timeline.step(EXECUTE) as st:
            if req.rollout_percentages and svc.blue_green is not None:
                st.detail = await self._gradual(svc, target, req.rollout_percentages)
            else:
                changed = await call(EcsActivities.deploy_task_definition,
                                     DeployRequest(ecs=ecs, task_definition_arn=target.arn))
                await self._wait_settled(ecs, target)
                st.detail = (f"{ecs.service} on {target.arn.rsplit('/', 1)[-1]} and settled"
                             + ("" if changed else " (it already was)"))
        await remember(self, (Place(kind="ecs", name=current.task_definition.arn), "bad"),
                       (Place(kind="ecs", name=target.arn), "restored"))

        self.set_phase(Phase.validating)
        async with self.timeline.step(VALIDATE) as st:
            st.detail = await self._validate(svc, target.version)

        minutes = req.monitor_minutes or policy.monitor_minutes
        async with self.timeline.step(MONITOR) as st:
            st.detail = await self.monitor(minutes, policy.monitor_interval_minutes,
                                           lambda: self._checks(svc, target.version))
        if self.monitored_good:
            await remember(self, (Place(kind="ecs", name=target.arn), "good"))
        self.s.message = (f"{req.service} rolled back to {target.version}"
                          + self.monitoring_outcome())

    def left_behind(self) -> tuple[str, str]:
        ecs, bad, target = self.where
        ecs_cmd = "aws ecs update-service --cluster {} --service {} --task-definition {}".format
        if self.timeline is not None and self.timeline.get(EXECUTE).state.value == "pending":
            return (f"production is untouched ({ecs.service} runs {bad.version}); only staging was changed",
                    "nothing to undo in production; staging runs the version it was given")
        if self.sides is None:
            return (f"{ecs.service} runs {target.version} ({_td(target.arn)}), {bad.version} before",
                    f"to return {ecs.service} to {bad.version}: {ecs_cmd(ecs.cluster, ecs.service, _td(bad.arn))}; "
                    "or start a rollback to another version with to_version")
        live, standby, standby_before = self.sides
        pct = self.s.extra.get("rollout_percentage", 0)
        bg = self.catalog.service(self.request.service).blue_green  # type: ignore[union-attr]
        state = (f"traffic: {pct}% on {standby.ecs.service} ({target.version}), {100 - pct}% on {live.ecs.service} "
                 f"({bad.version}); {standby.ecs.service} runs {target.version}"
                 + (" and serves nothing" if pct == 0 else ""))
        clean = [f"fix the cause (e.g. the IAM permission named above) and start the rollback again: it reuses "
                 f"{standby.ecs.service} as it is"]
        if pct and bg is not None:
            clean.append(f"or send all traffic back to {live.ecs.service}: aws elbv2 modify-listener --listener-arn "
                         f"{bg.listener_arn} --default-actions 'Type=forward,ForwardConfig={{TargetGroups=["
                         f"{{TargetGroupArn={live.target_group_arn},Weight=100}},"
                         f"{{TargetGroupArn={standby.target_group_arn},Weight=0}}]}}'")
        if standby_before is not None and standby_before.arn != target.arn:
            clean.append(f"to put {standby.ecs.service} back on {standby_before.version}: "
                         + ecs_cmd(standby.ecs.cluster, standby.ecs.service, _td(standby_before.arn)))
        return state, "; ".join(clean)

    # --- steps -----------------------------------------------------------------------

    async def _live_side(self, svc: Service) -> EcsRef:
        """Blue/green: the side with most traffic is the one being rolled back."""
        assert svc.blue_green is not None
        w: Weights = await call(Elbv2Activities.get_weights, svc.blue_green.listener_arn)
        bg = svc.blue_green
        live = bg.blue if w.weights.get(bg.blue.target_group_arn, 0) >= w.weights.get(bg.green.target_group_arn, 0) \
            else bg.green
        return live.ecs

    def _plan(self, svc: Service, ecs: EcsRef, target: Revision) -> list[str]:
        td = target.arn.rsplit("/", 1)[-1]
        plan = []
        if svc.staging:
            plan.append(f"staging: ecs update-service --cluster {svc.staging.ecs.cluster} "
                        f"--service {svc.staging.ecs.service} to version {target.version}, then smoke checks")
        plan.append(f"approval: {self.catalog.policy.rule(self.s.severity).approvals} x "  # type: ignore[union-attr]
                    f"{self.catalog.policy.rule(self.s.severity).approver_role} ({self.s.severity})")  # type: ignore[union-attr]
        pcts = self.request.rollout_percentages
        if pcts and svc.blue_green:
            plan.append(f"ecs update-service (standby side) --task-definition {td}")
            plan += [f"elbv2 modify-listener: {p}% to {target.version}" for p in pcts]
        else:
            plan.append(f"ecs update-service --cluster {ecs.cluster} --service {ecs.service} --task-definition {td}")
        plan.append("wait for ECS to settle; validate health, ready, version, smoke checks, metrics")
        plan.append(f"monitor {self.request.monitor_minutes or self.catalog.policy.monitor_minutes:g} minutes")  # type: ignore[union-attr]
        return plan

    async def _verify_in_staging(self, stage: Stage, target: Revision) -> str:
        revisions: list[Revision] = await call(EcsActivities.list_versions, stage.ecs)
        match = next((r for r in revisions if r.version == target.version), None)
        if match is None:
            raise StepFailed(f"version {target.version} has no task definition in staging "
                             f"({stage.ecs.cluster}/{stage.ecs.service}); cannot verify it there")
        await call(EcsActivities.deploy_task_definition, DeployRequest(ecs=stage.ecs, task_definition_arn=match.arn))
        await self._wait_settled(stage.ecs, match)
        results = await http_checks(endpoint_probes(stage.endpoints, stage.smoke_checks, target.version))
        failed = [r for r in results if r.ok is False]
        if failed:
            raise StepFailed("staging smoke test failed: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
        return f"{target.version} deployed in staging; {len(results)} check(s) passed"

    async def _wait_settled(self, ecs: EcsRef, target: Revision) -> None:
        policy = self.catalog.policy  # type: ignore[union-attr]
        deadline = workflow.now() + timedelta(minutes=policy.settle_timeout_minutes)
        while True:
            d: Deployed = await call(EcsActivities.describe_deployed, ecs)
            if d.task_definition.arn == target.arn and d.settled:
                return
            if workflow.now() >= deadline:
                raise StepFailed(
                    f"{ecs.service} did not settle on {target.version} within {policy.settle_timeout_minutes:g} min "
                    f"(running {d.running_count}/{d.desired_count}, {d.deployments} deployment(s)); "
                    "check the ECS events for failing tasks")
            await workflow.sleep(policy.settle_poll_seconds)

    async def _gradual(self, svc: Service, target: Revision, percentages: list[int]) -> str:
        """Runbook: shift traffic in steps, wait 5 minutes and check metrics before each next step."""
        assert svc.blue_green is not None
        policy = self.catalog.policy  # type: ignore[union-attr]
        bg = svc.blue_green
        w: Weights = await call(Elbv2Activities.get_weights, bg.listener_arn)
        blue_live = w.weights.get(bg.blue.target_group_arn, 0) >= w.weights.get(bg.green.target_group_arn, 0)
        live, standby = (bg.blue, bg.green) if blue_live else (bg.green, bg.blue)
        before: Deployed | None = None
        if self.ledger is not None:  # what the standby runs now, to say how to put it back after a failure
            before = await call(EcsActivities.describe_deployed, standby.ecs)
        self.sides = (live, standby, before.task_definition if before else None)
        self.s.extra.setdefault("rollout_percentage", 0)
        await call(EcsActivities.deploy_task_definition,
                   DeployRequest(ecs=standby.ecs, task_definition_arn=target.arn))
        await self._wait_settled(standby.ecs, target)

        async def shift(pct: int) -> None:
            await call(Elbv2Activities.set_weights, Weights(
                listener_arn=bg.listener_arn,
                weights={standby.target_group_arn: pct, live.target_group_arn: 100 - pct}))
            self._event(f"traffic: {pct}% on {target.version} ({standby.ecs.service})")
            self.s.extra["rollout_percentage"] = pct
            self._publish()

        async def canary() -> list[CheckResult]:
            """Between steps: what the standby side runs, and its metrics."""
            if not workflow.patched(PATCH):
                return await metric_checks(svc.metrics, svc.alarms, target.version, policy)
            serving, version = await serving_version(standby.ecs, target.version, [])
            return [serving] + await self.verdicts.metric_checks(svc.metrics, svc.alarms, version)

        done = await self.shift_in_steps(percentages, EXECUTE, shift, canary)
        return f"traffic shifted in steps {done} to {standby.ecs.service} on {target.version}"

    async def _validate(self, svc: Service, version: str) -> str:
        policy = self.catalog.policy  # type: ignore[union-attr]
        # Right after the change the version now serving has little data of its own: while only windows
        # too thin to judge block, read again a reading interval apart, until one metric window has passed.
        evidence_by = workflow.now() + timedelta(minutes=policy.metric_window_minutes)
        attempt = 0
        while True:
            attempt += 1
            results = await self._checks(svc, version)
            self.s.checks = results
            if workflow.patched(PATCH):  # no evidence is no pass: an inconclusive required check blocks too
                failed = blocking(results)
                if not failed:
                    return summary(results)
            else:
                failed = [r for r in results if r.ok is False]
            if not failed:
                unchecked = [r.name for r in results if r.ok is None]
                return (f"{sum(1 for r in results if r.ok)} check(s) passed"
                        + (f"; not checked (no data): {', '.join(unchecked)}" if unchecked else ""))
            if attempt < policy.validation_attempts:
                await workflow.sleep(policy.validation_retry_seconds)
            elif awaiting_evidence(failed, policy) and workflow.now() < evidence_by and workflow.patched(EVIDENCE):
                await workflow.sleep(timedelta(minutes=policy.reading_interval_minutes))
            else:
                break
        raise StepFailed("validation failed: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))

    async def _checks(self, svc: Service, version: str) -> list[CheckResult]:
        policy = self.catalog.policy  # type: ignore[union-attr]
        if workflow.patched(PATCH):
            return await service_checks(svc, await live_ecs(svc), version, self.verdicts)
        return (await http_checks(endpoint_probes(svc.endpoints, svc.smoke_checks, version))
                + await metric_checks(svc.metrics, svc.alarms, version, policy))


def resources(svc: Service) -> list[str]:
    """What a service rollback may touch: its ECS service(s), the listener, the staging service."""
    ecs = [svc.ecs] if svc.blue_green is None else [svc.blue_green.blue.ecs, svc.blue_green.green.ecs]
    names = [lock.ecs_service(e) for e in ecs]
    if svc.blue_green is not None:
        names.append(lock.listener(svc.blue_green.listener_arn))
    if svc.staging is not None:
        names.append(lock.ecs_service(svc.staging.ecs))
    return names


def _td(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _label(r: Revision) -> str:
    return f"{r.version} (revision {r.revision})"


def choose_target(current: Revision, revisions: list[Revision], to_version: str | None) -> tuple[Revision, str]:
    """``to_version`` if given (must exist; a person may name any version), else the newest revision
    with an earlier, different version that no rollback left as bad (activities/known_good.py).
    Returns it and why it was chosen."""
    if to_version:
        match = next((r for r in revisions if r.version == to_version), None)
        if match is None:
            known = ", ".join(dict.fromkeys(r.version for r in revisions))
            raise StepFailed(f"to_version {to_version!r} matches no task-definition revision of "
                             f"{current.family} (versions that exist: {known})")
        if match.version == current.version:
            raise StepFailed(f"{current.family} already runs {to_version} (revision {current.revision}); "
                             "nothing to roll back")
        return match, (f"named by to_version; {describe(_label(match), match.verdict)}" if match.verdict else "")
    older = [r for r in revisions if r.revision < current.revision and r.version != current.version]
    if not older:
        raise StepFailed(f"no earlier version of {current.family} than {current.version} "
                         f"(revision {current.revision}) exists to roll back to")
    by_arn = {r.arn: r for r in older}
    choice = choose([r.arn for r in older], {r.arn: r.verdict for r in older if r.verdict},
                    label=lambda arn: _label(by_arn[arn]))
    if choice is None:
        raise StepFailed(f"every earlier version of {current.family} was left as bad by a rollback ("
                         + "; ".join(describe(_label(r), r.verdict) for r in older[:5])
                         + "); name the version to return to with to_version")
    judged = any(r.verdict for r in older)
    return by_arn[choice.version], (choice.why if judged else "")
