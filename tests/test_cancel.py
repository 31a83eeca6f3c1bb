"""A cancel always wins, in every procedure (issue 10, "Lost cancels").

A sweep on the real dev server with a SLOW #incidents webhook (a real local HTTP server that
answers after a delay, as Slack sometimes does): each procedure is cancelled

- while its STARTED announcement is being posted (before: the cancel surfaced as an activity
  failure that the notification path swallowed, and the rollback went on to change things; since
  the fast path the announcement goes out alongside the work, so what was made before it is listed);
- while it waits for approval, then approved (before: a later approval made the change);
- after its change, while it validates, monitors or follows a deployment (before: it ended
  ``succeeded``, or ``failed`` with "Cancelled");

and must end ``cancelled``, with moto's count of changing AWS calls (tests/support/moto_faults.py)
the same after the cancel as at it, and a status that says which changes were made before it.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from common.catalog import Catalog
from common.models import Decision, RollbackStatus
from sandbox.catalog import databases_dict
from sandbox.lambda_fleet import FUNCTION, catalog_entry
from tests.conftest import FAST_POLICY, RunCatalog, id_token, in_process_worker, proven, write_catalog
from tests.fixtures.infra import DIRECTORY, TERRAFORM, TF_ENV, build_infra_repo
from tests.helpers import new_id, status_of, wait_for
from tests.support.recorder import Recorder

SLOW = 0.6  # seconds the #incidents webhook (and the slow check endpoint) takes to answer
# dana: on call (and proven), approved at start
BASE = proven({"severity": "SEV-2", "requested_by": "dana", "reason": "cancel sweep"})


@dataclass
class Case:
    kind: str
    workflow: str
    fields: dict[str, Any]
    approvers: list[str] = field(default_factory=lambda: ["alice"])  # who approves a SEV-1 started by zoe
    after_change: str = "monitoring"  # the phase the third cancel lands in (after the change)
    state: Callable[[], Any] = lambda: None  # what changed, when it is not in AWS (terraform's state)


def with_everything(tmp_path: Path, aws, slow: Recorder) -> tuple[RunCatalog, dict[str, Case]]:
    """One catalog holding a target of every procedure; smoke checks that take SLOW seconds."""
    cat = write_catalog(tmp_path, aws, FAST_POLICY)
    db = databases_dict(aws.http_base)["rastup-prod"]
    db["smoke_checks"] = [{"name": "slow health", "url": slow.url + "/health"}]
    db["app_service"] = cat.api
    cat.data["databases"] = {cat.name("rastup-prod"): db}
    cat.data["functions"] = {cat.name(FUNCTION): catalog_entry()}
    cat.data["services"][cat.api]["smoke_checks"].append({"name": "slow search", "url": slow.url + "/search"})
    repo = build_infra_repo(tmp_path, "change")
    cat.data["stacks"] = {cat.name("network"): {
        "repository": str(repo.path), "directory": DIRECTORY, "terraform": TERRAFORM, "env": TF_ENV,
        "validation": {"command": [sys.executable, "-c", f"import time; time.sleep({SLOW * 3})"]},
        "workdir": str(tmp_path / "work")}}
    Catalog.model_validate(cat.data)
    cat.path.write_text(yaml.safe_dump(cat.data, sort_keys=False))
    window = {"monitor_minutes": 0.2}
    cases = {
        "service": Case("service", "ServiceRollback", {"service": cat.api, **window}),
        "database": Case("database", "DatabaseRollback", {
            "database": cat.name("rastup-prod"), "mode": "snapshot_restore", "snapshot_id": aws.fleet.db_snapshot},
            approvers=["alice", "erin"], after_change="validating"),  # its smoke checks, after the cutover
        "frontend": Case("frontend", "FrontendRollback", {
            "site": cat.name("web"), "strategy": "release_sync", "to_release": "v1.2.2", **window}),
        "lambda": Case("lambda", "LambdaRollback", {"function": cat.name(FUNCTION), **window}),
        "infra": Case("infra", "InfraRollback", {"stack": cat.name("network")}, after_change="validating",
                      state=lambda: repo.state.read_bytes()),
        "flag": Case("flag", "FeatureFlagRollback", {
            "flag": cat.name("new_feature_enabled"), "action": "disable", "all_cities": True},
            after_change="validating"),  # while it confirms its deployment (AppConfig's bake time)
        "config": Case("config", "ConfigRollback", {"target": cat.name("app-settings")},
                       after_change="rolling_back"),
    }
    return cat, cases


@pytest.fixture()
def slack(monkeypatch):
    hook = Recorder(delay=SLOW).start()
    monkeypatch.setenv("ROLLBACK_SLACK_WEBHOOK_URL", hook.url + "/hook")
    yield hook
    hook.stop()


@pytest.fixture()
def slow():
    endpoint = Recorder(delay=SLOW).start()
    yield endpoint
    endpoint.stop()


async def ended(handle: WorkflowHandle) -> RollbackStatus:
    for _ in range(200):
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            break
        await asyncio.sleep(0.1)
    s = await status_of(handle)
    assert s is not None
    return s


async def posted(slack: Recorder, text: str, timeout: float = 60) -> None:
    """Wait until a post containing ``text`` has reached the webhook (it is being answered, slowly)."""
    for _ in range(int(timeout * 20)):
        if any(text in r.body.get("text", "") for r in slack.received):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no post with {text!r}: {[r.body.get('text', '')[:80] for r in slack.received]}")


def assert_cancelled_with_nothing_after(s: RollbackStatus, aws, at_cancel: dict, state_at_cancel, case: Case) -> None:
    assert s.phase.value == "cancelled", (s.phase, s.message)
    assert "no further changes were made" in s.message and "Changes made before the cancel" in s.message
    under_way = [c for c in s.changes if "under way when the cancel arrived" in c.detail]
    if not under_way:  # nothing was being changed when the cancel came: nothing at all after it
        assert aws.faults.changes() == at_cancel, (s.changes, at_cancel)
        assert case.state() == state_at_cancel


@pytest.mark.parametrize("kind", ["service", "database", "frontend", "lambda", "infra", "flag", "config"])
async def test_a_cancel_always_wins(dev_env, aws, tmp_path, slack, slow, kind):
    cat, cases = with_everything(tmp_path, aws, slow)
    case = cases[kind]
    c = dev_env.client
    async with in_process_worker(c, cat) as worker:
        tq = worker.task_queue

        # 1. While the STARTED announcement is being posted: test_a_cancel_during_the_announcement_wins.
        # 2. While waiting for approval (its "needs approval" post in flight), then approved: no change.
        h = await c.start_workflow(case.workflow, {**case.fields, **BASE, "severity": "SEV-1",
                                                   "requested_by": "zoe"}, id=new_id(kind), task_queue=tq)
        await wait_for(h, lambda s: s.phase.value == "awaiting_approval", 60, "the approval step")
        await h.cancel()
        for approver in case.approvers:
            try:
                await h.signal("approve", Decision(approver=approver, id_token=id_token(approver)))
            except Exception:  # noqa: BLE001  (it may have ended already: the point is that nothing changes)
                pass
        s = await ended(h)
        assert_cancelled_with_nothing_after(s, aws, {}, case.state(), case)
        assert s.changes == []

        # 3. After the change, while it validates, monitors or follows its deployment: nothing more.
        h = await c.start_workflow(case.workflow, {**case.fields, **BASE}, id=new_id(kind), task_queue=tq)
        if len(case.approvers) > 1:  # the database also needs a DBA
            await wait_for(h, lambda s: s.phase.value == "awaiting_approval", 60, "the approval step")
            await h.signal("approve", Decision(approver="erin", id_token=id_token("erin")))
        await wait_for(h, lambda s: s.phase.value == case.after_change and any(
            ch.state == "made" for ch in s.changes), 90, f"{case.after_change} after a change")
        at_cancel, state_at_cancel = aws.faults.changes(), case.state()
        await h.cancel()
        s = await ended(h)
        assert_cancelled_with_nothing_after(s, aws, at_cancel, state_at_cancel, case)
        made = [ch.what for ch in s.changes if ch.state == "made"]
        assert made and all(m.split(" (")[0] in s.message for m in made[:1]), (made, s.message)
        assert not any("verified" in e.what or " good" in e.what for e in s.events)  # never recorded as good


@pytest.mark.parametrize("kind", ["service", "database", "frontend", "lambda", "infra", "flag", "config"])
async def test_a_cancel_during_the_announcement_wins(dev_env, aws, tmp_path, slack, slow, kind):
    """Since the fast path (issue 13, workflows/fast_path.py) the STARTED announcement goes out alongside
    the work, as the runbook's auto-rollback announces after acting: the change may be under way or made
    while the (slow) post is answered. The cancel still wins from where it arrives: the rollback ends
    cancelled, the status names every change moto saw, nothing changes after it, nothing is judged good."""
    cat, cases = with_everything(tmp_path, aws, slow)
    case = cases[kind]
    async with in_process_worker(dev_env.client, cat) as worker:
        h = await dev_env.client.start_workflow(case.workflow, {**case.fields, **BASE}, id=new_id(kind),
                                                task_queue=worker.task_queue)
        await posted(slack, f"ROLLBACK STARTED: {kind}")
        await h.cancel()
        s = await ended(h)
        seen = aws.faults.changes()
        await posted(slack, "ROLLBACK CANCELLED")  # #incidents is told
    assert s.phase.value == "cancelled", (s.phase, s.message)
    made = [ch for ch in s.changes if ch.state == "made"]
    changed = {a: n for a, n in seen.items() if a not in ("TagResource", "UntagResource")}
    if kind != "infra":  # (terraform's changes are not AWS calls)
        assert bool(made) == bool(changed), (s.changes, seen)  # the status says what AWS saw changed
    assert ("Changes made before the cancel: none" in s.message) == (not s.changes), s.message
    assert aws.faults.changes() == seen  # nothing after the end
    assert not any("verified" in e.what or " good" in e.what for e in s.events)


async def test_a_cancel_during_a_check_ends_cancelled_not_failed(dev_env, aws, tmp_path, slack, slow):
    # Before: the cancelled check activity surfaced as a failed check; the rollback ended `failed` with "Cancelled".
    cat, cases = with_everything(tmp_path, aws, slow)
    async with in_process_worker(dev_env.client, cat) as worker:
        h = await dev_env.client.start_workflow("ServiceRollback", {**cases["service"].fields, **BASE},
                                                id=new_id("check"), task_queue=worker.task_queue)
        await wait_for(h, lambda s: s.phase.value == "validating", 60, "validation")
        for _ in range(100):  # the slow smoke check is being answered right now
            if any(r.path == "/search" for r in slow.received):
                break
            await asyncio.sleep(0.05)
        at_cancel = aws.faults.changes()
        await h.cancel()
        s = await ended(h)
    assert s.phase.value == "cancelled", s.message
    assert "Cancelled" not in s.message and "cancelled during validating" in s.message
    assert next(st for st in s.steps if st.name == "Validate rollback").state.value == "cancelled"
    assert aws.faults.changes() == at_cancel  # not even the "good" verdict


async def test_starter_cancel_reports_what_actually_happened(dev_env, aws, tmp_path, slack, slow):
    # Before: Temporal ignores a repeated cancel, yet starter.py printed "no further changes will be made"
    # each time, while changes were still being made.
    from tests.test_cli import cli, cli_env

    cat, cases = with_everything(tmp_path, aws, slow)
    queue = f"stopped-{cat.suffix}"
    env = cli_env(dev_env, aws, cat, queue)
    wf = new_id("cli")
    await dev_env.client.start_workflow("ServiceRollback", {**cases["service"].fields, **BASE}, id=wf, task_queue=queue)
    # No worker yet: the cancel is recorded, but nothing can act on it.
    code, out, err = await cli("cancel", wf, "--wait", "1", env=env)
    assert code == 0, err
    assert f"cancel requested for {wf}: no change starts after it" in out
    assert "not confirmed yet" in out and "has not stopped within 1s (is the worker running?)" in out
    code, out, err = await cli("cancel", wf, "--wait", "1", env=env)
    assert code == 0, err
    assert f"{wf} is already cancelling: a cancel was requested at" in out
    assert "cancel requested for" not in out  # it is not a second cancel
    # The worker comes: the cancel wins before any change.
    async with in_process_worker(dev_env.client, cat, task_queue=queue):
        s = await ended(dev_env.client.get_workflow_handle(wf))
        assert s.phase.value == "cancelled" and "Changes made before the cancel: none" in s.message
        code, out, err = await cli("cancel", wf, env=env)
        assert code == 1 and f"rollback {wf} has already ended (cancelled); nothing to cancel" in err
        assert aws.faults.changes() == {}

        # A rollback that changed something: the answer lists the change made before the cancel.
        wf = new_id("cli")
        h = await dev_env.client.start_workflow("ServiceRollback", {**cases["service"].fields, **BASE}, id=wf,
                                                task_queue=queue)
        await wait_for(h, lambda s: s.phase.value == "monitoring", 60, "monitoring")
        code, out, err = await cli("cancel", wf, env=env, timeout=40)
    assert code == 0, err
    assert (f"{cat.api}: cancelled - cancelled during monitoring; no further changes were made. Changes made "
            "before the cancel: ecs update-service --cluster rastup-prod --service api-service --task-definition "
            "api-service:42") in out
