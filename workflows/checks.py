"""Validation checks shared by procedures: endpoints, smoke checks, metrics vs baselines, alarms.

Workflow code: it schedules activities and compares results with the policy's thresholds.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

from common.catalog import Endpoints, HttpCheck, MetricQuery
from common.models import CheckResult
from common.policy import Policy

with workflow.unsafe.imports_passed_through():
    from activities.http_checks import HttpProbe, check_http
    from activities.metrics import CloudWatchActivities, MetricRead
    from workflows.options import QUICK, call


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


def judge(q: MetricQuery, value: float | None, policy: Policy) -> CheckResult:
    """Compare one metric with its baseline using the runbook's thresholds."""
    t = policy.thresholds
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
