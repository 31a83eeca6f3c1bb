"""The sandbox behaves like production across restarts: a rollback in flight when ``make run`` is
stopped (Ctrl-C) or killed (SIGKILL) carries on after the next ``make run`` against the AWS it left,
and finishes as it would against real AWS: on v1.2.2, no regression. (Before, the sandbox was
re-seeded at every start: the rollback went on monitoring a service back on v1.2.3 and reported a
REGRESSION; and after a SIGKILL the dev server left running made the next start fail on its port.)

``make reset`` is the one way back to the incident. Real parts: ``python worker.py`` as ``make run``
starts it, the dev server, moto, the CLI; free ports and a private data folder.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter

from tests.test_make_run import (  # noqa: F401 (fixtures)
    ROOT, WORKFLOW_ID, Run, _dev_servers_of, run, start_worker, stop_with_ctrl_c, version, wait_banner,
)


async def _status(run: Run) -> dict:
    client = await Client.connect(f"127.0.0.1:{run.dev_port}", namespace="default",
                                  data_converter=pydantic_data_converter)
    return await client.get_workflow_handle(WORKFLOW_ID).query("status")


async def _wait_phase(run: Run, phases: set[str], timeout: float = 60) -> dict:
    deadline, status, error = time.monotonic() + timeout, {}, None
    while time.monotonic() < deadline:
        try:
            status = await _status(run) or {}
            if status.get("phase") in phases:
                return status
        except Exception as e:  # noqa: BLE001 (a worker just restarted: queries wait for it)
            error = e
        time.sleep(1)
    raise AssertionError(f"phase not in {phases} within {timeout:g} s: {status.get('phase')} ({error})")


async def test_a_rollback_in_flight_survives_ctrl_c_and_sigkill_and_finishes_on_the_right_version(run, start_worker):
    proc = start_worker()
    banner = wait_banner(run, proc, timeout=120)
    assert "make reset" in banner  # how to start over, printed by make run itself
    assert run.starter("login", "dana").returncode == 0
    started = run.starter("start", "api", "--severity", "SEV-2", "--requested-by", "dana", "--reason", "x",
                          "--monitor-minutes", "1.5")
    assert started.returncode == 0, started.stdout + started.stderr
    await _wait_phase(run, {"monitoring"})
    assert version(run) == "v1.2.2"  # rolled back; the monitoring window has 1.5 minutes to go

    # Ctrl-C mid-monitoring, then make run again: AWS is as the rollback left it, not re-seeded
    assert stop_with_ctrl_c(proc) == 0
    proc = start_worker()
    banner = wait_banner(run, proc, timeout=120)
    assert "sandbox: AWS resumed from" in banner  # not re-seeded
    assert version(run) == "v1.2.2"
    await _wait_phase(run, {"monitoring"})

    # the worker is killed (no chance to stop what it started); make run again: no "port in use"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _dev_servers_of(run.data_dir), "the dev server should outlive a SIGKILLed worker (own session)"
    proc = start_worker()
    banner = wait_banner(run, proc, timeout=120)
    assert "stopped the Temporal dev server" in banner  # the crashed worker's, replaced cleanly
    assert len(_dev_servers_of(run.data_dir)) == 1
    assert version(run) == "v1.2.2"

    done = await _wait_phase(run, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert done["phase"] == "succeeded", done.get("message")
    assert done["regressions"] == [], done["regressions"]  # it monitored v1.2.2 throughout
    assert (done["from_version"], done["to_version"]) == ("v1.2.3", "v1.2.2")
    assert version(run) == "v1.2.2"
    client = await Client.connect(f"127.0.0.1:{run.dev_port}", namespace="default",
                                  data_converter=pydantic_data_converter)
    handle = client.get_workflow_handle(WORKFLOW_ID)
    await asyncio.wait_for(handle.result(), 60)  # its outcome posted, the workflow completes
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

    # make reset refuses while make run runs; after Ctrl-C it starts over at the incident
    reset = _make_reset(run)
    assert reset.returncode != 0 and "stop it first" in reset.stderr, reset.stdout + reset.stderr
    assert stop_with_ctrl_c(proc) == 0
    reset = _make_reset(run)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert (run.data_dir / "tokens" / "dana.jwt").is_file()  # who you are is kept
    proc = start_worker()
    wait_banner(run, proc, timeout=120)
    assert version(run) == "v1.2.3"
    assert [wf async for wf in (await Client.connect(
        f"127.0.0.1:{run.dev_port}", namespace="default")).list_workflows(f'WorkflowId = "{WORKFLOW_ID}"')] == []
    assert stop_with_ctrl_c(proc) == 0


def _make_reset(run: Run) -> subprocess.CompletedProcess:
    """What 'make reset' runs (the Makefile's recipe), in this test's data folder."""
    return subprocess.run([sys.executable, "-m", "sandbox", "--reset"], cwd=ROOT, env=run.env,
                          capture_output=True, text=True, timeout=60)


def test_make_reset_is_what_the_makefile_runs():
    recipe = (ROOT / "Makefile").read_text().split("\nreset:", 1)[1].split("\n\n", 1)[0]
    assert "-m sandbox --reset" in recipe
    assert os.access(ROOT / "sandbox" / "__main__.py", os.R_OK)


def test_the_appconfig_stand_ins_deployments_are_kept_with_moto(tmp_path, aws_server):
    """What moto lacks and the stand-in holds (environments, deployments) is saved with moto's own
    state after every change, and comes back with it."""
    # moto's backends are this process's: the reset below also empties the tests' shared fleet
    aws_server.seeded_at = (-1, 0.0)  # so the next test seeds it again
    import shutil

    from sandbox.fleet import client
    from sandbox.moto_server import reset, start_moto
    from sandbox.state import restore

    state = tmp_path / "sandbox-aws.pickle"
    server, url = start_moto(0, state)
    try:
        reset(url)  # a new sandbox's moto: nothing in it (not the tests' shared fleet, in this process too)
        ac = client("appconfig", url)
        app = ac.create_application(Name="kept")["Id"]
        profile = ac.create_configuration_profile(ApplicationId=app, Name="settings", LocationUri="hosted")["Id"]
        ac.create_hosted_configuration_version(ApplicationId=app, ConfigurationProfileId=profile,
                                               Content=b'{"a": 1}', ContentType="application/json")
        env = ac.create_environment(ApplicationId=app, Name="production")["Id"]
        ac.start_deployment(ApplicationId=app, EnvironmentId=env, DeploymentStrategyId="AppConfig.AllAtOnce",
                            ConfigurationProfileId=profile, ConfigurationVersion="1")
        saved = tmp_path / "saved.pickle"
        shutil.copy(state, saved)  # as the last change left it
        reset(url)  # what a new process starts with: nothing
        assert ac.list_applications()["Items"] == []
        restore(saved, server.appconfig)
        assert [a["Name"] for a in ac.list_applications()["Items"]] == ["kept"]
        assert [e["Name"] for e in ac.list_environments(ApplicationId=app)["Items"]] == ["production"]
        deployments = ac.list_deployments(ApplicationId=app, EnvironmentId=env)["Items"]
        assert [(d["DeploymentNumber"], d["ConfigurationVersion"]) for d in deployments] == [(1, "1")]
    finally:
        reset(url)
        server.stop()
