"""A real p95 for the sandbox: per-version request histograms, and a real Prometheus scraping them.

moto's CloudWatch has no percentiles, so without this the sandbox's ``latency_p95`` reads an Average.
Where Debian's ``prometheus`` is installed (``make prometheus``), the sandbox runs:

- ``Traffic``: simulated requests to the ECS services the sandbox's endpoints answer for
  (``api-service``, and the blue/green pair by the listener's weights), recorded with
  prometheus_client as ``http_request_duration_seconds`` (a histogram) and ``http_requests_total``
  (a counter with ``code``), labelled ``service`` (the ECS service) and ``version`` (what that
  service runs *now*, read from moto every tick). The bad release v1.2.3 is slow (p95 about
  435 ms) and fails 2.4 % of requests; every other version is healthy (p95 about 190 ms, 0.2 %).
  A rollback shows in the next tick. Served on a free port of 127.0.0.1 (``/metrics``).
- ``history``: the hour before the bad deploy, when v1.2.2 served (``api-service`` and the live
  blue side), written as OpenMetrics and turned into TSDB blocks with ``promtool tsdb
  create-blocks-from openmetrics`` before Prometheus starts: the measured baseline (``last_good``,
  the window before the v1.2.3 deploy) has data. Without promtool there is no history, and the
  verdict says it fell back to the catalog's constant.
- Prometheus itself: storage in ``<data dir>/prometheus`` (emptied when the sandbox is seeded at
  the incident, kept when it resumes from the last run's AWS: sandbox/state.py), ``--web.listen-address=127.0.0.1:<port>``, scraping the traffic
  exporter every ``scrape_seconds``.

``start_prometheus`` returns the running ``SandboxPrometheus``, or None and the reason (not installed,
port taken, did not start); the sandbox then keeps CloudWatch's Average and says so.
"""

from __future__ import annotations

import bisect
import logging
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from sandbox.fleet import BAD_VERSION, BLUE_SERVICE, GOOD_VERSION, GREEN_SERVICE, SERVICE, Fleet, client, image_tag

log = logging.getLogger(__name__)

LATENCY = "http_request_duration_seconds"
REQUESTS = "http_requests"  # a counter: exposed as http_requests_total
BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.75, 1.0, 2.5)
REQUESTS_PER_SECOND = 20  # per ECS service at full traffic
HISTORY_MINUTES = 70  # before the bad deploy: a 60-minute baseline window, clear of the judged one
BLUE_GREEN = (BLUE_SERVICE, GREEN_SERVICE)


@dataclass(frozen=True)
class Behaviour:
    """How a version's requests go: latency uniform in [low, high] seconds, a share of 5xx."""

    low: float
    high: float
    error_share: float


HEALTHY = Behaviour(0.08, 0.19, 0.002)  # p95 about 190 ms (histogram_quantile's interpolation), 0.2 %
BAD = Behaviour(0.20, 0.44, 0.024)  # p95 about 435 ms, 2.4 %


def behaviour(version: str) -> Behaviour:
    return BAD if version == BAD_VERSION else HEALTHY


def p95_promql(services: tuple[str, ...], window_seconds: int) -> str:
    """The catalog's latency_p95 for these ECS services, in ms, ``{version}`` templated."""
    match = f'service="{services[0]}"' if len(services) == 1 else f'service=~"{"|".join(services)}"'
    return (f'histogram_quantile(0.95, sum by (le) (rate({LATENCY}_bucket{{{match},version="{{version}}"}}'
            f'[{window_seconds}s]))) * 1000')


# -- live traffic ------------------------------------------------------------------------

