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


def outside_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # UDP: nothing is sent, the kernel only picks the source address
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def listening_on(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port`` (Linux /proc/net/tcp: state 0A is LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        ip, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(ip)[::-1]))
    return found


async def test_the_metrics_endpoint_listens_on_loopback_unless_told(ts_env, monkeypatch):
    """Issue 14: /metrics bound 0.0.0.0 while everything else binds 127.0.0.1; ROLLBACK_METRICS_HOST opens it."""
    from common.temporal import connect

    outside = outside_address()
    monkeypatch.setenv("TEMPORAL_ADDRESS", ts_env.client.service_client.config.target_host)
    monkeypatch.delenv("ROLLBACK_METRICS_HOST", raising=False)
    port = free_port()
    await connect(Settings(), metrics_port=port)
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
    assert listening_on(port) == {"127.0.0.1"}
    if outside:  # not reachable from another machine
        try:
            httpx.get(f"http://{outside}:{port}/metrics", timeout=5, trust_env=False)
            raise AssertionError(f"/metrics answered on {outside}:{port}")
        except httpx.ConnectError:
            pass

    monkeypatch.setenv("ROLLBACK_METRICS_HOST", "0.0.0.0")  # e.g. compose, where Prometheus scrapes from elsewhere
    port = free_port()
    await connect(Settings(), metrics_port=port)
    assert listening_on(port) == {"0.0.0.0"}
    if outside:
        assert httpx.get(f"http://{outside}:{port}/metrics", timeout=10, trust_env=False).status_code == 200
