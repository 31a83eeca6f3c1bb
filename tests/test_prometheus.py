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
