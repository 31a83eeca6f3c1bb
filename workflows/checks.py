"""Validation checks shared by procedures: endpoints, smoke checks, what serves, metrics, alarms.

Workflow code: it schedules activities. Metric verdicts are workflows/verdicts.py's;
``metric_checks``/``judge`` below are the judging of histories recorded before it (replay only).
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

from temporalio.exceptions import ActivityError

from common.catalog import EcsRef, Endpoints, HttpCheck, MetricQuery, Service
from common.models import CheckResult
from common.policy import Policy

with workflow.unsafe.imports_passed_through():
    from activities.ecs import Deployed, EcsActivities
    from activities.elbv2 import Elbv2Activities, Weights
    from activities.http_checks import HttpProbe, check_http
    from activities.metrics import CloudWatchActivities, MetricRead
    from workflows.options import QUICK, call
    from workflows.timeline import innermost_message
    from workflows.verdicts import Verdicts, serving_check


def endpoint_probes(endpoints: Endpoints, smoke: list[HttpCheck], version: str | None) -> list[HttpProbe]:
    probes = []
    if endpoints.health:
        probes.append(HttpProbe(name="health", url=endpoints.health, kind="health"))
    if endpoints.ready:
        probes.append(HttpProbe(name="ready", url=endpoints.ready, kind="ready"))
    if endpoints.version:
        probes.append(HttpProbe(name="version", url=endpoints.version,
                                json_field=endpoints.version_field, expected=version, kind="version"))
    for s in smoke:
        probes.append(HttpProbe(name=f"smoke: {s.name}", url=s.url, expect_status=s.expect_status,
                                contains=s.contains, kind="smoke"))
    return probes


async def http_checks(probes: list[HttpProbe]) -> list[CheckResult]:
    return list(await asyncio.gather(*(call(check_http, p, options=QUICK) for p in probes)))


async def live_ecs(svc: Service) -> EcsRef:
    """The ECS service users get: the service, or for blue/green the side with most traffic."""
    if svc.blue_green is None:
        return svc.ecs
    bg = svc.blue_green
    w: Weights = await call(Elbv2Activities.get_weights, bg.listener_arn, options=QUICK)
    blue_live = w.weights.get(bg.blue.target_group_arn, 0) >= w.weights.get(bg.green.target_group_arn, 0)
    return (bg.blue if blue_live else bg.green).ecs


async def serving_version(ecs: EcsRef, expected: str | None,
                          probes: list[CheckResult]) -> tuple[CheckResult, str | None]:
    """What ``ecs`` runs and what the version endpoint answered (from ``probes``), against ``expected``."""
    seen: dict[str, str | None] = {}
    try:
        d: Deployed = await call(EcsActivities.describe_deployed, ecs, options=QUICK)
        seen[f"ECS {ecs.service} ({d.task_definition.arn.rsplit('/', 1)[-1]})"] = d.task_definition.version
    except ActivityError as e:
        workflow.logger.warning("could not read what %s runs: %s", ecs.service, innermost_message(e))
    endpoint = next((r for r in probes if r.kind == "version" and r.name == "version"), None)
    if endpoint is not None and isinstance(endpoint.value, str):
        seen["version endpoint"] = endpoint.value
    return serving_check(expected, seen)


async def service_checks(svc: Service, ecs: EcsRef, expected: str | None, verdicts: Verdicts) -> list[CheckResult]:
    """A service's checks (runbook "Validate Rollback"): health, ready, version endpoint, smoke
    checks, what serves (a mismatch with ``expected`` fails), and its metrics measured for the
    version that serves, not the one expected."""
    probes = await http_checks(endpoint_probes(svc.endpoints, svc.smoke_checks, expected))
    serving, version = await serving_version(ecs, expected, probes)
    return probes + [serving] + await verdicts.metric_checks(svc.metrics, svc.alarms, version)


def judge(q: MetricQuery, value: float | None, policy: Policy) -> CheckResult:
    """Before verdicts.py (replay of older histories only): one value against the constant baseline."""
    t = policy.thresholds
    assert q.baseline is not None
    if q.kind == "error_rate":
        limit, ok_if, rule = q.baseline + t.error_rate_pp_above_baseline, "<=", \
            f"at most {t.error_rate_pp_above_baseline} points above baseline"
    elif q.kind == "latency_p95":
        limit, ok_if, rule = q.baseline * (1 + t.latency_p95_pct_above_baseline / 100), "<=", \
            f"at most {t.latency_p95_pct_above_baseline:g}% above baseline"
    else:
        limit, ok_if, rule = q.baseline * (1 - t.business_metric_drop_pct / 100), ">=", \
            f"at most {t.business_metric_drop_pct:g}% below baseline"
    now = workflow.now()
    if value is None:
        return CheckResult(name=q.name, kind=q.kind, ok=None, baseline=q.baseline, limit=limit,
                           detail="no data in the window: not checked", at=now)
    ok = value <= limit if ok_if == "<=" else value >= limit
    return CheckResult(name=q.name, kind=q.kind, ok=ok, value=round(value, 4), baseline=q.baseline, limit=round(limit, 4),
                       detail=f"{value:.3g}{q.unit} vs baseline {q.baseline:g}{q.unit} ({rule})", at=now)


async def metric_checks(metrics: list[MetricQuery], alarms: list[str], version: str | None,
                        policy: Policy) -> list[CheckResult]:
    """Before verdicts.py (replay of older histories only)."""
    reads = [call(CloudWatchActivities.read_metric,
                  MetricRead(query=q, version=version, window_minutes=policy.metric_window_minutes),
                  options=QUICK) for q in metrics]
    values = await asyncio.gather(*reads)
    results = [judge(q, v.value, policy) for q, v in zip(metrics, values)]
    if alarms:
        firing = await call(CloudWatchActivities.alarms_firing, alarms, options=QUICK)
        results.append(CheckResult(name="alarms", kind="alarms", ok=not firing, value=", ".join(firing) or "none",
                                   detail=("in ALARM: " + ", ".join(firing)) if firing else
                                   f"none of {len(alarms)} alarm(s) firing", at=workflow.now()))
    return results
