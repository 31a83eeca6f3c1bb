"""``make run``'s embedded default, end to end: ``python worker.py`` with no TEMPORAL_ADDRESS and
ROLLBACK_AWS=sandbox starts the Temporal dev server (Web UI, SQLite state in the data dir),
the AWS sandbox (moto + the service's endpoints) and the Prometheus metrics endpoint; the
on-call CLI (``starter.py``) rolls ``api`` back through it; Ctrl-C stops everything it
started; and the rollback's history survives a restart.

Every port is a free one passed through the environment, so this runs next to a real
``make run`` on the default ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter

from common import SEARCH_ATTRIBUTES
from common.devserver import port_in_use
from common.temporal import PHASE, TARGET
from tests.helpers import stop_gently
from tests.support import prefork

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_ID = "rollback-service-api"


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Run:
    """One ``make run`` installation: its ports, data dir and environment."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        self.dev_port, self.ui_port, self.moto_port, self.http_port, self.metrics_port, self.prom_port = free_ports(6)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TEMPORAL_", "ROLLBACK_", "AWS_", "MOTO_"))}
        env.update({
            "ROLLBACK_AWS": "sandbox",
            "ROLLBACK_DEV_SERVER_PORT": str(self.dev_port),
            "ROLLBACK_DEV_UI_PORT": str(self.ui_port),
            "ROLLBACK_SANDBOX_PORT": str(self.moto_port),
            "ROLLBACK_SANDBOX_HTTP_PORT": str(self.http_port),
            "ROLLBACK_SANDBOX_PROMETHEUS_PORT": str(self.prom_port),
            "ROLLBACK_METRICS_PORT": str(self.metrics_port),
            "ROLLBACK_DATA_DIR": str(self.data_dir),
            "ROLLBACK_LOG_FORMAT": "json",
        })
        self.env = env
        self.starts = 0

    @property
    def ports(self) -> dict[str, int]:
        return {"dev server": self.dev_port, "Web UI": self.ui_port, "moto": self.moto_port,
                "sandbox endpoints": self.http_port, "metrics": self.metrics_port,
                "sandbox Prometheus": self.prom_port}

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stderr_path(self, n: int) -> Path:
        return self.tmp_path / f"worker-{n}.stderr"

    def starter(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "starter.py", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def _dev_servers_of(data_dir: Path) -> list[int]:
    """Pids of the dev servers this test's worker started: their command line names its own data dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(data_dir / "temporal.db") in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture()
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


@pytest.fixture()
def start_worker(run: Run) -> Iterator[Callable[[], subprocess.Popen]]:
    """Start ``python worker.py`` as ``make run`` does; at teardown anything still running is stopped
    (Ctrl-C first, so it stops what it started; then SIGKILL, and the dev server it left, by pid)."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        run.starts += 1
        err = open(run.stderr_path(run.starts), "wb")
        proc = prefork.spawn_worker(run.env, stdout=None, stderr=err.fileno())  # as Popen(start_new_session=True)
        err.close()
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            stop_gently(proc)
        for pid in _dev_servers_of(run.data_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_banner(run: Run, proc: subprocess.Popen, timeout: float = 90) -> str:  # a loaded CI box: seeding takes ~30 s
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = run.stderr_path(run.starts).read_text(errors="replace")
        if "Ctrl-C stops everything" in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no banner (worker exit code {proc.poll()}); stderr:\n{text[-4000:]}")


def get_eventually(url: str, ok: Callable[[httpx.Response], bool], timeout: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=3)
            if ok(last):
                return last
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.3)
    raise AssertionError(f"{url}: last answer {last!r}" + (f": {last.text[:500]}" if isinstance(last, httpx.Response) else ""))


def version(run: Run) -> str:
    return httpx.get(f"{run.http_base}/api/version", timeout=5).json()["version"]


def stop_with_ctrl_c(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker did not exit within 15 s of Ctrl-C") from None


async def test_make_run_default_serves_a_rollback_stops_on_ctrl_c_and_keeps_history(run, start_worker):
    proc = start_worker()
    banner = wait_banner(run, proc)
    assert "SANDBOX" in banner
    assert f"http://127.0.0.1:{run.ui_port}" in banner
    assert f"{run.http_base}/api/version" in banner
    # which latency_p95 the sandbox's catalog reads, and why
    if shutil.which("prometheus"):
        assert f"Latency:  p95 from Prometheus http://127.0.0.1:{run.prom_port}" in banner
    else:
        assert "Latency:  CloudWatch Average, not a p95 (no Prometheus: Debian's" in banner
    # the copy-paste commands stand on one line each, whatever the terminal's width
    assert ".venv/bin/python starter.py login dana\n" in banner
    assert ".venv/bin/python starter.py start api --severity SEV-2 --requested-by dana " \
           "--reason 'error rate after v1.2.3'" in banner
    assert "Identity: decisions count only with proof" in banner  # (the panel may wrap the issuer's URL)

    # the Web UI, the sandbox's service, the worker's Prometheus metrics
    get_eventually(f"http://127.0.0.1:{run.ui_port}/", lambda r: r.status_code == 200)
    assert version(run) == "v1.2.3"
    metrics = get_eventually(f"http://127.0.0.1:{run.metrics_port}/metrics",
                             lambda r: r.status_code == 200 and "temporal_" in r.text)
    assert "temporal_" in metrics.text

    # the search attributes the CLI and the workflows use are registered
    client = await Client.connect(f"127.0.0.1:{run.dev_port}", namespace="default",
                                  data_converter=pydantic_data_converter)
    have = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default"))
    for name in SEARCH_ATTRIBUTES:
        assert have.custom_attributes.get(name) == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, name

    # the on-call engineer proves who she is with the sandbox's identity provider, then rolls back
    login = run.starter("login", "dana")
    assert login.returncode == 0, login.stdout + login.stderr
    assert (run.data_dir / "tokens" / "dana.jwt").is_file()
    started = run.starter("start", "api", "--severity", "SEV-2", "--requested-by", "dana", "--reason", "x",
                          "--monitor-minutes", "0.1")
    assert started.returncode == 0, started.stdout + started.stderr
    assert WORKFLOW_ID in started.stdout and "with proof" in started.stdout
    deadline = time.monotonic() + 40
    status: dict = {}
    while time.monotonic() < deadline:
        out = run.starter("status", "api", "--json")
        if out.returncode == 0 and out.stdout.strip():
            status = json.loads(out.stdout)
            if status["phase"] == "succeeded":
                break
        time.sleep(1)
    assert status.get("phase") == "succeeded", status or out.stderr
    assert (status["from_version"], status["to_version"]) == ("v1.2.3", "v1.2.2")
    received = status["approvals"]["received"][0]
    assert (received["approver"], received["proof"]["kind"], received["proof"]["issuer"]) == (
        "dana", "oidc", f"{run.http_base}/oidc")  # verified against the sandbox issuer's JWKS, not a bypass
    assert version(run) == "v1.2.2"
    # the phase says succeeded as the report goes out; the run closes just after (Ctrl-C before that
    # leaves it running, to be finished by the next start)
    await asyncio.wait_for(client.get_workflow_handle(WORKFLOW_ID).result(), 60)

    # Ctrl-C stops the worker and everything it started
    assert stop_with_ctrl_c(proc) == 0
    time.sleep(0.5)
    still_open = {name: port for name, port in run.ports.items() if port_in_use("127.0.0.1", port)}
    assert still_open == {}, f"still listening after Ctrl-C: {still_open}"
    assert _dev_servers_of(run.data_dir) == [], "the dev server outlived the worker"
    assert (run.data_dir / "temporal.db").is_file()

    # started again on the same data dir: the finished rollback is still there
    proc = start_worker()
    wait_banner(run, proc)
    client = await Client.connect(f"127.0.0.1:{run.dev_port}", namespace="default",
                                  data_converter=pydantic_data_converter)
    found = [wf async for wf in client.list_workflows(f'WorkflowId = "{WORKFLOW_ID}"')]
    assert len(found) == 1
    assert found[0].status == WorkflowExecutionStatus.COMPLETED
    assert found[0].typed_search_attributes.get(PHASE) == "succeeded"
    assert found[0].typed_search_attributes.get(TARGET) == "api"
    listed = run.starter("list", "--all")
    assert listed.returncode == 0 and "succeeded" in listed.stdout, listed.stdout + listed.stderr
    # the sandbox's AWS, like Temporal's history, is as the rollback left it ('make reset' starts over)
    assert version(run) == "v1.2.2"
    assert stop_with_ctrl_c(proc) == 0


async def test_the_worker_waits_for_the_dev_servers_frontend_not_just_its_port(tmp_path):
    # Before: the worker went on once the embedded dev server's port opened; a call in the moment before its
    # frontend served failed "Frontend is not healthy yet", and make run refused to start (exit 3, "cannot
    # reach Temporal"), seen in the restart test on a loaded machine.
    from common import devserver

    port, ui_port = free_ports(2)
    with pytest.raises(RuntimeError, match=f"the dev server on 127.0.0.1:{port} did not serve within 0.5s") as e:
        await devserver.wait_until_serving(port, timeout=0.5, log_file=tmp_path / "temporal.log")
    assert str(e.value).endswith(f"; its log: {tmp_path / 'temporal.log'}")  # where to look next
    waiting = asyncio.create_task(devserver.wait_until_serving(port, timeout=60))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # nothing serves there yet: it keeps asking
    proc = devserver.start_dev_server(port, ui_port, tmp_path / "temporal.db", headless=True)
    try:
        await asyncio.wait_for(waiting, 60)
        client = await Client.connect(f"127.0.0.1:{port}")  # and it answers, with no retry of ours
        assert (await client.workflow_service.get_system_info(GetSystemInfoRequest())).server_version
    finally:
        devserver.stop(proc)
