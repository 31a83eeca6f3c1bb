"""The tests' AWS stand-in takes shortcuts to be quick (tests/support/moto_faults.py, tests/conftest.py's
``aws`` fixture); each must leave moto as the slow way would, or every other test would run on a fleet
that is not the runbook's.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import boto3

from sandbox.fleet import GOOD_VERSION
from sandbox.metrics import BUSINESS_NAMESPACE, HISTORY_MINUTES, NAMESPACE, backfill


def test_the_stand_ins_reset_forgets_everything_as_motos_own_does(aws_server):
    s3 = aws_server.client("s3")
    ecs_eu = boto3.client("ecs", endpoint_url=aws_server.endpoint_url, region_name="eu-west-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="reset-probe")
    s3.put_object(Bucket="reset-probe", Key="a", Body=b"x")
    ecs_eu.create_cluster(clusterName="reset-probe")
    aws_server.client("appconfig").create_application(Name="reset-probe")
    before = aws_server.faults.mutations

    aws_server.faults.reset()

    assert aws_server.faults.mutations > before  # so the next ``aws`` fixture puts the fleet back
    assert s3.list_buckets()["Buckets"] == []
    assert ecs_eu.list_clusters()["clusterArns"] == []  # every region, not only the fleet's
    assert aws_server.client("appconfig").list_applications()["Items"] == []  # the AppConfig stand-in too
    assert aws_server.client("ecs").list_clusters()["clusterArns"] == []
    s3.create_bucket(Bucket="reset-probe")  # S3's account-wide bucket names forgot it as well
    aws_server.faults.reset()


def _per_minute(cloudwatch, namespace: str, metric: str, dims: list[dict], start: datetime, end: datetime) -> dict:
    got = cloudwatch.get_metric_data(StartTime=start, EndTime=end, MetricDataQueries=[{
        "Id": "m", "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": metric, "Dimensions": dims},
                                  "Period": 60, "Stat": "SampleCount"}}])["MetricDataResults"][0]
    return {t.replace(tzinfo=timezone.utc): v for t, v in zip(got["Timestamps"], got["Values"])}


def test_a_topped_up_metric_history_is_the_whole_history_once(aws_server):
    """The fixture keeps the metric history in its snapshot and puts only the minutes since then."""
    aws_server.faults.reset()
    cloudwatch = aws_server.client("cloudwatch")
    then = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=10)
    now = then + timedelta(minutes=3)

    filled = backfill(cloudwatch, now=then)
    assert filled == then
    backfill(cloudwatch, now=now, after=filled)

    minutes = [now - timedelta(minutes=m) for m in range(HISTORY_MINUTES, 0, -1)]
    errors = _per_minute(cloudwatch, NAMESPACE, "ErrorRate", [{"Name": "Service", "Value": "api"},
                                                               {"Name": "Version", "Value": GOOD_VERSION}],
                         minutes[0], now + timedelta(minutes=1))
    assert {at: errors.get(at) for at in minutes} == {at: 1.0 for at in minutes}, "a minute missing or put twice"
    week = timedelta(days=7)
    bookings = _per_minute(cloudwatch, BUSINESS_NAMESPACE, "BookingsPerMinute", [{"Name": "Service", "Value": "api"}],
                           minutes[0] - week, now - week + timedelta(minutes=10))
    last_week = [at - week for at in minutes] + [now - week + timedelta(minutes=m) for m in range(10)]
    assert {at: bookings.get(at) for at in last_week} == {at: 1.0 for at in last_week}
    aws_server.faults.reset()
