"""Fake traffic metrics: CloudWatch datapoints for every version of the api-service family,
and the business metric of runbook Scenario 4.

The bad release (v1.2.3) is elevated, every other version sits at the baseline, with
dimensions ``Service=api, Version=<tag>``. The catalog asks for ``Version="{version}"``, so a
check before the rollback (on v1.2.3) sees the incident and one after it (on v1.2.2) sees
the baseline, whatever the ECS service runs at the moment.

History, so measured baselines have data from the start (``backfill``): one datapoint a minute
for the last ``HISTORY_MINUTES`` for the good and the bad release, and bookings per minute for
the same hour, and the same hour one week earlier, at the healthy level.

Bookings per minute (``Rastup/Business`` ``BookingsPerMinute``, ``Service=api``): healthy at
``BOOKINGS``, lower by a third while the feature flag ``new_feature_enabled`` is served on
(the sandbox's Scenario 4: the new booking flow loses bookings). Read from what AppConfig serves.

Latency is put as plain values and read back as an Average: moto cannot compute
percentiles; where Prometheus runs (sandbox/prometheus.py), the catalog's ``latency_p95`` is a
real p95 of the request histograms the sandbox's traffic exporter records instead.
"""

from __future__ import annotations

import logging
import threading
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from sandbox.appconfig_fleet import APPLICATION, ENVIRONMENT, FLAGS_PROFILE
from sandbox.fleet import BAD_VERSION, GOOD_VERSION, REGION, client, family_versions

log = logging.getLogger(__name__)

NAMESPACE = "Rastup/API"
BASELINE_ERROR_RATE = 0.2  # percent
BASELINE_LATENCY = 180.0  # milliseconds
BAD_ERROR_RATE = 2.4
BAD_LATENCY = 420.0
BUSINESS_NAMESPACE = "Rastup/Business"
BOOKINGS = 100.0  # per minute, healthy
BOOKINGS_WITH_NEW_FEATURE = 66.0  # while new_feature_enabled is served on: a third fewer (Scenario 4)
HISTORY_MINUTES = 70
_CHUNK = 1000  # CloudWatch's per-call limit (it was 20 until 2023; moto has none)


def _datums(version: str, now: datetime) -> list[dict[str, Any]]:
    bad = version == BAD_VERSION
    dims = [{"Name": "Service", "Value": "api"}, {"Name": "Version", "Value": version}]
    return [
        {"MetricName": "ErrorRate", "Dimensions": dims, "Timestamp": now, "Unit": "Percent",
         "Value": BAD_ERROR_RATE if bad else BASELINE_ERROR_RATE},
        {"MetricName": "Latency", "Dimensions": dims, "Timestamp": now, "Unit": "Milliseconds",
         "Value": BAD_LATENCY if bad else BASELINE_LATENCY},
    ]


def _bookings(value: float, at: datetime) -> dict[str, Any]:
    return {"MetricName": "BookingsPerMinute", "Dimensions": [{"Name": "Service", "Value": "api"}],
            "Timestamp": at, "Unit": "Count", "Value": value}


def put_datapoints(cloudwatch: Any, namespace: str, data: list[dict[str, Any]]) -> None:
    """PutMetricData for any number of datapoints, as few calls as CloudWatch allows."""
    for i in range(0, len(data), _CHUNK):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data[i:i + _CHUNK])


def new_feature_on(appconfigdata: Any) -> bool:
    """Whether clients are served new_feature_enabled on (AppConfig's data plane)."""
    token = appconfigdata.start_configuration_session(
        ApplicationIdentifier=APPLICATION, EnvironmentIdentifier=ENVIRONMENT,
        ConfigurationProfileIdentifier=FLAGS_PROFILE)["InitialConfigurationToken"]
    flags = json.loads(appconfigdata.get_latest_configuration(ConfigurationToken=token)["Configuration"].read())
    return bool((flags.get("new_feature_enabled") or {}).get("enabled"))


def _emit(ecs: Any, cloudwatch: Any, appconfigdata: Any, known: dict[str, str] | None = None) -> list[str]:
    versions = family_versions(ecs, known=known)
    now = datetime.now(timezone.utc)
    put_datapoints(cloudwatch, NAMESPACE, [d for v in versions for d in _datums(v, now)])
    bookings = BOOKINGS_WITH_NEW_FEATURE if new_feature_on(appconfigdata) else BOOKINGS
    put_datapoints(cloudwatch, BUSINESS_NAMESPACE, [_bookings(bookings, now)])
    return versions


def backfill(cloudwatch: Any, now: datetime | None = None, after: datetime | None = None) -> datetime:
    """The last HISTORY_MINUTES, a datapoint a minute, of the good and the bad release and of
    healthy bookings, and healthy bookings for the same hour one week earlier. ``after``: what an
    earlier backfill into the same CloudWatch returned; only the minutes since then are put. Returns
    the minute it filled up to (to pass as ``after`` next time)."""
    now = (now or datetime.now(timezone.utc)).replace(second=0, microsecond=0)
    minutes = [now - timedelta(minutes=m) for m in range(HISTORY_MINUTES, 0, -1)]
    week = timedelta(days=7)
    week_ago = [at - week for at in minutes] + [now - week + timedelta(minutes=m) for m in range(10)]
    if after is not None:  # what a backfill at ``after`` put: its HISTORY_MINUTES, and a week before, 10 more
        minutes = [at for at in minutes if at >= after]
        week_ago = [at for at in week_ago if at >= after - week + timedelta(minutes=10)]
    put_datapoints(cloudwatch, NAMESPACE, [d for at in minutes for v in (GOOD_VERSION, BAD_VERSION) for d in _datums(v, at)])
    put_datapoints(cloudwatch, BUSINESS_NAMESPACE, [_bookings(BOOKINGS, at) for at in minutes + week_ago])
    return now


def emit_once(endpoint_url: str, region: str = REGION, known: dict[str, str] | None = None) -> list[str]:
    """Put one datapoint per metric and version now; returns the versions covered. ``known``: as for
    ``family_versions`` (revisions already described, kept by a caller that emits again)."""
    return _emit(client("ecs", endpoint_url, region), client("cloudwatch", endpoint_url, region),
                 client("appconfigdata", endpoint_url, region), known)


class MetricsEmitter:
    """Emits at start, then every ``interval`` seconds in a daemon thread until ``stop``."""

    def __init__(self, endpoint_url: str, interval: float = 10, region: str = REGION) -> None:
        self._ecs = client("ecs", endpoint_url, region)
        self._cloudwatch = client("cloudwatch", endpoint_url, region)
        self._appconfigdata = client("appconfigdata", endpoint_url, region)
        self._interval = interval
        self._known: dict[str, str] = {}  # task-definition ARN -> version (see family_versions)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-metrics", daemon=True)

    def start(self) -> None:
        # Synchronously first, so datapoints (and their history) exist as soon as start() returns.
        backfill(self._cloudwatch)
        _emit(self._ecs, self._cloudwatch, self._appconfigdata, self._known)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                _emit(self._ecs, self._cloudwatch, self._appconfigdata, self._known)
            except Exception:  # a reset or a stopping moto must not kill the emitter
                log.warning("sandbox: emitting metrics failed; retrying in %ss",
                            self._interval, exc_info=True)
