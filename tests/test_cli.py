"""starter.py as the on-call engineer runs it: a subprocess against the real Temporal dev server,
with an in-process worker and moto behind it. Assertions are on what a person sees: exit codes
and messages. People prove who they are as in the sandbox: 'starter.py login NAME' gets a real
signed ID token from the test's identity provider (sandbox/oidc.py over HTTP) and later commands send it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Callable

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.temporal_locks import lock_id
from common.models import ServiceRollbackInput
from sandbox import aws_env
from tests.conftest import id_token, in_process_worker
from tests.helpers import replay_failure, running_revision, wait_phase
from tests.support.prefork import Forked, spawn_starter

ROOT = Path(__file__).resolve().parent.parent
BAD = (43, "v1.2.3")  # what the seeded fleet runs
GOOD = (42, "v1.2.2")  # what a rollback returns it to
START = ("--severity", "SEV-1", "--requested-by", "zoe", "--reason", "error rate after v1.2.3")


def cli_env(dev_env, aws, catalog, task_queue: str = "no-worker-here", **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ROLLBACK_"))}
    env.update(aws_env(aws.endpoint_url))
    env.update(TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
               ROLLBACK_TASK_QUEUE=task_queue, ROLLBACK_CATALOG=str(catalog.path), ROLLBACK_AWS="real",
               ROLLBACK_DATA_DIR=str(catalog.path.parent / "data"),  # where 'login' keeps tokens
               COLUMNS="220")  # rich wraps at 80 columns when not on a terminal
    env.update(overrides)
    return env


async def spawn(*args: str, env: dict[str, str]) -> Forked:
    """``python starter.py *args``, a process of its own, forked from one that has done starter.py's
    imports already (tests/support/prefork.py: most of a run's CPU was importing)."""
    return await spawn_starter(*args, env=env, cwd=ROOT)


async def finish(proc: Forked, timeout: float = 30) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"starter.py did not exit within {timeout}s; stdout:\n{out.decode()}\n"
                             f"stderr:\n{err.decode()}") from None
    return proc.returncode, out.decode(), err.decode()


