"""Fake traffic metrics: CloudWatch datapoints for every version of the api-service family.

The bad release (v1.2.3) is elevated, every other version sits at the baseline, with
dimensions ``Service=api, Version=<tag>``. The catalog asks for ``Version="{version}"``, so a
check before the rollback (on v1.2.3) sees the incident and one after it (on v1.2.2) sees
the baseline, whatever the ECS service runs at the moment.

Latency is put as plain values and read back as an Average: moto cannot compute
percentiles, so the catalog's ``latency_p95`` uses ``stat: Average`` in the sandbox.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Any

from sandbox.fleet import BAD_VERSION, REGION, client, family_versions

log = logging.getLogger(__name__)

NAMESPACE = "Rastup/API"
BASELINE_ERROR_RATE = 0.2  # percent
BASELINE_LATENCY = 180.0  # milliseconds
BAD_ERROR_RATE = 2.4
BAD_LATENCY = 420.0
_CHUNK = 20  # CloudWatch's historical per-call limit; safe everywhere


def _datums(version: str, now: datetime) -> list[dict[str, Any]]:
    bad = version == BAD_VERSION
    dims = [{"Name": "Service", "Value": "api"}, {"Name": "Version", "Value": version}]
    return [
        {"MetricName": "ErrorRate", "Dimensions": dims, "Timestamp": now, "Unit": "Percent",
         "Value": BAD_ERROR_RATE if bad else BASELINE_ERROR_RATE},
        {"MetricName": "Latency", "Dimensions": dims, "Timestamp": now, "Unit": "Milliseconds",
         "Value": BAD_LATENCY if bad else BASELINE_LATENCY},
    ]


def _emit(ecs: Any, cloudwatch: Any, known: dict[str, str] | None = None) -> list[str]:
    versions = family_versions(ecs, known=known)
    now = datetime.now(timezone.utc)
    data = [d for v in versions for d in _datums(v, now)]
    for i in range(0, len(data), _CHUNK):
        cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=data[i:i + _CHUNK])
    return versions


def emit_once(endpoint_url: str, region: str = REGION) -> list[str]:
    """Put one datapoint per metric and version now; returns the versions covered."""
    return _emit(client("ecs", endpoint_url, region), client("cloudwatch", endpoint_url, region))


class MetricsEmitter:
    """Emits at start, then every ``interval`` seconds in a daemon thread until ``stop``."""

    def __init__(self, endpoint_url: str, interval: float = 10, region: str = REGION) -> None:
        self._ecs = client("ecs", endpoint_url, region)
        self._cloudwatch = client("cloudwatch", endpoint_url, region)
        self._interval = interval
        self._known: dict[str, str] = {}  # task-definition ARN -> version (see family_versions)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-metrics", daemon=True)

    def start(self) -> None:
        # Synchronously first, so datapoints exist as soon as start() returns.
        _emit(self._ecs, self._cloudwatch, self._known)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                _emit(self._ecs, self._cloudwatch, self._known)
            except Exception:  # a reset or a stopping moto must not kill the emitter
                log.warning("sandbox: emitting metrics failed; retrying in %ss",
                            self._interval, exc_info=True)
