"""CloudWatch metrics and alarms (runbook: npm run metrics:errors -- --window=5m)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pydantic import BaseModel
from temporalio import activity

from activities.aws import AwsClients, aws_call
from common.catalog import MetricQuery


class MetricRead(BaseModel):
    query: MetricQuery
    version: str | None = None  # replaces "{version}" in dimension values
    window_minutes: float = 5


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