class Traffic:
    """The exporter: every ``tick`` seconds, the requests each ECS service served, by the version it runs."""

    def __init__(self, endpoint_url: str, fleet: Fleet, tick: float = 1.0, seed: int = 7) -> None:
        self.registry = CollectorRegistry()
        self._latency = Histogram(LATENCY, "request duration of the sandbox's api (simulated)",
                                  ["service", "version"], buckets=BUCKETS, registry=self.registry)
        self._requests = Counter(REQUESTS, "requests to the sandbox's api (simulated), by status code",
                                 ["service", "version", "code"], registry=self.registry)
        self._ecs = client("ecs", endpoint_url, fleet.region)
        self._elbv2 = client("elbv2", endpoint_url, fleet.region)
        self._fleet, self._tick, self._rng = fleet, tick, random.Random(seed)
        self._versions: dict[str, str] = {}  # task-definition ARN -> version (immutable, so cached)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-traffic", daemon=True)
        self._server: Any = None
        self.port = 0

    def shares(self) -> dict[tuple[str, str], float]:
        """(ECS service, version it runs now) -> its share of the traffic (1: all of it)."""
        services = self._ecs.describe_services(cluster=self._fleet.cluster, services=[SERVICE, *BLUE_GREEN])
        running = {s["serviceName"]: self._version(s["taskDefinition"]) for s in services["services"]}
        listener = self._elbv2.describe_listeners(ListenerArns=[self._fleet.listener_arn])["Listeners"][0]
        groups = listener["DefaultActions"][0]["ForwardConfig"]["TargetGroups"]
        total = sum(g.get("Weight", 1) for g in groups) or 1
        weights = {self._fleet.service_behind(g["TargetGroupArn"]): g.get("Weight", 1) / total for g in groups}
        return {(name, version): (1.0 if name == SERVICE else weights.get(name, 0.0))
                for name, version in running.items()}

    def _version(self, task_definition_arn: str) -> str:
        if task_definition_arn not in self._versions:
            td = self._ecs.describe_task_definition(taskDefinition=task_definition_arn)["taskDefinition"]
            self._versions[task_definition_arn] = image_tag(td)
        return self._versions[task_definition_arn]

    def serve(self, seconds: float) -> None:
        """Record ``seconds`` worth of requests, as the fleet serves them now."""
        for (service, version), share in self.shares().items():
            b = behaviour(version)
            for _ in range(round(REQUESTS_PER_SECOND * seconds * share)):
                self._latency.labels(service, version).observe(self._rng.uniform(b.low, b.high))
                code = "500" if self._rng.random() < b.error_share else "200"
                self._requests.labels(service, version, code).inc()

    def start(self) -> None:
        self._server, _ = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.port = self._server.server_address[1]
        self.serve(self._tick)  # something to scrape at once
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _run(self) -> None:
        while not self._stopped.wait(self._tick):
            try:
                self.serve(self._tick)
            except Exception:  # a reset or a stopping moto must not kill the exporter
                log.warning("sandbox: simulating traffic failed; retrying", exc_info=True)


# -- history before the bad deploy -----------------------------------------------------------

def history_openmetrics(end: datetime, step_seconds: float, minutes: float = HISTORY_MINUTES,
                        served: tuple[tuple[str, str], ...] = ((SERVICE, GOOD_VERSION), (BLUE_SERVICE, GOOD_VERSION)),
                        seed: int = 11) -> str:
    """What Prometheus would have scraped every ``step_seconds`` over the ``minutes`` before ``end``,
    while ``served`` (ECS service, version) took all their traffic: cumulative histogram buckets,
    count, sum and request counters, as OpenMetrics text with timestamps (for promtool)."""
    rng = random.Random(seed)
    steps = int(minutes * 60 / step_seconds)
    start = end.timestamp() - steps * step_seconds
    per_step = round(REQUESTS_PER_SECOND * step_seconds)
    buckets, counters = [], []
    for service, version in served:
        b = behaviour(version)
        base = f'job="sandbox-history",service="{service}",version="{version}"'
        counts, total, errors = [0] * (len(BUCKETS) + 1), 0.0, 0
        for i in range(1, steps + 1):
            ts = f"{start + i * step_seconds:.3f}"
            for _ in range(per_step):
                v = rng.uniform(b.low, b.high)
                counts[bisect.bisect_left(BUCKETS, v)] += 1
                total += v
                errors += rng.random() < b.error_share
            n = i * per_step
            cumulative = 0
            for le, c in zip([*map(str, BUCKETS), "+Inf"], counts):
                cumulative += c
                buckets.append(f'{LATENCY}_bucket{{{base},le="{le}"}} {cumulative} {ts}')
            buckets.append(f"{LATENCY}_count{{{base}}} {n} {ts}")
            buckets.append(f"{LATENCY}_sum{{{base}}} {total:.6f} {ts}")
            counters.append((base, ts, n - errors, errors))
    lines = [f"# TYPE {LATENCY} histogram", *buckets, f"# TYPE {REQUESTS} counter"]
    for code in ("200", "500"):  # one series' points together, as OpenMetrics wants
        lines += [f'{REQUESTS}_total{{{base},code="{code}"}} {ok if code == "200" else bad} {ts}'
                  for base, ts, ok, bad in counters]
    return "\n".join([*lines, "# EOF", ""])


