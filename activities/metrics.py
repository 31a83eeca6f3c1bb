"""Metrics: samples from CloudWatch or Prometheus, and CloudWatch alarms
(runbook: npm run metrics:errors -- --window=5m --compare-to-baseline).

``read_samples`` is the one provider interface the verdicts (workflows/verdicts.py) use: the
samples of one metric for one version over one window, one per period. Judging them is not
done here. A query the provider refuses (bad PromQL, unknown metric) is a non-retryable
``MetricQueryError``; an unreachable provider is retried. ``read_metric`` (one averaged value,
from either provider) is kept for the auto-rollback check and for histories recorded before verdicts.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta, timezone

import httpx
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call
from activities.http_client import shared_sync
from common.catalog import MetricQuery, Prometheus


class MetricRead(BaseModel):
    query: MetricQuery
    version: str | None = None  # replaces "{version}" in dimension values
    window_minutes: float = 5
    prometheus: Prometheus | None = None  # the catalog's, for a query with provider prometheus


class MetricValue(BaseModel):
    name: str
    value: float | None  # None: no datapoints in the window
    datapoints: int


class CloudWatchActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    @activity.defn
    def read_metric(self, req: MetricRead) -> MetricValue:
        q = req.query
        if q.provider == "prometheus":  # the auto-rollback check judges a Prometheus error rate too
            end = datetime.now(timezone.utc)
            got = prometheus_samples(SampleRead(query=q, prometheus=req.prometheus, version=req.version,
                                                minutes=req.window_minutes),
                                     end - timedelta(minutes=req.window_minutes), end)
            mean = sum(got.values) / len(got.values) if got.values else None
            return MetricValue(name=q.name, value=mean, datapoints=len(got.values))
        dims = [{"Name": k, "Value": v.replace("{version}", req.version or "")}
                for k, v in q.dimensions.items()]
        end = datetime.now(timezone.utc)
        start = end - timedelta(minutes=req.window_minutes)
        period = max(60, int(req.window_minutes * 60) // 60 * 60)
        with aws_call(f"cloudwatch get-metric-data {q.namespace}/{q.metric}"):
            resp = self._aws("cloudwatch").get_metric_data(
                MetricDataQueries=[{
                    "Id": "m",
                    "MetricStat": {
                        "Metric": {"Namespace": q.namespace, "MetricName": q.metric, "Dimensions": dims},
                        "Period": period,
                        "Stat": q.stat,
                    },
                    "ReturnData": True,
                }],
                StartTime=start,
                EndTime=end + timedelta(minutes=1),
            )
        values = [v for r in resp.get("MetricDataResults", []) for v in r.get("Values", [])]
        if not values:
            return MetricValue(name=q.name, value=None, datapoints=0)
        # One period per window in practice; if several, average them (sums are summed).
        value = sum(values) if q.stat == "Sum" else sum(values) / len(values)
        return MetricValue(name=q.name, value=value, datapoints=len(values))

    @activity.defn
    def alarms_firing(self, names: list[str]) -> list[str]:
        """Which of these CloudWatch alarms are in ALARM now."""
        if not names:
            return []
        with aws_call("cloudwatch describe-alarms"):
            resp = self._aws("cloudwatch").describe_alarms(AlarmNames=names, StateValue="ALARM")
        return sorted(a["AlarmName"] for a in resp.get("MetricAlarms", []))


class SampleRead(BaseModel):
    """One window of one metric. The window ends now (the worker's clock), ``days_ago`` days
    earlier, or at ``before`` (never later than ``clear_of_minutes`` before now, so a baseline
    never overlaps the window being judged)."""

    query: MetricQuery
    prometheus: Prometheus | None = None
    version: str | None = Field(None, description='replaces "{version}"')
    minutes: float = Field(gt=0, description="the window's length")
    before: datetime | None = None
    days_ago: float = 0
    clear_of_minutes: float = 0


class Samples(BaseModel):
    values: list[float] = Field(default_factory=list, description="one per period, oldest first")
    start: datetime
    end: datetime
    source: str = Field("", description="what was queried, for the verdict's detail")


class MetricActivities:
    """The metric providers behind ``read_samples``: CloudWatch (boto3) and Prometheus (HTTP API)."""

    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    @activity.defn
    def read_samples(self, req: SampleRead) -> Samples:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        end = now - timedelta(days=req.days_ago)
        if req.before is not None:
            end = min(req.before, now - timedelta(minutes=req.clear_of_minutes))
        start = end - timedelta(minutes=req.minutes)
        if req.query.provider == "prometheus":
            return prometheus_samples(req, start, end)
        return self._cloudwatch(req, start, end)

    def _cloudwatch(self, req: SampleRead, start: datetime, end: datetime) -> Samples:
        q = req.query
        dims = [{"Name": k, "Value": v.replace("{version}", req.version or "")} for k, v in q.dimensions.items()]
        values: list[float] = []
        kwargs = dict(MetricDataQueries=[{"Id": "m", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": q.namespace, "MetricName": q.metric, "Dimensions": dims},
            "Period": q.period_seconds, "Stat": q.stat}}], StartTime=start, EndTime=end,
            ScanBy="TimestampAscending")
        with aws_call(f"cloudwatch get-metric-data {q.namespace}/{q.metric}"):
            while True:
                resp = self._aws("cloudwatch").get_metric_data(**kwargs)
                values += [float(v) for r in resp.get("MetricDataResults", []) for v in r.get("Values", [])]
                if not resp.get("NextToken"):
                    break
                kwargs["NextToken"] = resp["NextToken"]
        where = ", ".join(f"{d['Name']}={d['Value']}" for d in dims)
        return Samples(values=values, start=start, end=end, source=f"CloudWatch {q.namespace}/{q.metric} "
                                                                   f"{q.stat} ({where})")


def prometheus_samples(req: SampleRead, start: datetime, end: datetime) -> Samples:
    """The samples of one PromQL query over [start, end], one per ``period_seconds``."""
    q, prom = req.query, req.prometheus
    if prom is None:
        raise ApplicationError("the catalog has no prometheus: {url: ...} for this metric",
                               type="MetricQueryError", non_retryable=True)
    expr = (q.promql or "").replace("{version}", req.version or "")
    headers = {}
    if prom.bearer_token_env and os.environ.get(prom.bearer_token_env):
        headers["Authorization"] = f"Bearer {os.environ[prom.bearer_token_env]}"
    try:
        resp = shared_sync().get(f"{prom.url.rstrip('/')}/api/v1/query_range", headers=headers, timeout=20,
                                 params={"query": expr, "start": start.timestamp(), "end": end.timestamp(),
                                         "step": q.period_seconds})
    except httpx.HTTPError as e:
        raise ApplicationError(f"Prometheus at {prom.url} unreachable: {type(e).__name__}: {e}",
                               type="MetricTransient") from None
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code >= 500 or resp.status_code == 429:
        raise ApplicationError(f"Prometheus answered {resp.status_code}", type="MetricTransient")
    if resp.status_code != 200 or body.get("status") != "success":
        raise ApplicationError(f"Prometheus refused the query {expr!r}: {body.get('error') or resp.status_code}",
                               type="MetricQueryError", non_retryable=True)
    series = body["data"]["result"]
    if len(series) > 1:
        raise ApplicationError(f"the query {expr!r} returns {len(series)} series; aggregate it to one "
                               "(e.g. sum(...) or sum by (le) inside histogram_quantile)",
                               type="MetricQueryError", non_retryable=True)
    values = [float(v) for _, v in (series[0]["values"] if series else [])]
    return Samples(values=[v for v in values if math.isfinite(v)], start=start, end=end,
                   source=f"Prometheus {expr}")
