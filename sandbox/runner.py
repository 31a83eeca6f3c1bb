"""``Sandbox``: moto + the seeded fleet + fake endpoints + fake metrics (+ Prometheus where installed),
started and stopped as one."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel

from common.settings import SANDBOX_CATALOG_NAME
from sandbox.catalog import DIRECTORY, write_catalog
from sandbox.endpoints import EndpointServer
from sandbox.fleet import REGION, Fleet, seed
from sandbox.lambda_fleet import use_simple_lambda
from sandbox.metrics import MetricsEmitter
from sandbox.moto_server import _MotoServer, reset, start_moto
from sandbox.oidc import PERSON_CLAIM, SandboxIssuer, load_or_create_key
from sandbox.prometheus import SandboxPrometheus, start_prometheus
from sandbox.state import restore

log = logging.getLogger(__name__)

CATALOG_NAME = SANDBOX_CATALOG_NAME  # where every entry point looks for it (common.settings.resolve_mode)
OIDC_KEY_NAME = "oidc-signing-key.pem"
AWS_STATE_NAME = "sandbox-aws.pickle"  # moto's backends and the AppConfig stand-in (sandbox/state.py)
FLEET_NAME = "sandbox-fleet.json"  # the seeded fleet's names; written last, so present = seeding finished


def aws_env(endpoint_url: str, region: str = REGION) -> dict[str, str]:
    """The environment a process (e.g. the worker) needs for boto3 to talk to the sandbox."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }


class SandboxInfo(BaseModel):
    endpoint_url: str  # moto, for boto3 (see aws_env)
    http_base: str  # the fake public endpoints: <http_base>/api/version ... and the issuer at <http_base>/oidc
    catalog_path: Path  # the full catalog for this run (api and api-bg)
    fleet: Fleet
    prometheus_url: str | None = None  # the sandbox's Prometheus, where it runs
    resumed: bool = False  # AWS as the last run left it (else: freshly seeded at the runbook's incident)
    state_file: Path | None = None  # where its AWS state is kept ('make reset' deletes it)
    latency_source: str = ""  # what the catalog's latency_p95 reads (for the banner)


