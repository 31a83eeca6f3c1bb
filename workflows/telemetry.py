"""The worker's own metrics, through the SDK's metric meter (exported by the worker's Prometheus
endpoint, ``ROLLBACK_METRICS_PORT``; shown by ``docs/grafana-dashboard.json``).

The workflow meter records nothing while a workflow replays, so a worker restart counts nothing
twice. Names: ``METRICS`` (the SDK's Prometheus exporter adds no ``_total`` to counters; histograms get
``_bucket``/``_sum``/``_count``); tests/test_worker_metrics.py checks the dashboard queries only these.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

STARTED = "rollback_started"
FINISHED = "rollback_finished"
FIRST_CHANGE = "rollback_time_to_first_change"
APPROVAL_WAIT = "rollback_approval_wait"
RECOVERY = "rollback_time_to_recovery"
CHECKS = "rollback_checks"

METRICS = {
    STARTED: "rollbacks started, by kind",
    FINISHED: "rollbacks finished, by kind and outcome (succeeded, failed, rejected, ...)",
    FIRST_CHANGE: "seconds from the request to the first change, by kind",
    APPROVAL_WAIT: "seconds an approval step waited for its decision, by kind",
    RECOVERY: "seconds from the request to a validated rollback, by kind",
    CHECKS: "metric check readings, by check kind and verdict (passed, failed, inconclusive)",
}


def count(name: str, **labels: str) -> None:
    workflow.metric_meter().create_counter(name, METRICS[name]).add(1, labels)


def seconds(name: str, value: timedelta, **labels: str) -> None:
    # float seconds (not a timedelta histogram, whose unit the exporter would make milliseconds)
    workflow.metric_meter().create_histogram_float(name, METRICS[name], "s").record(
        max(value.total_seconds(), 0.0), labels)
