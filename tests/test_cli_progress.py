"""Issue 14's small things that are not in the quick start: a malformed signal is logged as a warning, not a
"--- Logging error ---" traceback; a restarted worker is waited for before "no worker answered"; catalog
names are unique across kinds."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import yaml
from temporalio.client import Client

from common import logging as rollback_logging
from common.catalog import CatalogError, load_catalog
from common.models import ServiceRollbackInput
from tests.conftest import in_process_worker
from tests.helpers import wait_phase
from tests.test_cli import START, cli, cli_env, cli_until, login, stop, wid


async def test_a_malformed_signal_is_logged_not_a_logging_error(dev_env, aws, fast_catalog, capfd):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    rollback_logging.configure("json", "INFO")  # the worker's own logging
    try:
        async with in_process_worker(dev_env.client, fast_catalog) as worker:
            handle = await dev_env.client.start_workflow(
                "ServiceRollback", ServiceRollbackInput(service=fast_catalog.api, severity="SEV-1",
                                                        requested_by="zoe", reason="x"),
                id=f"malformed-{uuid.uuid4().hex[:6]}", task_queue=worker.task_queue)
            await wait_phase(handle, "awaiting_approval")
            await handle.signal("approve", {"approver": 42, "nonsense": True})  # as from the Web UI, bad
            await asyncio.sleep(1)
            await wait_phase(handle, "awaiting_approval")  # still there, still waiting
            await handle.terminate("test done")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    err = capfd.readouterr().err
    assert "--- Logging error ---" not in err, err
    drop = next(line for line in err.splitlines() if "dropping the signal" in line)  # the drop itself is logged
    assert "approve" in drop and "Extra inputs are not permitted" in drop, drop


def test_a_name_is_unique_across_kinds(tmp_path, fast_catalog):
    data = yaml.safe_load(fast_catalog.path.read_text())
    data.setdefault("sites", {})[fast_catalog.api] = {"bucket": "b"}
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError, match=f"the name '{fast_catalog.api}' is under both services: and sites:"):
        load_catalog(path)


async def test_status_waits_for_a_restarted_worker(dev_env, aws, fast_catalog):
    tq = f"tq-{uuid.uuid4().hex[:8]}"
    env = cli_env(dev_env, aws, fast_catalog, tq)
    svc = fast_catalog.api
    client: Client = dev_env.client
    async with in_process_worker(client, fast_catalog, tq):
        code, out, err = await cli("start", svc, *START, env=env)
        assert code == 0, err
        await wait_phase(client.get_workflow_handle(wid(svc)), "awaiting_approval")
    try:
        # the worker is gone (as after a crash); the CLI asks, and it comes back a moment later
        status = asyncio.create_task(cli("status", svc, env=env, timeout=60))
        await asyncio.sleep(3)
        async with in_process_worker(client, fast_catalog, tq):
            code, out, err = await status
        assert code == 0, out + err
        assert "awaiting_approval" in out and "no worker answered" not in err
    finally:
        await stop(client, wid(svc))


async def test_frontend_status_shows_the_release_it_rolls_back_from(dev_env, aws, fast_catalog):
    """Issue 14: 'starter.py status web' said 'version: ? -> v1.2.2'."""
    tq = f"tq-{uuid.uuid4().hex[:8]}"
    env = cli_env(dev_env, aws, fast_catalog, tq)
    web = fast_catalog.name("web")
    await login(env, "dana")
    try:
        async with in_process_worker(dev_env.client, fast_catalog, tq):
            code, out, err = await cli("start", web, "--severity", "SEV-2", "--requested-by", "dana", "--reason",
                                       "checkout broken in v1.2.3", "--set", "strategy=release_sync",
                                       "--set", "to_release=v1.2.2", env=env)
            assert code == 0, out + err
            code, out, err = await cli_until("status", web, env=env, until=lambda c, o, e: "monitoring" in o)
        assert code == 0, out + err
        assert "version: v1.2.3 -> v1.2.2" in out, out
    finally:
        await stop(dev_env.client, f"rollback-frontend-{web}")
