"""Issue 14's done-when from the CLI, for EVERY kind of rollback: tests/test_every_kind.py's catalog and
order, with the surfaces swapped (the CLI approves the kinds the Web UI cancels there, and cancels the
others). A file of its own so that pytest-xdist runs it beside the (longer) Web UI test, not after it.
"""

from __future__ import annotations

import re
from pathlib import Path

from common.api import workflow_id
from tests.conftest import in_process_worker
from tests.helpers import status_of, wait_phase
from tests.test_cli import cli, cli_env, login, stop
from tests.test_every_kind import ORDER, REQUESTER, approve_here, approvers, every_kind_catalog, example_for


async def test_every_kind_from_the_cli(dev_env, aws, fast_catalog, tmp_path: Path):
    env = dev_env
    cat = every_kind_catalog(tmp_path, aws, fast_catalog)
    outcomes: dict[str, str] = {}
    async with in_process_worker(env.client, cat) as worker:
        cli_vars = cli_env(env, aws, cat, worker.task_queue)
        await login(cli_vars, REQUESTER, "dana", "erin")
        ids = []
        try:
            for kind in ORDER:
                target, payload = example_for(kind, cat)
                wf_id = workflow_id(kind, target)
                ids.append(wf_id)
                extra = [a for k, v in payload.items() if k not in (
                    "severity", "requested_by", "reason", "monitor_minutes") and v != target
                    for a in ("--set", f"{k}={v}")]
                code, out, err = await cli("start", target, "--severity", payload["severity"], "--requested-by",
                                           REQUESTER, "--reason", payload["reason"], "--monitor-minutes", "0.05",
                                           *extra, env=cli_vars)  # no --kind: the name says which
                assert code == 0, f"{kind}: {out}{err}"
                assert f"started {wf_id}" in out and "with proof" in out, out
                follow = re.search(r"follow it: (.+)$", out.strip(), re.M).group(1).split()
                assert follow[-3:] == ["status", target, "--watch"], out  # after the program (the CLI as run)
                await wait_phase(env.client.get_workflow_handle(wf_id), "awaiting_approval", timeout=60)
                code, out, err = await cli("status", target, env=cli_vars)
                assert code == 0 and "awaiting_approval" in out, f"{kind}: {out}{err}"
                if approve_here(kind, "cli"):
                    for person in approvers(kind):
                        code, out, err = await cli("approve", target, "--as", person, env=cli_vars)
                        assert code == 0 and out.startswith(f"counted: approval by {person} counted"), \
                            f"{kind}: {out}{err}"
                    code, out, err = await cli("status", target, "--watch", env=cli_vars, timeout=120)
                    assert code == 0 and "succeeded" in out, f"{kind}: {out}{err}"
                    s = await status_of(env.client.get_workflow_handle(wf_id))
                    assert s.phase.value == "succeeded" and (s.changes or s.components), s
                else:
                    code, out, err = await cli("cancel", target, env=cli_vars)
                    assert code == 0, f"{kind}: {out}{err}"
                    assert f"cancel requested for {wf_id}" in out
                    assert f"{target}: cancelled - cancelled during awaiting_approval" in out, out
                    code, out, err = await cli("status", target, env=cli_vars)
                    assert code == 1 and "cancelled" in out, f"{kind}: {out}{err}"
                    s = await status_of(env.client.get_workflow_handle(wf_id))
                    assert s.phase.value == "cancelled" and s.changes == [], s
                outcomes[kind] = s.phase.value
        except BaseException as e:
            e.add_note(f"outcomes so far: {outcomes}")
            raise
        finally:
            await stop(env.client, *ids)
    assert outcomes == {k: "succeeded" if approve_here(k, "cli") else "cancelled" for k in ORDER}
