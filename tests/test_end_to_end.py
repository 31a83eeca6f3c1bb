"""A full SEV-2 rollback of `api` on the real dev server, started the way the Web UI and the
`temporal` CLI do it: one JSON input, a signal to approve (with the approver's ID token: a typed
name alone does not count), a query to follow."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.conftest import binary, id_token, in_process_worker
from tests.helpers import new_id, running_revision


async def temporal_cli(env, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary("temporal"), *args, "--address", env.client.service_client.config.target_host,
        "--namespace", "default", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"temporal {' '.join(args)} failed: {err.decode()}"
    return out.decode()


async def test_sev2_rollback_started_like_the_web_ui(dev_env, aws, fast_catalog):
    wf_id = new_id("ui")
    async with in_process_worker(dev_env.client, fast_catalog) as worker:
        assert httpx.get(f"{aws.http_base}/api/version").json()["version"] == "v1.2.3"
        payload = {"service": fast_catalog.api, "severity": "SEV-2", "requested_by": "zoe",
                   "reason": "error rate 2.4% after v1.2.3", "monitor_minutes": 0.1}
        await temporal_cli(dev_env, "workflow", "start", "--type", "ServiceRollback",
                           "--task-queue", worker.task_queue, "--workflow-id", wf_id,
                           "--input", json.dumps(payload))

        # zoe is not on call: the on-call engineer must approve; follow it with the CLI's query
        for _ in range(100):
            out = await temporal_cli(dev_env, "workflow", "query", "--workflow-id", wf_id, "--type", "status",
                                     "--output", "json")
            if '"awaiting_approval"' in out:
                break
            await asyncio.sleep(0.2)
        status = json.loads(out)["queryResult"][0]
        assert status["phase"] == "awaiting_approval"
        assert status["approvals"]["eligible"] == ["dana"]
        listed = await temporal_cli(dev_env, "workflow", "list", "--query",
                                    f'RollbackPhase="awaiting_approval" AND RollbackTarget="{fast_catalog.api}"')
        for _ in range(50):  # visibility is eventually consistent
            if wf_id in listed:
                break
            await asyncio.sleep(0.2)
            listed = await temporal_cli(dev_env, "workflow", "list", "--query",
                                        f'RollbackPhase="awaiting_approval" AND RollbackTarget="{fast_catalog.api}"')
        assert wf_id in listed

        # the on-call engineer's name alone, as anyone with access to Temporal could type it: refused
        await temporal_cli(dev_env, "workflow", "signal", "--workflow-id", wf_id, "--name", "approve",
                           "--input", json.dumps({"approver": "dana", "comment": "go"}))
        for _ in range(100):
            out = await temporal_cli(dev_env, "workflow", "query", "--workflow-id", wf_id, "--type", "status",
                                     "--output", "json")
            if json.loads(out)["queryResult"][0]["approvals"]["refused"]:
                break
            await asyncio.sleep(0.2)
        status = json.loads(out)["queryResult"][0]
        assert status["phase"] == "awaiting_approval" and not status["approvals"]["received"], status["approvals"]
        assert status["approvals"]["refused"][0]["reason"].startswith("identity not proven: no proof was sent")
        assert running_revision(aws) == (43, "v1.2.3")
        # ... and with her ID token
        await temporal_cli(dev_env, "workflow", "signal", "--workflow-id", wf_id, "--name", "approve",
                           "--input", json.dumps({"approver": "dana", "comment": "go", "id_token": id_token("dana")}))
        result = await dev_env.client.get_workflow_handle(wf_id).result()

    assert result["phase"] == "succeeded", result.get("message")
    assert running_revision(aws) == (42, "v1.2.2")
    assert httpx.get(f"{aws.http_base}/api/version").json()["version"] == "v1.2.2"
    assert [(a["approver"], a["proof"]["kind"]) for a in result["approvals"]["received"]] == [("dana", "oidc")]
    assert "eyJ" not in json.dumps(result)  # the status names the proof, never the token
    steps = {s["name"]: s["state"] for s in result["steps"]}
    assert steps == {"Identify previous stable version": "succeeded", "Verify in staging": "skipped",
                     "Approval": "succeeded", "Execute rollback": "succeeded", "Validate rollback": "succeeded",
                     "Monitor post-rollback": "succeeded", "Report": "succeeded"}
    desc = await dev_env.client.get_workflow_handle(wf_id).describe()
    assert desc.typed_search_attributes  # kept current: the final phase is searchable
    from common.temporal import PHASE
    assert desc.typed_search_attributes.get(PHASE) == "succeeded"
