"""The worker's own metrics (workflows/telemetry.py) as its Prometheus endpoint exports them, and the
Grafana dashboard in the repository (docs/grafana-dashboard.json) querying only metrics that exist."""

from __future__ import annotations

import json
import re
import socket
import uuid
from pathlib import Path

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from common.models import ServiceRollbackInput
from common.settings import Settings
from tests.conftest import id_token
from tests.helpers import new_id
from workflows.service import ServiceRollback

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exported(text: str) -> dict[str, list[str]]:
    """metric name -> its sample lines."""
    names: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], []).append(line)
    return names


async def test_rollback_metrics_are_exported_and_the_dashboard_queries_only_them(ts_env, aws, catalog):
    from worker import build_worker

    port = free_port()
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}")))
    client = await Client.connect(ts_env.client.service_client.config.target_host, runtime=runtime,
                                  namespace=ts_env.client.namespace, data_converter=pydantic_data_converter)
    worker = build_worker(client, Settings(), catalog.path, task_queue=f"tq-{uuid.uuid4().hex[:8]}")
    async with worker:
        handle = await ts_env.client.start_workflow(ServiceRollback.run, ServiceRollbackInput(
            service=catalog.api, severity="SEV-2", requested_by="dana", id_token=id_token("dana"), reason="metrics",
            monitor_minutes=5),
            id=new_id(), task_queue=worker.task_queue)
        await handle.result()
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    names = exported(text)
    assert any('kind="service"' in line for line in names["rollback_started"])
    assert any('outcome="succeeded"' in line for line in names["rollback_finished"])
    for histogram in ("rollback_time_to_first_change", "rollback_approval_wait", "rollback_time_to_recovery"):
        assert f"{histogram}_bucket" in names and f"{histogram}_count" in names, histogram
    assert any('verdict="passed"' in line and 'kind="error_rate"' in line for line in names["rollback_checks"])

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    used = {m for e in exprs for m in re.findall(r"\b((?:rollback|temporal)_[a-z_]+)\b", e)}
    assert used and used <= set(names), f"queried but not exported: {used - set(names)}"
