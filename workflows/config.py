"""Runbook section 3, "Configuration Changes", as the ``ConfigRollback`` workflow: an AppConfig
configuration redeployed at a previous version, or a Secrets Manager secret's AWSCURRENT moved
back to its previous version."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.appconfig import (FEATURE_FLAGS, AppConfigActivities, AppConfigRef, Deployment, DeploymentRef,
                                      History, HostedVersion, Resolved, Served, StartRequest, VersionRef)
    from activities.ecs import EcsTaskActivities
    from activities.secrets import MoveCurrent, SecretStageActivities, SecretStages
    from common.catalog import AppConfigTarget, SecretTarget
    from common.models import CheckResult, ConfigRollbackInput, Phase, RollbackStatus
    from activities.known_good import Place, choose
    from workflows import lock
    from workflows.affected import STEPS as AFFECTED, validate_affected
    from workflows.known_good import refuse_automation, remember
    from workflows.base import MONITOR_EVIDENCE, RollbackWorkflow
    from workflows.options import call
    from workflows.timeline import StepFailed, Timeline

IDENTIFY = "Identify previous version"
APPROVAL = "Approval"
DEPLOY = "Deploy previous configuration version"
VERIFY_DEPLOYED = "Verify deployed configuration"
MOVE = "Move AWSCURRENT to previous version"
VERIFY_STAGES = "Verify secret stages"
REDEPLOY = "Redeploy consumers"
def run_token() -> str:
    """Marks what this run writes and deploys (labels, descriptions), so a retry of the activity
    finds what an earlier attempt did instead of doing it twice."""
    info = workflow.info()
    return "rollback-" + hashlib.sha256(f"{info.workflow_id}/{info.run_id}".encode()).hexdigest()[:16]


STEPS = {
    "appconfig": [IDENTIFY, APPROVAL, DEPLOY, VERIFY_DEPLOYED, *AFFECTED],
    "secret": [IDENTIFY, APPROVAL, MOVE, VERIFY_STAGES, REDEPLOY, *AFFECTED],
}


@workflow.defn(name="ConfigRollback", failure_exception_types=[ValidationError])
class ConfigRollback(RollbackWorkflow):
    """Rolls a configuration back, as the runbook's section 3 "Configuration Changes".

    - ``appconfig``: starts one deployment of the previous configuration version (``to_version``,
      or the version deployed before the current one) with the catalog's strategy, follows it to
      COMPLETE and verifies that clients are served exactly that version.
    - ``secret``: moves AWSCURRENT from the current version to the previous one (``to_version``,
      or AWSPREVIOUS), verifies the stages three ways (describe-secret, list-secret-version-ids,
      get-secret-value --version-stage AWSCURRENT's VersionId), then redeploys the catalog's
      consumer ECS services so they read it again. The secret's value is never read into the
      workflow, its status, its history or a log.

    Nothing changes before the approval; each change is made once, even across retries.
    """

    kind = "config"

    @workflow.run
    async def run(self, request: ConfigRollbackInput) -> RollbackStatus:
        self.request = request
        self.why = ""  # how the default target was chosen, when rollbacks' verdicts played a part
        return await self.conduct(request, request.target, [IDENTIFY, APPROVAL, "Roll back", "Verify"],
                                  self.execute)

    async def execute(self) -> None:
        assert self.catalog is not None
        target = self.catalog.config(self.request.target)
        self.timeline = Timeline(self.s, STEPS[target.kind] + ["Report"])  # the steps of this kind of target
        self._publish()
        if isinstance(target, AppConfigTarget):
            await self._appconfig(target)
        else:
            await self._secret(target)

    def left_behind(self) -> tuple[str, str]:
        back = self.starter(self.request.target, f"--to-version {self.s.from_version}")
        if "secret_versions" in self.s.extra:
            return (f"AWSCURRENT on {self.s.to_version}",
                    f"to put AWSCURRENT back on {self.s.from_version}: {back} (it redeploys the consumers too)")
        return (f"deployment {self.s.extra.get('deployment', '?')} of version {self.s.to_version} "
                f"({self.s.extra.get('deployment_state', 'started')})",
                f"to deploy version {self.s.from_version} again: {back}")

    def _dry_run(self, steps: list[str]) -> bool:
        if not self.request.dry_run:
            return False
        for name in steps[1:]:
            self.timeline.skip(name, "dry run")  # type: ignore[union-attr]
        self.s.message = "dry run: nothing was changed; the plan lists what a real run would do"
        return True

    # --- AppConfig ----------------------------------------------------------------------

    async def _appconfig(self, target: AppConfigTarget) -> None:
        req, tl = self.request, self.timeline
        assert tl is not None and self.catalog is not None
        async with tl.step(IDENTIFY) as st:
            r: Resolved = await call(AppConfigActivities.resolve, AppConfigRef(
                application=target.application, environment=target.environment, profile=target.profile))
            history: History = await call(AppConfigActivities.history, r)
            if history.in_progress is not None:
                busy = history.in_progress
                raise StepFailed(f"AppConfig deployment {busy.number} (version {busy.version}) is {busy.state} in "
                                 f"{r.environment}; AppConfig deploys one at a time: wait for it or stop it, then "
                                 "start again; nothing was changed")
            current = history.current
            if current is None:
                raise StepFailed(f"nothing is deployed from {r.profile} to {r.environment}; nothing to roll back")
            refuse_automation(self, f"version {current.version}", history.verdicts.get(current.version))
            version = await self._target_version(r, history, current)
            hosted: HostedVersion = await call(AppConfigActivities.hosted_version, VersionRef(resolved=r,
                                                                                              version=version))
            self.s.from_version, self.s.to_version = current.version, str(version)
            self.s.extra.update(appconfig=r.model_dump(), deployment_before=current.number,
                                target_sha256=hosted.sha256)
            st.detail = (f"{r.where}: deployment {current.number} serves version {current.version}; target: "
                         f"version {version}" + (" (to_version)" if req.to_version else
                                                 f": {self.why}" if self.why else " (the version deployed before it)"))
        self.s.plan = [
            f"approval: {self.catalog.policy.rule(self.s.severity).approvals} x "
            f"{self.catalog.policy.rule(self.s.severity).approver_role} ({self.s.severity})",
            f"aws appconfig start-deployment --application-id {r.application_id} --environment-id "
            f"{r.environment_id} --deployment-strategy-id {target.strategy} --configuration-profile-id "
            f"{r.profile_id} --configuration-version {version}",
            "wait for the deployment to complete; verify clients are served exactly that version",
        ]
        if self._dry_run(STEPS["appconfig"]):
            return
        await self.begin([lock.appconfig_profile(target.application, target.environment, target.profile)])

        await self.approval(context=f"redeploy {r.where} at version {version} (now {current.version})")
        self.set_phase(Phase.rolling_back)
        async with tl.step(DEPLOY) as st:
            now: History = await call(AppConfigActivities.history, r)  # the approval may have taken a while
            if now.in_progress is not None or now.current is None or now.current.number != current.number:
                moved = now.in_progress or now.current
                raise StepFailed(f"{r.where} changed since the plan (deployment {moved.number if moved else '?'} of "
                                 f"version {moved.version if moved else '?'}, {moved.state if moved else 'gone'}); "
                                 "nothing was changed: start again to plan from what is deployed now")
            d: Deployment = await call(AppConfigActivities.start_deployment, StartRequest(
                resolved=r, version=str(version), strategy=target.strategy, token=run_token(),
                description=f"rollback {self.s.workflow_id} by {req.requested_by} ({req.severity}): {req.reason}",
                latest_number=now.latest_number))
            self.s.extra["deployment"] = d.number
            d = await self._follow(r, d)
            st.detail = f"deployment {d.number} of version {d.version}: {d.state}"
        place = lambda v: Place(kind="appconfig", name=history.profile_arn, version=str(v))  # noqa: E731
        await remember(self, (place(current.version), "bad"), (place(version), "restored"))

        self.set_phase(Phase.validating)
        async with tl.step(VERIFY_DEPLOYED) as st:
            after: History = await call(AppConfigActivities.history, r)
            served: Served = await call(AppConfigActivities.served, r)
            now_serving = after.current
            ok_deploy = (now_serving is not None and now_serving.number == d.number
                         and now_serving.version == str(version))
            flags = r.profile_type == FEATURE_FLAGS  # served in AppConfig's evaluated form: not comparable
            ok_content = True if flags else served.sha256 == hosted.sha256
            at = workflow.now()
            self.s.checks = [
                CheckResult(name="deployed version", ok=ok_deploy, value=now_serving.version if now_serving else None,
                            baseline=str(version), at=at,
                            detail=(f"deployment {now_serving.number} ({now_serving.state}) serves version "
                                    f"{now_serving.version}" if now_serving else "nothing deployed")),
                CheckResult(name="served content", ok=ok_content, at=at,
                            detail=("feature-flag profile: served in evaluated form, not compared" if flags else
                                    f"clients are served {served.size} bytes, sha256 {served.sha256[:12]}; "
                                    f"version {version} has sha256 {hosted.sha256[:12]}")),
            ]
            failed = [c for c in self.s.checks if not c.ok]
            if failed:
                raise StepFailed("verification failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
            st.detail = f"{r.where} serves version {version} (deployment {d.number}); content matches"
        await validate_affected(self, f"configuration {req.target}", target.services, target.metrics,
                                current.started_at, f"the deployment of version {current.version}",
                                req.monitor_minutes)
        if self.monitored_good or not workflow.patched(MONITOR_EVIDENCE):
            await remember(self, (place(version), "good"))
        self.s.message = f"{r.where} rolled back from version {current.version} to {version}"

    async def _target_version(self, r: Resolved, history: History, current: Deployment) -> int:
        """``to_version`` (must exist), else the version of the newest earlier completed deployment."""
        if self.request.to_version is not None:
            if not self.request.to_version.isdigit():
                raise StepFailed(f"to_version {self.request.to_version!r} is not an AppConfig hosted configuration "
                                 "version number (e.g. \"1\"); nothing was changed")
            if self.request.to_version == current.version:
                raise StepFailed(f"version {current.version} is already deployed to {r.environment}; nothing to "
                                 "roll back")
            if self.ledger is not None:  # a typo fails here, naming the field (runs from before: at the read)
                versions: list[int] = await call(AppConfigActivities.hosted_versions, r)
                if int(self.request.to_version) not in versions:
                    raise StepFailed(f"to_version {self.request.to_version!r} is not a hosted configuration version "
                                     f"of {r.profile} (versions: {', '.join(map(str, versions)) or 'none'}); "
                                     "nothing was changed")
            return int(self.request.to_version)
        earlier = list(dict.fromkeys(d.version for d in history.deployments
                                     if d.number < current.number and d.state == "COMPLETE"
                                     and d.version != current.version))
        choice = choose(earlier, history.verdicts, label=lambda v: f"version {v}")
        if choice is None:
            versions: list[int] = await call(AppConfigActivities.hosted_versions, r)
            bad = " (the earlier ones were all left as bad by rollbacks)" if earlier else ""
            raise StepFailed(f"no earlier deployment of {r.profile} to {r.environment} than version {current.version}"
                             f"{bad}; give to_version (hosted versions: {', '.join(map(str, versions)) or 'none'}); "
                             "nothing was changed")
        if any(v in history.verdicts for v in earlier):
            self.why = choice.why
        return int(choice.version)

    async def _follow(self, r: Resolved, d: Deployment) -> Deployment:
        policy = self.catalog.policy  # type: ignore[union-attr]
        deadline = workflow.now() + timedelta(minutes=policy.appconfig_deploy_timeout_minutes)
        while d.state != "COMPLETE":
            self.s.extra["deployment_state"] = f"{d.state} {d.percent:g}%"
            self._publish()
            if d.failed:
                raise StepFailed(f"AppConfig deployment {d.number} ended {d.state} (an alarm during the rollout?): "
                                 f"clients are served version {self.s.from_version} again; look at the deployment's "
                                 "events, then start again")
            if workflow.now() >= deadline:
                raise StepFailed(f"AppConfig deployment {d.number} is still {d.state} after "
                                 f"{policy.appconfig_deploy_timeout_minutes:g} min; it goes on: follow it in AppConfig")
            await workflow.sleep(timedelta(seconds=policy.appconfig_poll_seconds))
            d = await call(AppConfigActivities.deployment, DeploymentRef(resolved=r, number=d.number))
        self.s.extra["deployment_state"] = "COMPLETE 100%"
        return d

    # --- Secrets Manager ----------------------------------------------------------------

    async def _secret(self, target: SecretTarget) -> None:
        req, tl = self.request, self.timeline
        assert tl is not None and self.catalog is not None
        sid = target.secret_id
        async with tl.step(IDENTIFY) as st:
            before: SecretStages = await call(SecretStageActivities.secret_stages, sid)
            current = before.current
            if current is None:
                raise StepFailed(f"secret {sid} has no AWSCURRENT version; nothing to roll back")
            known = [v.version_id for v in before.versions]
            verdicts = {v.version_id: v.verdict for v in before.versions if v.verdict}
            refuse_automation(self, f"version {current}", verdicts.get(current))
            why = ""
            if req.to_version is not None:
                if req.to_version not in known:
                    raise StepFailed(f"to_version {req.to_version!r} is not a version of secret {sid} (versions: "
                                     f"{', '.join(known)}); nothing was changed")
                if req.to_version == current:
                    raise StepFailed(f"version {current} of {sid} already is AWSCURRENT; nothing to roll back")
                previous = req.to_version
            elif before.previous is None or before.previous == current:
                raise StepFailed(f"secret {sid} has no AWSPREVIOUS version to go back to; give to_version "
                                 f"(versions: {', '.join(known)}); nothing was changed")
            else:  # AWSPREVIOUS, unless a rollback left it as bad: then the newest other version not bad
                others = [before.previous] + [v for v in known if v not in (current, before.previous)]
                choice = choose(others, verdicts, label=lambda v: f"version {v}")
                if choice is None:
                    raise StepFailed(f"every earlier version of secret {sid} was left as bad by a rollback; give "
                                     f"to_version (versions: {', '.join(known)}); nothing was changed")
                previous = choice.version
                why = choice.why if any(v in verdicts for v in others) else ""
            self.s.from_version, self.s.to_version = current, previous
            self.s.extra["secret_versions"] = [v.model_dump(mode="json") for v in before.versions]
            st.detail = (f"{sid}: AWSCURRENT on {current}; target {previous}"
                         + (" (to_version)" if req.to_version else f": {why}" if why else " (AWSPREVIOUS)"))
        consumers = target.consumers
        self.s.plan = [
            f"approval: {self.catalog.policy.rule(self.s.severity).approvals} x "
            f"{self.catalog.policy.rule(self.s.severity).approver_role} ({self.s.severity})",
            f"aws secretsmanager update-secret-version-stage --secret-id {sid} --version-stage AWSCURRENT "
            f"--remove-from-version-id {current} --move-to-version-id {previous}",
            "verify the stages (describe-secret, list-secret-version-ids, get-secret-value --version-stage "
            "AWSCURRENT: its VersionId only)",
            *[f"aws ecs update-service --cluster {c.cluster} --service {c.service} --force-new-deployment"
              for c in consumers],
        ]
        if self._dry_run(STEPS["secret"]):
            return
        await self.begin([lock.secret(sid), *(lock.ecs_service(c) for c in consumers)])

        await self.approval(context=f"move AWSCURRENT of {sid} from {current} back to {previous}")
        self.set_phase(Phase.rolling_back)
        async with tl.step(MOVE) as st:
            moved: bool = await call(SecretStageActivities.move_current, MoveCurrent(
                secret_id=sid, from_version=current, to_version=previous))
            st.detail = f"AWSCURRENT: {current} -> {previous}" + ("" if moved else " (it already was)")
        await remember(self, (Place(kind="secret", name=sid, version=current), "bad"),
                       (Place(kind="secret", name=sid, version=previous), "restored"))

        self.set_phase(Phase.validating)
        async with tl.step(VERIFY_STAGES) as st:
            after: SecretStages = await call(SecretStageActivities.secret_stages, sid)
            at = workflow.now()
            reads = {"describe-secret": after.current, "list-secret-version-ids": after.listed_current,
                     "get-secret-value --version-stage AWSCURRENT": after.served_current}
            self.s.checks = [CheckResult(name=f"AWSCURRENT ({how})", ok=got == previous, value=got, baseline=previous,
                                         at=at, detail=f"AWSCURRENT is {got}") for how, got in reads.items()]
            self.s.checks.append(CheckResult(name="AWSPREVIOUS", ok=after.previous == current, value=after.previous,
                                             baseline=current, at=at, detail=f"AWSPREVIOUS is {after.previous}"))
            failed = [c for c in self.s.checks if not c.ok]
            if failed:
                raise StepFailed("verification failed: " + "; ".join(f"{c.name}: {c.detail}, expected "
                                                                     f"{c.baseline}" for c in failed))
            st.detail = f"AWSCURRENT on {previous}, AWSPREVIOUS on {current} (read three ways)"
        await remember(self, (Place(kind="secret", name=sid, version=previous), "good"))

        if not consumers:
            tl.skip(REDEPLOY, "the catalog lists no consumers")
        else:
            async with tl.step(REDEPLOY) as st:
                for c in consumers:
                    await call(EcsTaskActivities.force_new_deployment, c)
                    self._event(f"forced a new deployment of {c.cluster}/{c.service}")
                st.detail = "new deployment forced: " + ", ".join(f"{c.cluster}/{c.service}" for c in consumers)
        await validate_affected(self, f"secret {req.target}", target.services, target.metrics, None,
                                f"version {current} of the secret", req.monitor_minutes)
        self.s.message = f"secret {sid}: AWSCURRENT back on {previous} (was {current})"
