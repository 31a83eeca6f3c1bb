"""Runbook "Automation", the auto-rollback job, as the ``AutoRollbackCheck`` workflow.

    ERROR_RATE=$(npm run metrics:errors -- --window=5m --json | jq '.rate')
    if ERROR_RATE > 0.5: deploy:rollback --service=api --auto; alerts:send --channel=incidents

A Temporal Schedule (``auto-rollback``, every 5 minutes, overlapping runs skipped; see
``common.api.ensure_auto_rollback_schedule``) runs it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.catalog import CatalogActivities
    from activities.ecs import Deployed, EcsActivities
    from activities.elbv2 import Elbv2Activities, Weights
    from activities.known_good import KnownGoodActivities, Verdict, describe
    from activities.metrics import CloudWatchActivities, MetricRead, MetricValue
    from activities.notify import Notification, NotifyActivities
    from activities.rollbacks import RollbackStartActivities, StartOrJoin
    from common.api import Started
    from common.catalog import Catalog, EcsRef, Service, UnknownTarget
    from common.models import AutoRollbackCheckInput, AutoRollbackReport, Evidence, ServiceCheck
    from common.policy import AUTO_ROLLBACK_REQUESTER
    from workflows.options import NOTIFY, QUICK, call
    from workflows.timeline import innermost_message

REQUESTED_BY = AUTO_ROLLBACK_REQUESTER  # proceeds without waiting only if the policy's automation_may_proceed lists it
NEVER_CASCADE = "never-cascade"  # workflow.patched: what serves, never past automation, cooldown, once


@workflow.defn(name="AutoRollbackCheck", failure_exception_types=[ValidationError])
class AutoRollbackCheck:
    """Checks each service the catalog marks ``auto_rollback: true``: the deployed version's
    5-minute error rate against the policy's ``auto_rollback_error_rate`` (0.5 %). Above it, the
    service's rollback is started (requested by ``auto-rollback:error-rate``, which proceeds without
    waiting when the catalog's policy lists it) or, if one is already running, joined with the reading as
    evidence: never a second rollback of one target. A start is announced in #incidents.
    One service's failure to be checked is reported and does not stop the others.

    Automation never cascades: it judges only what actually serves (a service still deploying,
    or blue/green traffic split between versions, is not judged); it never rolls back a version
    automation itself returned the service to (a person decides); it does not start again while
    the reading may still cover the last rollback (``not_before``: the metric window) or within
    the policy's ``auto_rollback_cooldown_minutes`` after an automatic rollback. A decline is in
    the result (``declined``, with the reason) and is announced in #incidents once.
    """

    @workflow.run
    async def run(self, req: AutoRollbackCheckInput) -> AutoRollbackReport:
        self.never_cascade = workflow.patched(NEVER_CASCADE)  # runs from before replay as they ran
        catalog: Catalog = await call(CatalogActivities.load_catalog)
        policy = catalog.policy
        names = req.services if req.services is not None else \
            [n for n, s in catalog.services.items() if s.auto_rollback]
        self.previous: AutoRollbackReport | None = None
        if self.never_cascade and names:
            self.previous = await call(RollbackStartActivities.previous_check, workflow.info().task_queue,
                                       options=QUICK)
        results = await asyncio.gather(*(self._check(catalog, name) for name in names))
        report = AutoRollbackReport(checked_at=workflow.now(), window_minutes=policy.metric_window_minutes,
                                    threshold=policy.auto_rollback_error_rate, services=list(results))
        workflow.set_current_details("\n".join(
            f"- {r.service}: {r.outcome}" + (f" ({r.detail})" if r.detail else "") for r in results)
            or "no service has auto_rollback: true")
        return report

    async def _check(self, catalog: Catalog, name: str) -> ServiceCheck:
        policy = catalog.policy
        threshold = policy.auto_rollback_error_rate
        result = ServiceCheck(service=name, threshold=threshold, outcome="not_checked")
        try:
            svc = catalog.service(name)
            query = next((m for m in svc.metrics if m.kind == "error_rate"), None)
            if query is None:
                result.detail = "the catalog lists no error_rate metric for it"
                return result
            live, split = await self._live(svc)
            deployed: Deployed = await call(EcsActivities.describe_deployed, live, options=QUICK)
            result.version = version = deployed.task_definition.version
            if self.never_cascade and (split or not deployed.settled):
                result.detail = (f"traffic is split ({split})" if split else
                                 f"{live.service} is deploying ({deployed.running_count}/{deployed.desired_count} "
                                 f"running, {deployed.deployments} deployment(s))") + \
                    ": what serves is a mix of versions, so it is not judged now"
                return result
            value: MetricValue = await call(CloudWatchActivities.read_metric, MetricRead(
                query=query, version=version, window_minutes=policy.metric_window_minutes,
                prometheus=catalog.prometheus), options=QUICK)
            if value.value is None:
                result.detail = f"no {query.name} data for {version} in the last {policy.metric_window_minutes:g} min"
                return result
            rate = result.error_rate = round(value.value, 4)
            reading = (f"{policy.metric_window_minutes:g}-minute error rate {rate:g}{query.unit} on {version} "
                       f"{'exceeds' if rate > threshold else 'is within'} {threshold:g}{query.unit}")
            if rate <= threshold:
                result.outcome, result.detail = "below", reading
                return result
            if self.never_cascade and await self._returned_by_automation(result, deployed, reading):
                return result
            window_start = workflow.now() - timedelta(minutes=policy.metric_window_minutes)
            started: Started = await call(RollbackStartActivities.start_or_join_rollback, StartOrJoin(
                not_before=window_start if self.never_cascade else None,  # the reading may cover the last one
                kind="service",
                fields={"service": name, "severity": policy.auto_rollback_severity, "requested_by": REQUESTED_BY,
                        "reason": f"auto-rollback: {reading}"},
                evidence=Evidence(source="auto-rollback", summary=reading, at=workflow.now(),
                                  labels={"service": name, "version": version, "error_rate": f"{rate:g}",
                                          "threshold": f"{threshold:g}"})))
            result.outcome, result.workflow_id = started.outcome, started.workflow_id
            result.detail = reading + ("" if started.started else f"; {started.message}")
            if started.outcome == "declined":
                result.decline_key = f"cooldown {started.cause}"
                await self._announce_decline(result)
            if started.started:  # a joined rollback announced itself when it started
                await self._notify(result, f"Auto-rollback triggered due to high error rate: {name} {reading}. "
                                           f"Workflow: {started.workflow_id}", started.workflow_id)
        except (FailureError, UnknownTarget) as e:
            result.outcome, result.detail = "error", innermost_message(e)
            workflow.logger.warning("auto-rollback check of %s failed: %s", name, result.detail)
        return result

    async def _returned_by_automation(self, result: ServiceCheck, deployed: Deployed, reading: str) -> bool:
        """Automation never rolls back past the version automation itself returned the service to."""
        td = deployed.task_definition
        verdict: Verdict | None = await call(KnownGoodActivities.ecs_verdict_of, td.arn, options=QUICK)
        if verdict is None or not verdict.automatic or verdict.verdict == "bad":
            return False
        result.outcome, result.decline_key = "declined", f"returned {td.arn} {verdict.at:%Y-%m-%dT%H:%M:%SZ}"
        result.detail = (f"{reading}; not rolled back: automation returned {result.service} to "
                         f"{describe(f'{td.version} (revision {td.revision})', verdict)}, and automation never rolls "
                         f"a service back further on its own: a person decides ('starter.py start {result.service}')")
        await self._announce_decline(result)
        return True

    async def _announce_decline(self, result: ServiceCheck) -> None:
        """#incidents hears of a decline once: not again while the next checks decline for the same reason."""
        before = next((r for r in (self.previous.services if self.previous else []) if r.service == result.service),
                      None)
        if before is not None and before.decline_key == result.decline_key:
            result.detail += " (announced in #incidents by an earlier check)"
            return
        result.announced = True
        await self._notify(result, f"Auto-rollback DECLINED for {result.service}: {result.detail}",
                           result.workflow_id)

    async def _live(self, svc: Service) -> tuple[EcsRef, str]:
        """Blue/green: the side with most traffic is what users get; and the split, if traffic is split."""
        if svc.blue_green is None:
            return svc.ecs, ""
        bg = svc.blue_green
        w: Weights = await call(Elbv2Activities.get_weights, bg.listener_arn, options=QUICK)
        blue, green = w.weights.get(bg.blue.target_group_arn, 0), w.weights.get(bg.green.target_group_arn, 0)
        split = f"{bg.blue.ecs.service} {blue}, {bg.green.ecs.service} {green}" if blue and green else ""
        return (bg.blue if blue >= green else bg.green).ecs, split

    async def _notify(self, result: ServiceCheck, text: str, workflow_id: str) -> None:
        """#incidents, best effort: the rollback runs whether or not the message goes out."""
        try:
            await call(NotifyActivities.notify, Notification(text=text, workflow_id=workflow_id), options=NOTIFY)
        except FailureError as e:
            result.detail += f"; the #incidents notification failed: {innermost_message(e)}"