async def cli(*args: str, env: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    """Run ``starter.py *args`` without blocking the event loop (the worker runs in it)."""
    return await finish(await spawn(*args, env=env), timeout)


async def cli_until(*args: str, env: dict[str, str], until: Callable[[int, str, str], bool],
                    timeout: float = 15) -> tuple[int, str, str]:
    """Run a command until its output satisfies ``until`` (visibility is eventually consistent)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await cli(*args, env=env)
        if until(*result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


def row(out: str, wf_id: str) -> str:
    """The line of a `list` table for one workflow id ('' if absent)."""
    return next((line for line in out.splitlines() if f"{wf_id} " in line), "")


def wid(service: str) -> str:
    return f"rollback-service-{service}"


async def login(env: dict[str, str], *people: str) -> None:
    for person in people:
        code, out, err = await cli("login", person, env=env)
        assert code == 0, err
        assert out.startswith(f"logged in as {person} with ")


async def stop(client: Client, *ids: str) -> None:
    """Leave nothing running on the shared dev server, whatever the test did."""
    for wf in ids:
        try:
            await client.get_workflow_handle(wf).terminate("test cleanup")
        except RPCError:
            pass  # not running


async def test_start_approve_and_watch_until_rolled_back(dev_env, aws, fast_catalog):
    svc = fast_catalog.api
    async with in_process_worker(dev_env.client, fast_catalog) as worker:
        env = cli_env(dev_env, aws, fast_catalog, worker.task_queue)
        # someone follows it before it exists: the watch waits instead of failing
        watcher = await spawn("status", svc, "--watch", env=env)
        try:
            line = (await asyncio.wait_for(watcher.stderr.readline(), 15)).decode()
            assert f"waiting for {wid(svc)} to start" in line

            await login(env, "zoe", "alice")
            code, out, err = await cli("start", svc, *START, "--monitor-minutes", "0.05", env=env)
            assert code == 0, err
            assert f"started {wid(svc)}" in out and f"status {svc} --watch" in out
            assert "requested by zoe, with proof" in out
            assert "no worker" not in err

            code, out, err = await cli("start", svc, *START, env=env)
            assert code == 1
            assert f"already running as workflow {wid(svc)}" in err

            await wait_phase(dev_env.client.get_workflow_handle(wid(svc)), "awaiting_approval")
            waiting = f"{svc}: awaiting_approval - waiting for 1 approver (SEV-1) of alice, bob, carol"
            watched = ""  # the watch polls once a second: the approval below must not come before it looked
            while waiting not in watched:
                watched += (await asyncio.wait_for(watcher.stdout.readline(), 15)).decode()
            code, out, err = await cli("status", svc, env=env)
            assert code == 0, err
            assert "awaiting_approval" in out and "v1.2.3 -> v1.2.2" in out
            assert "approval: approver (SEV-1): 0/1  eligible: alice, bob, carol" in out

            code, out, err = await cli("approve", svc, "--as", "zoe", env=env)  # the requester
            assert code == 1
            assert out.startswith("NOT counted: zoe requested this rollback")
            assert "alice, bob, carol" in out
            code, out, err = await cli("login", "mallory", env=env)  # not a person of the catalog: no token
            assert code == 2 and "'mallory' is not a person of the catalog" in err
            code, out, err = await cli("approve", svc, "--as", "mallory", env=env)
            assert code == 1
            assert out.startswith("NOT counted: identity not proven: no proof was sent")
            assert "to prove you are mallory: 'starter.py login NAME'" in out
            assert "warning: no token proves you are mallory" in err
            code, out, err = await cli("approve", svc, "--as", "bob", env=env)  # bob never logged in: typed only
            assert code == 1 and out.startswith("NOT counted: identity not proven")
            assert running_revision(aws) == BAD  # nothing changed before approval

            code, out, err = await cli("approve", svc, "--as", "alice", "--comment", "go", env=env)
            assert code == 0, err
            assert out.startswith("counted: approval by alice counted; approved")

            code, out, err = await finish(watcher, timeout=40)
            out = watched + out
            assert code == 0, out + err
            assert "succeeded" in out and f"{svc} rolled back to v1.2.2" in out
            assert running_revision(aws) == GOOD

            code, out, err = await cli("status", svc, "--json", env=env)
            assert code == 0, err
            s = json.loads(out)
            assert s["phase"] == "succeeded" and s["to_version"] == "v1.2.2"
            assert [(r["approver"], r["proof"]["kind"], r["proof"]["subject"]) for r in s["approvals"]["received"]] \
                == [("alice", "oidc", "alice@rastup.com")]
            assert [r["approver"] for r in s["approvals"]["refused"]] == ["zoe", "mallory", "bob"]
            assert s["requester_proof"]["subject"] == "zoe@rastup.com"
            assert "eyJ" not in out  # the status names the proof, never the token

            code, out, err = await cli("approve", svc, "--as", "bob", env=env)  # too late
            assert code == 1
            assert f"rollback {wid(svc)} has already ended (completed)" in err
        finally:
            if watcher.returncode is None:
                watcher.kill()
                await watcher.wait()
            await stop(dev_env.client, wid(svc))


async def test_bad_input_is_refused_before_anything_starts(dev_env, aws, fast_catalog):
    env = cli_env(dev_env, aws, fast_catalog)
    svc, typo = fast_catalog.api, f"apl-{fast_catalog.suffix}"
    (unknown, sev9, rollout, not_numbers, no_reason, zero_minutes, status_typo, watch_typo, status_none,
     approve_none, cancel_none) = results = await asyncio.gather(
        cli("start", typo, *START, env=env, timeout=90),
        cli("start", svc, "--severity", "SEV-9", "--requested-by", "zoe", "--reason", "r", env=env, timeout=90),
        cli("start", svc, *START, "--rollout", "50,70", env=env, timeout=90),
        cli("start", svc, *START, "--rollout", "50,all", env=env, timeout=90),
        cli("start", svc, "--severity", "SEV-1", "--requested-by", "zoe", env=env, timeout=90),
        cli("start", svc, *START, "--monitor-minutes", "0", env=env, timeout=90),
        cli("status", typo, env=env, timeout=90),
        cli("status", typo, "--watch", env=env, timeout=90),  # a typo must not wait forever
        cli("status", svc, env=env, timeout=90),
        cli("approve", svc, "--as", "alice", env=env, timeout=90),
        cli("cancel", svc, env=env, timeout=90),
    )
    code, out, err = unknown
    assert code == 2
    assert f"'{typo}' is not in the catalog" in err  # every name, by kind: no --kind was given
    assert f"services: {', '.join(sorted(fast_catalog.data['services']))}" in err

    code, out, err = sev9
    assert code == 2
    assert "--severity: Input should be 'SEV-0', 'SEV-1', 'SEV-2', 'SEV-3' or 'SEV-4'" in err

    code, out, err = rollout
    assert code == 2
    assert "--rollout (rollout_percentages): must be increasing percentages" in err and "end at 100" in err
    code, out, err = not_numbers
    assert code == 2
    assert "argument --rollout: '50,all': expected whole percentages" in err

    code, out, err = no_reason
    assert code == 2
    assert "the following arguments are required: --reason" in err
    code, out, err = zero_minutes
    assert code == 2
    assert "--monitor-minutes (monitor_minutes): Input should be greater than 0" in err

    for code, out, err in (status_typo, watch_typo):
        assert code == 2
        assert f"service '{typo}' is not in the catalog" in err
    for code, out, err in (status_none, approve_none, cancel_none):
        assert code == 2
        assert f"no rollback workflow '{wid(svc)}'" in err

    assert all("Traceback" not in err for code, out, err in results)
    for name in (svc, typo):  # no workflow was started
        try:
            await dev_env.client.get_workflow_handle(wid(name)).describe()
            raise AssertionError(f"{wid(name)} exists")
        except RPCError as e:
            assert e.status == RPCStatusCode.NOT_FOUND
    assert running_revision(aws) == BAD and aws.faults.calls["UpdateService"] == 0


async def test_reject_cancel_and_list(dev_env, aws, fast_catalog):
    a, b = fast_catalog.api, fast_catalog.api_bg
    ui_id = f"from-the-web-ui-{fast_catalog.suffix}"  # b is started from the Web UI, with an id of its own
    async with in_process_worker(dev_env.client, fast_catalog) as worker:
        env = cli_env(dev_env, aws, fast_catalog, worker.task_queue)
        try:
            code, out, err = await cli("start", a, *START, env=env)
            assert code == 0, err
            await dev_env.client.start_workflow("ServiceRollback", ServiceRollbackInput(
                service=b, severity="SEV-1", requested_by="zoe", reason="from the UI"), id=ui_id,
                task_queue=worker.task_queue)
            for wf in (wid(a), ui_id):
                await wait_phase(dev_env.client.get_workflow_handle(wf), "awaiting_approval")

            code, out, err = await cli_until("list", env=env, until=lambda c, o, e: all(
                "awaiting_approval" in row(o, wf) for wf in (wid(a), ui_id)))
            assert code == 0, err
            for wf, svc in ((wid(a), a), (ui_id, b)):
                assert all(x in row(out, wf) for x in ("service", svc, "SEV-1", "awaiting_approval", "running")), out

            # the service's resource lock is a workflow too, but not a rollback
            lock = lock_id("ecs service rastup-prod/api-service", worker.task_queue)
            code, out, err = await cli("status", lock, env=env)
            assert code == 2
            assert f"workflow {lock} is not a rollback" in err

            await login(env, "bob")
            code, out, err = await cli("reject", a, "--as", "bob", "--reason", "fix forward instead", env=env)
            assert code == 0, err
            assert out.startswith("recorded: rejected by bob")
            code, out, err = await cli_until("status", wid(a), env=env, until=lambda c, o, e: "rejected" in o)
            assert code == 1
            assert "rejected by bob: fix forward instead" in out

            code, out, err = await cli("cancel", ui_id, env=env)
            assert code == 0, err
            assert f"cancel requested for {ui_id}" in out
            assert f"{b}: cancelled - cancelled during awaiting_approval; no further changes were made" in out
            code, out, err = await cli("status", ui_id, env=env)
            assert code == 1
            assert "cancelled" in out
            code, out, err = await cli("cancel", ui_id, env=env)
            assert code == 1
            assert f"rollback {ui_id} has already ended (cancelled); nothing to cancel" in err

            code, out, err = await cli_until("list", env=env, until=lambda c, o, e: not any(
                row(o, wf) for wf in (wid(a), ui_id)))
            assert code == 0 and not row(out, wid(a)) and not row(out, ui_id), out
            code, out, err = await cli_until("list", "--all", env=env, until=lambda c, o, e: all(
                row(o, wf) for wf in (wid(a), ui_id)))
            assert code == 0, err
            assert "rejected" in row(out, wid(a)) and "completed" in row(out, wid(a)), out
            assert row(out, ui_id).count("cancelled") == 2, out  # phase and workflow state
        finally:
            await stop(dev_env.client, wid(a), ui_id)
    assert running_revision(aws) == BAD and aws.faults.calls["UpdateService"] == 0


async def test_escalate_and_approve_right_after_start(dev_env, aws, fast_catalog):
    svc = fast_catalog.api
    async with in_process_worker(dev_env.client, fast_catalog) as worker:
        env = cli_env(dev_env, aws, fast_catalog, worker.task_queue)
        try:
            await login(env, "zoe", "dana", "alice", "bob")
            assert (await cli("start", svc, *START, env=env))[0] == 0
            # no waiting: the incident got worse while the first steps run
            code, out, err = await cli("escalate", svc, "--severity", "SEV-9", "--as", "dana", "--reason", "x", env=env)
            assert code == 2
            assert "--severity: Input should be 'SEV-0'" in err
            code, out, err = await cli("escalate", svc, "--severity", "SEV-0", "--as", "dana", env=env)
            assert code == 2 and "the following arguments are required: --reason" in err
            code, out, err = await cli("escalate", svc, "--severity", "SEV-0", "--as", "dana",
                                       "--reason", "more customers report errors", env=env)
            assert code == 0, err
            assert f"severity of {svc}: SEV-1 -> SEV-0; " in out
            # an approver quicker than the first steps: the CLI waits for the approval step
            code, out, err = await cli("approve", svc, "--as", "alice", env=env)
            assert code == 0, err
            assert out.startswith("counted: approval by alice counted; still waiting for: 1 approver (SEV-0)")

            code, out, err = await cli("status", svc, "--json", env=env)
            assert code == 0, err
            s = json.loads(out)
            assert s["severity"] == "SEV-0" and s["phase"] == "awaiting_approval"
            assert [(r["label"], r["count"], r["met_by"]) for r in s["approvals"]["required"]] == [
                ("approver (SEV-0)", 2, ["alice"])]
            code, out, err = await cli("status", svc, env=env)
            assert code == 0 and "approval: approver (SEV-0): 1/2 (by alice)  eligible: alice, bob, carol" in out

            # carol never logged in: her name alone changes nothing
            code, out, err = await cli("escalate", svc, "--severity", "SEV-1", "--as", "carol", "--reason", "x", env=env)
            assert code == 1 and out.startswith("NOT applied: severity change SEV-0 -> SEV-1 not applied: identity "
                                                "not proven: no proof was sent")
            # back down to SEV-1 asks less: only someone the matrix accepts as approver at SEV-1 may
            code, out, err = await cli("escalate", svc, "--severity", "SEV-1", "--as", "dana", "--reason", "x", env=env)
            assert code == 1
            assert out.startswith("NOT applied: severity change SEV-0 -> SEV-1 not applied: SEV-0 -> SEV-1 lowers "
                                  "the approvals needed, so it takes someone the matrix accepts as approver at SEV-1 "
                                  "(alice, bob, carol); dana is not")
            code, out, err = await cli("escalate", svc, "--severity", "SEV-1", "--as", "bob",
                                       "--reason", "fewer users affected than feared", env=env)
            assert code == 0, err
            assert f"severity of {svc}: SEV-0 -> SEV-1; " in out  # alice's approval now suffices
            await wait_phase(dev_env.client.get_workflow_handle(wid(svc)), "monitoring")  # 30 minutes of it
            code, out, err = await cli("cancel", svc, env=env)
            assert code == 0, err
            assert f"{svc}: cancelled - cancelled during monitoring; no further changes were made" in out
            assert running_revision(aws) == GOOD  # cancelling never moves traffic back to the bad version
            code, out, err = await cli("escalate", svc, "--severity", "SEV-4", "--as", "dana", "--reason", "x", env=env)
            assert code == 1
            assert "has already ended (cancelled); nothing to escalate" in err
            # a worker restarted now would replay it: decisions sent while the first steps ran (proved in their
            # handlers) once left a history that failed replay (TMPRL1100: wedged; workflows/base.py HANDLER_PROOFS)
            handle = dev_env.client.get_workflow_handle(wid(svc))
            assert await replay_failure(handle) is None
            events = (await handle.fetch_history()).events
            scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in events
                         if e.HasField("activity_task_scheduled_event_attributes")]
            assert scheduled.count("verify_identity") >= 4, scheduled  # each escalation and approval: an activity
        finally:
            await stop(dev_env.client, wid(svc))


async def test_tokens_from_env_file_or_command_decide_a_sev0_rollback(dev_env, aws, fast_catalog, tmp_path):
    """The ways starter.py finds the caller's ID token (as an SSO helper or `gcloud auth
    print-identity-token` would provide it); a stale or someone else's token counts for nothing."""
    svc = fast_catalog.api
    async with in_process_worker(dev_env.client, fast_catalog) as worker:
        env = cli_env(dev_env, aws, fast_catalog, worker.task_queue)
        try:
            code, out, err = await cli("start", svc, "--severity", "SEV-0", "--requested-by", "zoe", "--reason",
                                       "errors", "--monitor-minutes", "0.05",
                                       env={**env, "ROLLBACK_ID_TOKEN": id_token("zoe")})
            assert code == 0 and "requested by zoe, with proof" in out, err
            printer = tmp_path / "print-token"
            printer.write_text(f"#!/bin/sh\necho {id_token('alice')}\n")
            printer.chmod(0o755)
            code, out, err = await cli("approve", svc, "--as", "alice", env={**env, "ROLLBACK_ID_TOKEN_COMMAND": str(printer)})
            assert code == 0, out + err
            assert out.startswith("counted: approval by alice counted; still waiting for: 1 approver (SEV-0)")

            failing = {**env, "ROLLBACK_ID_TOKEN_COMMAND": "false"}
            code, out, err = await cli("approve", svc, "--as", "bob", env=failing)
            assert code == 2 and "ROLLBACK_ID_TOKEN_COMMAND exited 1 without a token" in err
            token_file = tmp_path / "bob.jwt"
            token_file.write_text(aws.issuer.mint({"sub": "bob", "email": "bob@rastup.com"},
                                                  issued=time.time() - 3600, minutes=10))
            from_file = {**env, "ROLLBACK_ID_TOKEN_FILE": str(token_file)}
            code, out, err = await cli("approve", svc, "--as", "bob", env=from_file)
            assert code == 1
            assert out.startswith("NOT counted: identity not proven: token expired 50 min ago")
            assert f"the token from ROLLBACK_ID_TOKEN_FILE ({token_file}) is stale (it expired 50 min ago)" in err
            code, out, err = await cli("approve", svc, "--as", "bob", env={**env, "ROLLBACK_ID_TOKEN": id_token("alice")})
            assert code == 1 and out.startswith("NOT counted: identity not proven: the token proves alice "
                                                "(alice@rastup.com), not bob")
            assert running_revision(aws) == BAD
            token_file.write_text(id_token("bob"))
            code, out, err = await cli("approve", svc, "--as", "bob", env=from_file)
            assert code == 0 and out.startswith("counted: approval by bob counted; approved"), out + err

            code, out, err = await cli_until("status", svc, "--json", env=env, timeout=40,
                                             until=lambda c, o, e: '"phase": "succeeded"' in o)
            s = json.loads(out)
            assert s["phase"] == "succeeded" and running_revision(aws) == GOOD
            assert [(r["approver"], r["proof"]["kind"]) for r in s["approvals"]["received"]] == [
                ("alice", "oidc"), ("bob", "oidc")]
            code, out, err = await cli("status", svc, env=env)
            assert "requested by zoe (OIDC token from " in out and "approved by bob at " in out
        finally:
            await stop(dev_env.client, wid(svc))


async def test_no_worker_is_flagged_at_start_and_by_status(dev_env, aws, fast_catalog):
    svc, queue = fast_catalog.api, f"nobody-{fast_catalog.suffix}"
    env = cli_env(dev_env, aws, fast_catalog, task_queue=queue)
    try:
        code, out, err = await cli("start", svc, *START, env=env)
        assert code == 0, err
        assert f"started {wid(svc)}" in out
        assert f"warning: no worker is polling task queue '{queue}'; the rollback will not move" in err
        desc = await dev_env.client.get_workflow_handle(wid(svc)).describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING

        code, out, err = await cli("status", svc, env=env)  # the worker is down: say so, do not hang
        assert code == 3
        assert f"no worker answered about {wid(svc)} within a few seconds: is the rollback worker running" in err
        assert f"task queue '{queue}'" in err
    finally:
        await stop(dev_env.client, wid(svc))


async def test_temporal_unreachable_says_how_to_fix_it(dev_env, aws, fast_catalog):
    env = cli_env(dev_env, aws, fast_catalog, TEMPORAL_ADDRESS="127.0.0.1:1")
    local = cli_env(dev_env, aws, fast_catalog, ROLLBACK_DEV_SERVER_PORT="1")
    del local["TEMPORAL_ADDRESS"]  # the default: the local dev server 'make run' starts
    svc = fast_catalog.api
    results = await asyncio.gather(cli("status", svc, env=env), cli("start", svc, *START, env=env),
                                   cli("list", env=env), cli("approve", svc, "--as", "alice", env=local))
    for code, out, err in results:
        assert code == 3, (out, err)
        assert "cannot reach Temporal at 127.0.0.1:1 (namespace default): Connection refused." in err
        assert "Traceback" not in err
    for code, out, err in results[:3]:
        assert "To fix: check that the Temporal frontend at TEMPORAL_ADDRESS=127.0.0.1:1 is up" in err
    assert "To fix: TEMPORAL_ADDRESS is not set, so this is the local dev server: start it with 'make run'" \
        in results[3][2]
    # bad input is still reported as bad input, before any connection is tried
    code, out, err = await cli("start", svc, "--severity", "SEV-9", "--requested-by", "zoe", "--reason", "r", env=env)
    assert code == 2 and "--severity" in err
