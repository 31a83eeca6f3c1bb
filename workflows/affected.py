"""After a flag or configuration rollback: did the services it affects get better?

The runbook's "Rollback Validation Checklist" applies "after any rollback": a flag turned off
and verified is not yet a recovered service. The catalog links a flag or configuration to the
services it affects (``services:``) and to metrics of its own (``metrics:``, e.g. the business
metric of the feature it gates); their checks run here, judged like a service rollback's
(workflows/verdicts.py: baselines from before the change), then the monitoring window follows.
A service that did not recover is reported as a regression and fails the rollback; nothing is
changed back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from common.catalog import MetricQuery
    from common.models import CheckResult, Phase
    from workflows.base import RollbackWorkflow
    from workflows.checks import live_ecs, service_checks
    from workflows.timeline import StepFailed
    from workflows.verdicts import PATCH, Verdicts, baseline_ref, blocking, summary

VALIDATE = "Validate rollback"
MONITOR = "Monitor post-rollback"
STEPS = [VALIDATE, MONITOR]


async def validate_affected(wf: RollbackWorkflow, what: str, services: list[str], metrics: list[MetricQuery],
                            since: datetime | None, change: str, monitor_minutes: float | None) -> None:
    """The steps VALIDATE and MONITOR of ``wf`` for ``what`` (e.g. "flag new_feature_enabled")."""
    tl, catalog = wf.timeline, wf.catalog
    assert tl is not None and catalog is not None
    if not workflow.patched(PATCH) or not (services or metrics):
        for name in STEPS:
            tl.skip(name, f"the catalog links no service or metric to {what}")
        return
    policy = catalog.policy
    # The service's version does not change: its baseline is its own, before the change began.
    verdicts = Verdicts(catalog, baseline_ref(None, since, change), wf.s)
    expected: dict[str, str | None] = {}

    async def checks() -> list[CheckResult]:
        results: list[CheckResult] = []
        for name in services:
            svc = catalog.service(name)
            found = await service_checks(svc, await live_ecs(svc), expected.get(name), verdicts)
            serving = next((r.value for r in found if r.name == "serving version"), None)
            expected.setdefault(name, serving if isinstance(serving, str) else None)  # what served after the change
            results += [r.model_copy(update={"name": f"{name}: {r.name}"}) for r in found]
        return results + await verdicts.metric_checks(metrics, [], None)

    wf.set_phase(Phase.validating)
    async with tl.step(VALIDATE) as st:
        # A window of data from after the change only (durable timer), then judge it.
        await workflow.sleep(timedelta(minutes=policy.metric_window_minutes))
        results = await checks()
        wf.s.checks = results
        failed = blocking(results)
        if failed:
            await wf.report_regressions([r for r in failed if r.ok is False], f"after the rollback of {what}")
            raise StepFailed(f"{what} was rolled back and verified, but the affected service did not recover: "
                             + "; ".join(f"{r.name}: {r.detail}" for r in failed)
                             + ". Nothing was changed back: a human decides (runbook Scenario 4: if not the "
                               "feature, roll back the application)")
        st.detail = summary(results)
    async with tl.step(MONITOR) as st:
        st.detail = await wf.monitor(monitor_minutes or policy.monitor_minutes, policy.monitor_interval_minutes,
                                     checks)