def write_history(tsdb: Path, end: datetime, step_seconds: float) -> str:
    """The history as TSDB blocks in ``tsdb`` (before Prometheus opens it); returns what was written."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool is not installed (it comes with Debian's prometheus)")
    source = tsdb.parent / "history.om"
    source.write_text(history_openmetrics(end, step_seconds))
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(source), str(tsdb)],
                   check=True, capture_output=True, text=True, timeout=120)
    source.unlink()
    first = end - timedelta(minutes=HISTORY_MINUTES)
    return f"{GOOD_VERSION} healthy {first:%H:%M}-{end:%H:%M} UTC (before the {BAD_VERSION} deploy)"


# -- Prometheus ------------------------------------------------------------------------------

@dataclass
class SandboxPrometheus:
    """The running exporter and Prometheus; ``window_seconds`` is the catalog's rate window and step."""

    url: str
    window_seconds: int
    history: str  # what the history holds, or why there is none
    traffic: Traffic
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.traffic.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_prometheus(endpoint_url: str, fleet: Fleet, data_dir: Path, port: int = 9090,
                     scrape_seconds: float = 5, timeout: float = 30,
                     keep: bool = False) -> tuple[SandboxPrometheus | None, str]:
    """Exporter + history + Prometheus on 127.0.0.1:``port`` (0: any free port); or (None, why not).
    ``keep``: the sandbox resumed (sandbox/state.py), so its metrics go on from the last run's storage."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None, "Debian's prometheus is not installed (make prometheus installs it)"
    if port and _port_taken(port):
        return None, f"port {port} is taken (set ROLLBACK_SANDBOX_PROMETHEUS_PORT to a free one)"
    port = port or _free_port()
    home = Path(data_dir) / "prometheus"
    kept = keep and (home / "tsdb").is_dir()
    if not kept:
        shutil.rmtree(home, ignore_errors=True)
    (home / "tsdb").mkdir(parents=True, exist_ok=True)
    try:
        history = ("the last run's, kept with the sandbox's AWS" if kept else
                   write_history(home / "tsdb", datetime.now(timezone.utc), scrape_seconds))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", "") or ""
        history = f"no history: {e} {err}".strip()
        log.warning("sandbox: %s; latency_p95's baseline falls back to the catalog's constant", history)
    traffic = Traffic(endpoint_url, fleet, tick=min(1.0, scrape_seconds))
    traffic.start()
    (home / "prometheus.yml").write_text(
        f"global: {{scrape_interval: {scrape_seconds:g}s, evaluation_interval: {scrape_seconds:g}s}}\n"
        "scrape_configs:\n- job_name: sandbox\n  static_configs:\n"
        f"  - targets: ['127.0.0.1:{traffic.port}']\n")
    with open(home / "prometheus.log", "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={home / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={home / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    running = SandboxPrometheus(url=f"http://127.0.0.1:{port}", window_seconds=max(3, round(3 * scrape_seconds)),
                                history=history, traffic=traffic, proc=proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # ready (it has loaded the history); the first scrape follows within scrape_seconds
            if httpx.get(f"{running.url}/-/ready", timeout=2).status_code == 200:
                return running, f"Prometheus at {running.url} scraping the sandbox's request histograms; {history}"
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    running.stop()
    return None, f"Prometheus did not start within {timeout:g} s (see {home / 'prometheus.log'})"
