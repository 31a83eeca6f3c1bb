"""common/api.py, the one code path behind starter.py, receiver.py and the auto-rollback schedule:
against the real dev server with an in-process worker and moto behind it."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.service import RPCError, RPCStatusCode

from common.api import (
    AlreadyRunning, BadRequest, NoSuchRollback, RollbackEnded, Rollbacks, build_request, workflow_id,
)
from common.models import Evidence, Phase, ServiceRollbackInput
from tests.conftest import FAST_POLICY, id_token, in_process_worker, write_catalog
from tests.helpers import running_revision


def request(service: str, **extra) -> dict:
    return {"service": service, "severity": "SEV-1", "requested_by": "zoe", "reason": "error rate after v1.2.3",
            **extra}


async def wait_status(rb: Rollbacks, target: str, phase: str, timeout: float = 30):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        s = await rb.status("service", target)
        if s.phase.value == phase or asyncio.get_running_loop().time() > deadline:
            return s
        await asyncio.sleep(0.2)


async def test_start_join_status_and_approve(dev_env, aws, tmp_path):
    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "monitor_minutes": 0.05})
    svc, wid = catalog.api, workflow_id("service", catalog.api)
    async with in_process_worker(dev_env.client, catalog) as worker:
        rb = Rollbacks(dev_env.client, worker.task_queue, catalog.path)
        try:
            # concurrent callers (an alert storm): exactly one starts it, the others join it
            evidence = [Evidence(source="test", summary=f"alert {i}") for i in range(5)]
            started = await asyncio.gather(*(rb.start_or_join("service", request(svc), e) for e in evidence))
            assert [s.started for s in started].count(True) == 1
            assert {s.workflow_id for s in started} == {wid}
            assert sorted(s.outcome for s in started) == ["joined"] * 4 + ["started"]
            assert all("already running" in s.message for s in started if not s.started)

            with pytest.raises(AlreadyRunning) as e:  # a plain start refuses, naming the running one
                await rb.start("service", ServiceRollbackInput(**request(svc)))
            assert e.value.workflow_id == wid and e.value.code == 1
            assert f"already running as workflow {wid}" in str(e.value)

            s = await wait_status(rb, svc, "awaiting_approval")
            assert s.phase == Phase.awaiting_approval
            assert sorted(x.summary for x in s.evidence) == [f"alert {i}" for i in range(5)]
            assert (await rb.status("service", wid)).workflow_id == wid  # a workflow id works too

            outcome = await rb.approve("service", svc, approver="alice", comment="typed, not proven")
            assert not outcome.counted and outcome.message.startswith("identity not proven: no proof was sent")
            outcome = await rb.approve("service", svc, approver="zoe", id_token=id_token("zoe"))
            assert not outcome.counted and "zoe requested this rollback" in outcome.message
            outcome = await rb.approve("service", svc, approver="alice", comment="go", id_token=id_token("alice"))
            assert outcome.counted and outcome.message.startswith("approval by alice counted; approved")
            assert outcome.approvals.received[0].proof.kind == "oidc"
            assert [r.reason.split(":")[0].split(";")[0] for r in outcome.approvals.refused] == [
                "identity not proven", "zoe requested this rollback and cannot approve it at SEV-1"]

            s = await wait_status(rb, svc, "succeeded")
            assert s.phase == Phase.succeeded, s.message
            assert running_revision(aws) == (42, "v1.2.2")
            with pytest.raises(RollbackEnded) as ended:
                await rb.reject("service", svc, approver="bob", reason="too late")
            # ended: closed ("completed"), or still posting its outcome ("succeeded")
            assert f"rollback {wid} has already ended (" in str(ended.value)

            # an alert that began before that rollback ended was answered by it: nothing starts again
            before = datetime.now(timezone.utc) - timedelta(minutes=5)
            again = await rb.start_or_join("service", request(svc), Evidence(source="test"), not_before=before)
            assert (again.outcome, again.started, again.workflow_id) == ("handled", False, wid)
            assert "not started again" in again.message and "(succeeded)" in again.message
            desc = await dev_env.client.get_workflow_handle(wid).describe()
            assert {x.run_id for x in started} == {desc.run_id}  # still the one run
        finally:
            try:
                await dev_env.client.get_workflow_handle(wid).terminate("test cleanup")
            except RPCError:
                pass


async def test_bad_requests_name_the_field_and_start_nothing(dev_env, aws, fast_catalog):
    svc = fast_catalog.api
    rb = Rollbacks(dev_env.client, "no-worker-here", fast_catalog.path)
    with pytest.raises(BadRequest) as e:
        build_request("service", request(svc, severity="SEV-9"), fast_catalog.path)
    assert e.value.code == 2
    assert "  - severity: Input should be 'SEV-0', 'SEV-1', 'SEV-2', 'SEV-3' or 'SEV-4'" in str(e.value)
    assert [f for f, _ in e.value.problems] == ["severity"]

    with pytest.raises(BadRequest) as e:
        await rb.start("service", request(svc, servise="typo", rollout_percentages=[50, 70]))
    assert "servise: Extra inputs are not permitted" in str(e.value)
    assert "rollout_percentages: must be increasing percentages" in str(e.value)

    with pytest.raises(BadRequest) as e:
        await rb.start_or_join("service", request("apii"), Evidence(source="test"))
    assert str(e.value).startswith("service 'apii' is not in the catalog (known: ")

    with pytest.raises(BadRequest) as e:
        await rb.start("services", request(svc))
    assert "unknown kind 'services' (known: " in str(e.value)

    with pytest.raises(BadRequest) as e:
        await rb.approve("service", svc, approver="")
    assert "invalid decision" in str(e.value) and "approver" in str(e.value)

    with pytest.raises(NoSuchRollback) as missing:
        await rb.status("service", svc)
    assert f"no rollback workflow '{workflow_id('service', svc)}'" in str(missing.value)
    with pytest.raises(BadRequest):  # a typo is named as such
        await rb.status("service", "apii")
    for name in (svc, "apii"):
        with pytest.raises(RPCError) as nf:
            await dev_env.client.get_workflow_handle(workflow_id("service", name)).describe()
        assert nf.value.status == RPCStatusCode.NOT_FOUND
