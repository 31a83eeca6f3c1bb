"""The Prometheus provider against a real Prometheus server (Debian's ``prometheus``, installed by
``make test`` where it can be) scraping a real exporter (prometheus_client) that serves per-version
request-duration histograms: p95 is histogram_quantile's, and the verdict is judged on it."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients
from activities.metrics import MetricActivities, SampleRead
from common.catalog import MetricQuery, Prometheus
from common.policy import Policy
from workflows.verdicts import Baseline, judge

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed (make test "
                                                            "installs it as root with apt-get; elsewhere: "
                                                            "apt-get install prometheus)")
P95 = ('histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket'
       '{version="{version}"}[5s]))) * 1000')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus():
    """An exporter with traffic on two versions (v1.2.2 fast, v1.2.3 slow), and Prometheus scraping it every second."""
    registry = CollectorRegistry()
    latency = Histogram("http_request_duration_seconds", "request duration", ["version"], registry=registry,
                        buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0))
    exporter_port, prom_port = free_port(), free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    stop = threading.Event()

    def traffic() -> None:
        rng = random.Random(7)
        while not stop.wait(0.01):
            latency.labels("v1.2.2").observe(rng.uniform(0.1, 0.2))
            latency.labels("v1.2.3").observe(rng.uniform(0.3, 0.5))

    threading.Thread(target=traffic, daemon=True).start()
    data = Path(tempfile.mkdtemp(prefix="prom-"))
    (data / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n- job_name: api\n  static_configs:\n  - targets: ['127.0.0.1:{exporter_port}']\n")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={data / 'prometheus.yml'}",
                             f"--storage.tsdb.path={data / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ready, and enough scrapes for a rate over 5 s
            try:
                r = httpx.get(f"{url}/api/v1/query", params={"query": "count_over_time(up[30s])"}, timeout=2)
                if r.status_code == 200 and r.json()["data"]["result"] and \
                        float(r.json()["data"]["result"][0]["value"][1]) >= 12:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus did not start scraping within 60 s")
        yield Prometheus(url=url)
    finally:
        stop.set()
        proc.terminate()
        proc.wait(10)
        server.shutdown()
        shutil.rmtree(data, ignore_errors=True)


def read(prom: Prometheus, version: str, promql: str = P95, minutes: float = 0.15):
    q = MetricQuery(name="latency_p95", kind="latency_p95", provider="prometheus", promql=promql,
                    period_seconds=1, unit=" ms")
    return q, MetricActivities(AwsClients()).read_samples(SampleRead(query=q, prometheus=prom, version=version,
                                                                     minutes=minutes))


def test_p95_is_histogram_quantile_of_the_versions_histogram(prometheus):
    _, good = read(prometheus, "v1.2.2")
    _, bad = read(prometheus, "v1.2.3")
    assert len(good.values) >= 5 and len(bad.values) >= 5
    assert all(140 <= v <= 200 for v in good.values), good.values  # uniform 100-200 ms: p95 ~ 195
    assert all(400 <= v <= 500 for v in bad.values), bad.values  # uniform 300-500 ms: p95 ~ 490
    assert "histogram_quantile" in good.source and 'version="v1.2.2"' in good.source


def test_verdict_on_prometheus_samples(prometheus):
    q, good = read(prometheus, "v1.2.2", minutes=0.3)
    base = Baseline(value=sum(good.values) / len(good.values), samples=good.values,
                    source=f"v1.2.2 over the last 18 s, {len(good.values)} samples")
    _, bad = read(prometheus, "v1.2.3")
    r = judge(q, "v1.2.3", bad, None, base, Policy(), datetime.now(timezone.utc))
    assert r.verdict == "failed" and r.p_value < 0.05 and "at most 25% above baseline" in r.detail
    _, same = read(prometheus, "v1.2.2")
    assert judge(q, "v1.2.2", same, None, base, Policy(), datetime.now(timezone.utc)).verdict == "passed"


def test_a_bad_query_is_a_non_retryable_error_and_no_series_is_no_samples(prometheus):
    with pytest.raises(ApplicationError) as excinfo:
        read(prometheus, "v1.2.2", promql="histogram_quantile(0.95, rate(")
    assert excinfo.value.non_retryable and excinfo.value.type == "MetricQueryError"
    _, none = read(prometheus, "v9.9.9")  # no such version: no samples, so the verdict is inconclusive
    assert none.values == []
    with pytest.raises(ApplicationError) as excinfo:  # two series where one is needed
        read(prometheus, "v1.2.2", promql="rate(http_request_duration_seconds_count[5s])")
    assert "aggregate it to one" in str(excinfo.value)


# --- the sandbox's own Prometheus (sandbox/prometheus.py): a real p95 in `make run` ----------------

@pytest.fixture()
def sandbox_prometheus(aws, tmp_path):
    """The sandbox's traffic exporter and Prometheus on the test's fleet: scraped every second, with the
    hour before the bad deploy (v1.2.2 healthy) backfilled."""
    from sandbox.prometheus import start_prometheus

    prom, why = start_prometheus(aws.endpoint_url, aws.fleet, tmp_path, port=0, scrape_seconds=1)
    assert prom is not None, why
    yield prom
    prom.stop()


def series_count(prom, selector: str) -> float:
    result = httpx.get(f"{prom.url}/api/v1/query", params={"query": f"sum({selector})"}, timeout=5).json()
    return float(result["data"]["result"][0]["value"][1]) if result["data"]["result"] else 0.0


async def test_sandbox_rollback_validates_latency_on_a_real_p95(dev_env, aws, tmp_path, sandbox_prometheus):
    """A sandbox ServiceRollback on the real dev server: latency_p95 is histogram_quantile over the
    histograms the sandbox records for what ECS runs now, judged against v1.2.2's hour before the deploy.
    The judged window (18 s here) holds only what v1.2.2 served after the rollback, so validation waits
    for that evidence, as it would in production."""
    from common.models import ServiceRollbackInput
    from sandbox.metrics import MetricsEmitter
    from tests.conftest import FAST_POLICY, id_token, in_process_worker, write_catalog
    from tests.helpers import new_id
    from workflows.service import ServiceRollback

    prom = sandbox_prometheus
    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "metric_window_minutes": 0.3,
                                            "reading_interval_minutes": 0.05}, prometheus=prom)
    error_rate, latency = catalog.data["services"][catalog.api]["metrics"]
    error_rate["period_seconds"] = 2  # CloudWatch's, from the sandbox's emitter below: a sample per 2 s
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    p95, at = latency["promql"], Prometheus(url=prom.url)
    deadline = time.monotonic() + 60  # what ECS runs now is scraped; v1.2.2's history leaves the window
    while len((bad := read(at, "v1.2.3", promql=p95, minutes=0.2)[1]).values) < 3 or \
            read(at, "v1.2.2", promql=p95, minutes=0.3)[1].values:
        assert time.monotonic() < deadline, f"no v1.2.3 traffic, or v1.2.2 still in the window: {bad}"
        time.sleep(1)
    assert all(380 <= v <= 500 for v in bad.values), bad.values  # v1.2.3 is slow: p95 ~435 ms

    emitter = MetricsEmitter(aws.endpoint_url, interval=1)
    emitter.start()
    try:
        async with in_process_worker(dev_env.client, catalog) as worker:
            result = await dev_env.client.execute_workflow(ServiceRollback.run, ServiceRollbackInput(
                service=catalog.api, severity="SEV-2", requested_by="dana", id_token=id_token("dana"),
                reason="p95 after v1.2.3", monitor_minutes=0.05), id=new_id(), task_queue=worker.task_queue)
    finally:
        emitter.stop()
    assert result.phase.value == "succeeded", result.message
    check = next(c for c in result.checks if c.name == "latency_p95")
    assert check.verdict == "passed" and check.version == "v1.2.2", check.detail
    assert "Prometheus histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket" \
           '{service="api-service",version="v1.2.2"}' in check.detail
    # measured, not the catalog's constant 180: v1.2.2's p95 over the hour before the v1.2.3 deploy
    assert "before the v1.2.3 deploy" in check.baseline_source and "constant" not in check.baseline_source
    assert 180 < check.baseline < 200 and 180 < check.value < check.limit, check.detail
    # right after the rollback v1.2.2 had no samples of its own yet: not a pass, a wait for evidence
    readings = [r for r in result.readings if r.name == "latency_p95"]
    assert readings[0].verdict == "inconclusive" and "0 sample(s)" in readings[0].detail, readings[0].detail
    assert check.samples >= 3


def test_the_sandbox_falls_back_to_cloudwatch_when_its_prometheus_port_is_taken(aws, tmp_path):
    from sandbox.catalog import render
    from sandbox.prometheus import start_prometheus

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        prom, why = start_prometheus(aws.endpoint_url, aws.fleet, tmp_path, port=port)
    assert prom is None and f"port {port} is taken" in why
    assert "ROLLBACK_SANDBOX_PROMETHEUS_PORT" in why
    text = render(aws.http_base, aws.fleet, prom)
    assert "latency_p95 reads the Average of Latency" in text and "provider: prometheus" not in text


def test_the_auto_rollback_checks_reading_comes_from_prometheus_too(prometheus):
    # Before: read_metric (the 5-minute check's one value) asked CloudWatch whatever the provider said,
    # so a catalog whose error rate lives in Prometheus got "no data" from the check, forever.
    from activities.metrics import CloudWatchActivities, MetricRead
    q = MetricQuery(name="latency_p95", kind="latency_p95", provider="prometheus", promql=P95, period_seconds=1,
                    unit=" ms")
    reads = CloudWatchActivities(AwsClients())
    bad = reads.read_metric(MetricRead(query=q, version="v1.2.3", window_minutes=0.2, prometheus=prometheus))
    good = reads.read_metric(MetricRead(query=q, version="v1.2.2", window_minutes=0.2, prometheus=prometheus))
    assert bad.datapoints >= 5 and 400 <= bad.value <= 500, bad
    assert good.datapoints >= 5 and 140 <= good.value <= 200, good
    none = reads.read_metric(MetricRead(query=q, version="v9.9.9", window_minutes=0.2, prometheus=prometheus))
    assert (none.value, none.datapoints) == (None, 0)  # no data is no value: the check says "not checked"