class Sandbox:
    """A local AWS stand-in for ``make run`` and tests; ``with Sandbox() as info: ...``.

    Ports 0 pick free ones (``SandboxInfo`` says which). moto runs in this process; its state is
    kept in ``data_dir`` after every change (sandbox/state.py), so a start after Ctrl-C or a crash
    finds AWS as it was left, as real AWS would be (a rollback in flight carries on). Only the
    first start, or one after ``make reset`` (or with ``persist=False``), empties moto and seeds
    the runbook's incident (v1.2.3 live). The only
    global it touches is ``os.environ["MOTO_ECS_SERVICE_RUNNING"]`` (see ``start_moto``); it
    does not set AWS_* variables: pass ``aws_env(info.endpoint_url)`` to whoever needs them.

    ``prometheus_port``: where Debian's prometheus is installed, a real Prometheus on that port
    (0: any free one) scrapes the sandbox's request histograms and latency_p95 is their p95
    (sandbox/prometheus.py); None, or when it cannot run, latency_p95 is CloudWatch's Average.
    """

    def __init__(self, port: int = 4566, http_port: int = 8080, data_dir: Path = Path(".data"),
                 metrics_interval: float = 10, region: str = REGION, prometheus_port: int | None = 9090,
                 prometheus_scrape_seconds: float = 5, persist: bool = True) -> None:
        self.persist = persist
        self.port, self.http_port, self.data_dir = port, http_port, Path(data_dir)
        self.metrics_interval, self.region = metrics_interval, region
        self.prometheus_port, self.prometheus_scrape_seconds = prometheus_port, prometheus_scrape_seconds
        self._moto: _MotoServer | None = None
        self._endpoints: EndpointServer | None = None
        self._metrics: MetricsEmitter | None = None
        self._prometheus: SandboxPrometheus | None = None

    def start(self) -> SandboxInfo:
        try:
            state_file = self.data_dir / AWS_STATE_NAME if self.persist else None
            self._moto, endpoint_url = start_moto(self.port, state_file)
            fleet, resumed = self._resume_or_seed(endpoint_url)
            issuer = SandboxIssuer(load_or_create_key(self.data_dir / OIDC_KEY_NAME),
                                   {name: {PERSON_CLAIM: entry[PERSON_CLAIM]} for name, entry in DIRECTORY.items()})
            self._endpoints = EndpointServer(endpoint_url, fleet, self.http_port, issuer)
            self._endpoints.start()
            self._metrics = MetricsEmitter(endpoint_url, self.metrics_interval, self.region)
            self._metrics.start()
            why_not = "ROLLBACK_SANDBOX_PROMETHEUS_PORT is off"
            if self.prometheus_port is not None:
                self._prometheus, why_not = start_prometheus(endpoint_url, fleet, self.data_dir, self.prometheus_port,
                                                             self.prometheus_scrape_seconds, keep=resumed)
        except BaseException:
            self.stop()
            raise
        http_base = self._endpoints.base_url
        catalog = write_catalog(self.data_dir / CATALOG_NAME, http_base, fleet, self._prometheus)
        if self._prometheus:
            latency = f"p95 from Prometheus {self._prometheus.url}"
            log.info("sandbox: latency_p95 is histogram_quantile's: %s", why_not)
        else:
            latency = f"CloudWatch Average, not a p95 (no Prometheus: {why_not})"
            log.info("sandbox: latency_p95 is CloudWatch's Average (moto has no percentiles): %s", why_not)
        log.info("sandbox: moto at %s, endpoints at %s, catalog %s", endpoint_url, http_base, catalog)
        return SandboxInfo(endpoint_url=endpoint_url, http_base=http_base, catalog_path=catalog, fleet=fleet,
                           prometheus_url=self._prometheus.url if self._prometheus else None, latency_source=latency,
                           resumed=resumed, state_file=state_file)

    def _resume_or_seed(self, endpoint_url: str) -> tuple[Fleet, bool]:
        """AWS as the last run left it, if it was kept; else a fresh fleet (and it is kept from now on)."""
        assert self._moto is not None
        state, fleet_file = self.data_dir / AWS_STATE_NAME, self.data_dir / FLEET_NAME
        if self.persist and state.is_file() and fleet_file.is_file():
            restore(state, self._moto.appconfig)  # never re-seeded: a rollback in flight finds its changes
            use_simple_lambda(endpoint_url)  # a moto setting, not state: before any Lambda call
            log.info("sandbox: AWS resumed from %s ('make reset' starts over at the incident)", state)
            return Fleet.model_validate_json(fleet_file.read_text()), True
        fleet_file.unlink(missing_ok=True)
        persisted = self._moto.persisted
        with persisted.saved_once() if persisted else nullcontext():
            reset(endpoint_url)  # moto's state is per process: drop any earlier run's
            fleet = seed(endpoint_url, self.region)
        if persisted:
            fleet_file.parent.mkdir(parents=True, exist_ok=True)
            fleet_file.write_text(fleet.model_dump_json())
        return fleet, False

    def processes(self) -> list[tuple[str, int, str]]:
        """The processes it started in their own session (name, pid, a string their command line
        contains), which would outlive a killed worker (common/leftovers.py)."""
        if self._prometheus is None:
            return []
        return [("the sandbox's Prometheus", self._prometheus.proc.pid, str(self.data_dir / "prometheus"))]

    def stop(self) -> None:
        """Stop what was started, newest first; safe to call twice."""
        if self._prometheus:
            self._prometheus.stop()
        if self._metrics:
            self._metrics.stop()
        if self._endpoints:
            self._endpoints.stop()
        if self._moto:
            self._moto.stop()
        self._prometheus = None
        self._metrics = self._endpoints = self._moto = None

    def __enter__(self) -> SandboxInfo:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
