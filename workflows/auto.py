"""Runbook "Automation", the auto-rollback job, as the ``AutoRollbackCheck`` workflow.

    ERROR_RATE=$(npm run metrics:errors -- --window=5m --json | jq '.rate')
    if ERROR_RATE > 0.5: deploy:rollback --service=api --auto; alerts:send --channel=incidents

A Temporal Schedule (``auto-rollback``, every 5 minutes, overlapping runs skipped; see
``common.api.ensure_auto_rollback_schedule``) runs it.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.catalog import CatalogActivities
    from activities.ecs import Deployed, EcsActivities
    from activities.elbv2 import Elbv2Activities, Weights
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


@workflow.defn(name="AutoRollbackCheck", failure_exception_types=[ValidationError])
class AutoRollbackCheck:
    """Checks each service the catalog marks ``auto_rollback: true``: the deployed version's
    5-minute error rate against the policy's ``auto_rollback_error_rate`` (0.5 %). Above it, the
    service's rollback is started (requested by ``auto-rollback:error-rate``, which proceeds without
    waiting when the catalog's policy lists it) or, if one is already running, joined with the reading as
    evidence: never a second rollback of one target. A start is announced in #incidents.
    One service's failure to be checked is reported and does not stop the others.
    """

    @workflow.run
    async def run(self, req: AutoRollbackCheckInput) -> AutoRollbackReport:
        catalog: Catalog = await call(CatalogActivities.load_catalog)
        policy = catalog.policy
        names = req.services if req.services is not None else \
            [n for n, s in catalog.services.items() if s.auto_rollback]
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
            deployed: Deployed = await call(EcsActivities.describe_deployed, await self._live(svc), options=QUICK)
            result.version = version = deployed.task_definition.version
            value: MetricValue = await call(CloudWatchActivities.read_metric, MetricRead(
                query=query, version=version, window_minutes=policy.metric_window_minutes), options=QUICK)
            if value.value is None:
                result.detail = f"no {query.name} data for {version} in the last {policy.metric_window_minutes:g} min"
                return result
            rate = result.error_rate = round(value.value, 4)
            reading = (f"{policy.metric_window_minutes:g}-minute error rate {rate:g}{query.unit} on {version} "
                       f"{'exceeds' if rate > threshold else 'is within'} {threshold:g}{query.unit}")
            if rate <= threshold:
                result.outcome, result.detail = "below", reading
                return result
            started: Started = await call(RollbackStartActivities.start_or_join_rollback, StartOrJoin(
                kind="service",
                fields={"service": name, "severity": policy.auto_rollback_severity, "requested_by": REQUESTED_BY,
                        "reason": f"auto-rollback: {reading}"},
                evidence=Evidence(source="auto-rollback", summary=reading, at=workflow.now(),
                                  labels={"service": name, "version": version, "error_rate": f"{rate:g}",
                                          "threshold": f"{threshold:g}"})))
            result.outcome, result.workflow_id = started.outcome, started.workflow_id
            result.detail = reading + ("" if started.started else f"; {started.message}")
            if started.started:  # a joined rollback announced itself when it started
                await self._notify(result, f"Auto-rollback triggered due to high error rate: {name} {reading}. "
                                           f"Workflow: {started.workflow_id}", started.workflow_id)
        except (FailureError, UnknownTarget) as e:
            result.outcome, result.detail = "error", innermost_message(e)
            workflow.logger.warning("auto-rollback check of %s failed: %s", name, result.detail)
        return result

    async def _live(self, svc: Service) -> EcsRef:
        """Blue/green: the side with most traffic is what users get."""
        if svc.blue_green is None:
            return svc.ecs
        bg = svc.blue_green
        w: Weights = await call(Elbv2Activities.get_weights, bg.listener_arn, options=QUICK)
        blue_live = w.weights.get(bg.blue.target_group_arn, 0) >= w.weights.get(bg.green.target_group_arn, 0)
        return (bg.blue if blue_live else bg.green).ecs

    async def _notify(self, result: ServiceCheck, text: str, workflow_id: str) -> None:
        """#incidents, best effort: the rollback runs whether or not the message goes out."""
        try:
            await call(NotifyActivities.notify, Notification(text=text, workflow_id=workflow_id), options=NOTIFY)
        except FailureError as e:
            result.detail += f"; the #incidents notification failed: {innermost_message(e)}"
