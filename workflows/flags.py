"""Runbook section 4, "Feature Flag Rollback" (the fastest rollback method), as ``FeatureFlagRollback``.

The flag store is behind ``activities.flags.FlagStore`` (AWS AppConfig today): this module never
names a provider's API.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.flags import (FlagActivities, FlagChange, FlagDeploy, FlagRef, FlagSnapshot, FlagValue,
                                  FlagWrite, Rollout, RolloutRef, Written)
    from common.catalog import Flag
    from common.models import (ApprovalRecord, Approvals, CheckResult, FeatureFlagRollbackInput, Phase,
                               Requirement, RollbackStatus)
    from workflows.affected import STEPS as AFFECTED, validate_affected
    from workflows.base import RollbackWorkflow
    from workflows import lock
    from workflows.config import run_token
    from workflows.options import call
    from workflows.timeline import StepFailed

READ = "Read flag state"
APPROVAL = "Approval"
DISABLE = "Disable feature globally"
UPDATE = "Update flag"
KILL_SWITCH = "Enable kill switch"
DEPLOY = "Deploy configuration"
VERIFY = "Verify flag state"
BAKE = "Confirm deployment complete"


@workflow.defn(name="FeatureFlagRollback", failure_exception_types=[ValidationError])
class FeatureFlagRollback(RollbackWorkflow):
    """Turns a feature off (everywhere, or per city), sets its rollout percentage per city, or
    enables a kill switch, as the runbook's section 4, and always ends by reading the flag back.

    Only the requested values change: every other flag and attribute stays as it was, byte for
    byte. The new revision is written once and deployed once, even across retries and worker
    crashes, and nothing is written before the approval. An on-call engineer's kill switch at the
    severities the policy lists (``kill_switch_immediate``: SEV-3, SEV-4) waits for nobody. The
    status reports ``extra.seconds_to_verified``: from the start to the flag verified as served.
    """

    kind = "flag"

    @workflow.run
    async def run(self, request: FeatureFlagRollbackInput) -> RollbackStatus:
        self.request = request
        self.update_step = (KILL_SWITCH if request.action == "kill_switch" else
                            DISABLE if request.action == "disable" and request.all_cities else UPDATE)
        return await self.conduct(request, request.flag, [READ, APPROVAL, self.update_step, DEPLOY, VERIFY, BAKE,
                                                          *AFFECTED], self.execute)

    async def execute(self) -> None:
        req, tl = self.request, self.timeline
        assert self.catalog is not None and tl is not None
        flag = self.catalog.flag(req.flag)
        self.customer_facing = flag.customer_facing
        ref = FlagRef(store=self.catalog.flag_stores[flag.store], key=flag.key or req.flag, cities=flag.cities)

        async with tl.step(READ) as st:
            change = self._change(flag)
            before: FlagSnapshot = await call(FlagActivities.read_flag, ref)
            self._check(flag, ref, before, change)
            expected = _expected(before.value, change)
            self.s.from_version, self.s.to_version = _describe(before.value), _describe(expected)
            self.s.extra.update(flag_key=ref.key, store=flag.store, revision_before=before.revision,
                                before=before.value.model_dump(), expected=expected.model_dump())
            st.detail = f"{ref.key} in store {flag.store} (revision {before.revision}): {self.s.from_version}"
        read_at = workflow.now()
        noop = expected == before.value
        self.s.plan = self._plan(flag, ref, before, change, noop)
        if req.dry_run:
            for name in (APPROVAL, self.update_step, DEPLOY, VERIFY, BAKE, *AFFECTED):
                tl.skip(name, "dry run")
            self.s.message = "dry run: nothing was changed; the plan lists what a real run would do"
            return

        await self.begin([lock.flag_store(ref.store)])
        await self._approve(ref, before, expected)
        self.set_phase(Phase.rolling_back)
        if workflow.now() > read_at:  # the approval took a while: change what is deployed now
            before, expected, noop = await self._reread(flag, ref, before, change)
        rollout: Rollout | None = None
        written: Written | None = None
        if noop:
            for name in (self.update_step, DEPLOY):
                tl.skip(name, f"the flag already is {self.s.to_version}")
        else:
            token = run_token()
            why = f"{req.action} by {req.requested_by} ({req.severity}): {req.reason}"
            async with tl.step(self.update_step) as st:
                written = await call(FlagActivities.write_flag, FlagWrite(
                    ref=ref, base_revision=before.revision, latest_revision=before.latest_revision, change=change,
                    token=token, description=f"rollback {self.s.workflow_id}: {why}"))
                self.s.extra["revision_written"] = written.revision
                st.detail = f"revision {written.revision}: " + "; ".join(written.changed)
            async with tl.step(DEPLOY) as st:
                rollout = await call(FlagActivities.deploy_flags, FlagDeploy(
                    ref=ref, revision=written.revision, kill_switch=req.action == "kill_switch", token=token,
                    description=f"rollback {self.s.workflow_id}: {why}", rollout_seq=before.rollout_seq))
                rollout = await self._follow(ref, rollout, ("delivered", "complete"))
                st.detail = rollout.detail

        self.set_phase(Phase.validating)
        async with tl.step(VERIFY) as st:
            st.detail = await self._verify(ref, expected, change, written)
            self.s.extra["seconds_to_verified"] = (workflow.now() - self.s.started_at).total_seconds() \
                if self.s.started_at else None

        if rollout is None or rollout.state == "complete":
            tl.skip(BAKE, "nothing deployed" if rollout is None else "the deployment had completed")
        else:
            async with tl.step(BAKE) as st:
                rollout = await self._follow(ref, rollout, ("complete",))
                st.detail = rollout.detail
        await validate_affected(self, f"flag {req.flag}", flag.services, flag.metrics, before.deployed_at,
                                f"the deployment of {ref.key} revision {before.revision}", req.monitor_minutes)
        self.s.message = (f"flag {req.flag} is {self.s.to_version}, verified as served "
                          f"{self.s.extra['seconds_to_verified']:g} s after the start"
                          + (f"; {len(self.s.regressions)} regression(s) seen while monitoring: see status"
                             if self.s.regressions else ""))

    def left_behind(self) -> tuple[str, str]:
        before = self.s.extra.get("revision_before")
        written = self.s.extra.get("revision_written")
        rollout = self.s.extra.get("rollout") or {}
        state = (f"flag store revision {written} written" + (f", its deployment {rollout.get('state')}" if rollout else
                                                             ", not deployed") if written else "")
        return state, (f"revision {before} is the flag as it was: start a flag rollback with the values it had "
                       f"({self.s.from_version}), or redeploy revision {before} in the store")

    # --- steps -------------------------------------------------------------------------

    def _change(self, flag: Flag) -> FlagChange:
        """What to change, checked against the catalog first (nothing is read or written yet)."""
        req = self.request
        if req.action == "kill_switch":
            if not flag.kill_switch:
                switches = sorted(n for n, f in self.catalog.flags.items() if f.kill_switch)  # type: ignore[union-attr]
                raise StepFailed(f"flag {req.flag!r} is not a kill switch in the catalog (kill switches: "
                                 f"{', '.join(switches) or 'none'}); use action disable; nothing was changed")
            return FlagChange(enabled=True)
        if req.action == "disable" and req.all_cities:
            return FlagChange(enabled=False)
        if flag.kill_switch:
            raise StepFailed(f"flag {req.flag!r} is a kill switch: it has no cities or percentages; "
                             "use action kill_switch or disable with all_cities; nothing was changed")
        cities = req.cities or flag.cities
        unknown = [c for c in cities if c not in flag.cities]
        if unknown or not cities:
            raise StepFailed(f"{'city ' + repr(unknown[0]) if unknown else 'all_cities'}: flag {req.flag!r} has "
                             f"{'no such city' if unknown else 'no cities'} in the catalog (its cities: "
                             f"{', '.join(flag.cities) or 'none'}); nothing was changed")
        pct = 0 if req.action == "disable" else req.percentage
        assert pct is not None
        return FlagChange(percentages={c: pct for c in cities})

    def _check(self, flag: Flag, ref: FlagRef, before: FlagSnapshot, change: FlagChange) -> None:
        """What the store says must agree with the request; else fail before any change."""
        if not before.value.defined:
            raise StepFailed(f"flag {ref.key!r} is not in flag store {flag.store} (flags there: "
                             f"{', '.join(before.flags) or 'none'}); fix the flag's key in the catalog; "
                             "nothing was changed")
        missing = [c for c in change.percentages if c in before.value.missing_cities]
        if missing:
            raise StepFailed(f"flag {ref.key!r} defines no rollout attribute for {', '.join(missing)} in flag store "
                             f"{flag.store} (the catalog lists it): add the attribute to the flag's definition "
                             "first; nothing was changed")
        if before.busy:
            raise StepFailed(f"{before.busy}; nothing was changed")

    async def _reread(self, flag: Flag, ref: FlagRef, planned: FlagSnapshot,
                      change: FlagChange) -> tuple[FlagSnapshot, FlagValue, bool]:
        now: FlagSnapshot = await call(FlagActivities.read_flag, ref)
        self._check(flag, ref, now, change)
        if now.revision != planned.revision:
            self._event(f"the store deployed revision {now.revision} since the plan (was {planned.revision}): "
                        "the change is made to it")
        expected = _expected(now.value, change)
        self.s.to_version = _describe(expected)
        self.s.extra.update(revision_before=now.revision, before=now.value.model_dump(),
                            expected=expected.model_dump())
        return now, expected, expected == now.value

    def _plan(self, flag: Flag, ref: FlagRef, before: FlagSnapshot, change: FlagChange, noop: bool) -> list[str]:
        rule = self.catalog.policy.rule(self.s.severity)  # type: ignore[union-attr]
        what = ([f"{ref.key}.enabled = {str(change.enabled).lower()}"] if change.enabled is not None else []) + \
            [f"{ref.key}.{c} = {p}%" for c, p in change.percentages.items()]
        if noop:
            return [f"nothing to write: {', '.join(what)} already", "read the flag back as clients are served"]
        approval = ("none: the on-call engineer's kill switch proceeds at once" if self._immediate() else
                    f"{rule.approvals} x {rule.approver_role} ({self.s.severity})")
        return [
            f"approval: {approval}",
            f"write revision {before.revision} of flag store {flag.store} again with only: {', '.join(what)}",
            f"deploy it with the store's {'kill-switch ' if change.enabled is True else ''}strategy; wait until "
            "every client is served it",
            "read it back from the store and as clients are served it; verify",
        ]

    def _immediate(self) -> bool:
        """Policy: an on-call engineer's kill switch at these severities waits for nobody."""
        assert self.catalog is not None
        return (self.request.action == "kill_switch"
                and self.s.severity in self.catalog.policy.kill_switch_immediate
                and self.s.requested_by in self.catalog.people.on_call
                and self.requester_proven())  # a typed name is no on-call engineer

    async def _approve(self, ref: FlagRef, before: FlagSnapshot, expected: FlagValue) -> None:
        context = (f"{self.update_step.lower()}: flag {ref.key} from {_describe(before.value)} to "
                   f"{_describe(expected)}")
        if not self._immediate():
            await self.approval(context=context)
            return
        assert self.timeline is not None
        who, sev = self.s.requested_by, self.s.severity
        note = f"the on-call engineer's kill switch at {sev}: proceeds at once (policy kill_switch_immediate)"
        async with self.timeline.step(APPROVAL) as st:
            self.s.approvals = Approvals(
                required=[Requirement(label=f"on-call engineer ({sev}, kill switch)", count=1, eligible=[who],
                                      met_by=[who])],
                received=[ApprovalRecord(approver=who, at=workflow.now(), note=note, proof=self.s.requester_proof)],
                satisfied=True,
                context=context)
            self._event(f"{who}: {note}")
            st.detail = f"approved by {who} ({note})"

    async def _follow(self, ref: FlagRef, rollout: Rollout, until: tuple[str, ...]) -> Rollout:
        """Poll the rollout (durable timers) until it reaches ``until``; a rolled-back one fails."""
        policy = self.catalog.policy  # type: ignore[union-attr]
        deadline = workflow.now() + timedelta(minutes=policy.appconfig_deploy_timeout_minutes)
        while True:
            self.s.extra["rollout"] = rollout.model_dump()
            self._publish()
            if rollout.state == "failed":
                raise StepFailed(f"{rollout.detail}: the store rolled the change back (an alarm during the "
                                 "rollout?), so clients are served the flag as it was before; look at the "
                                 "deployment's events, then start again")
            if rollout.state in until:
                return rollout
            if workflow.now() >= deadline:
                raise StepFailed(f"{rollout.detail}: not done after {policy.appconfig_deploy_timeout_minutes:g} "
                                 "min; the deployment goes on: follow it in the store")
            await workflow.sleep(timedelta(seconds=policy.appconfig_poll_seconds))
            rollout = await call(FlagActivities.flag_rollout, RolloutRef(ref=ref, id=rollout.id))

    async def _verify(self, ref: FlagRef, expected: FlagValue, change: FlagChange, written: Written | None) -> str:
        """The deployed revision holds the expected values, and clients are served them."""
        stored: FlagSnapshot = await call(FlagActivities.read_flag, ref)
        served: FlagValue = await call(FlagActivities.read_served_flag, ref)
        in_store, to_clients = [], []
        if written is not None and stored.revision != written.revision:
            in_store.append(f"the store serves revision {stored.revision}, not {written.revision}")
        if (stored.value.enabled, stored.value.cities) != (expected.enabled, expected.cities):
            in_store.append(f"the deployed revision holds {_describe(stored.value)}")
        if not served.defined or served.enabled != expected.enabled:
            to_clients.append(f"clients are served {_describe(served) if served.defined else 'no such flag'}")
        elif served.enabled:
            wrong = [f"{c} {served.cities.get(c)}" for c, p in change.percentages.items() if served.cities.get(c) != p]
            if wrong:
                to_clients.append(f"clients are served {', '.join(wrong)}")
        now = workflow.now()
        self.s.checks = [
            CheckResult(name="flag state (deployed revision)", ok=not in_store, value=_describe(stored.value),
                        baseline=_describe(expected), at=now,
                        detail=f"revision {stored.revision}: {_describe(stored.value)}"),
            CheckResult(name="flag state (served to clients)", ok=not to_clients, value=_describe(served),
                        baseline=_describe(expected), at=now, detail=f"served: {_describe(served)}"),
        ]
        if in_store or to_clients:
            raise StepFailed("flag state not as expected: " + "; ".join(in_store + to_clients))
        return f"{ref.key} is {_describe(expected)} in revision {stored.revision} and as served to clients"


def _expected(value: FlagValue, change: FlagChange) -> FlagValue:
    cities = dict(value.cities)
    cities.update({c: float(p) for c, p in change.percentages.items()})
    return value.model_copy(update={"enabled": value.enabled if change.enabled is None else change.enabled,
                                    "cities": cities})


def _describe(v: FlagValue) -> str:
    state = "on" if v.enabled else "off"
    cities = ", ".join(f"{c} {'unset' if p is None else f'{p:g}%'}" for c, p in v.cities.items())
    return f"{state} ({cities})" if cities and v.enabled else state
