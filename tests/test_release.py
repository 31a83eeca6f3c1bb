"""ReleaseRollback: every component of release v1.2.3 (the flag, api, the search indexer, the site)
rolled back in the runbook's order under ONE approval, each by its own procedure as a child
workflow. Real Temporal (time-skipping), moto + the sandbox fleet, real PostgreSQL for databases."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml
from temporalio.client import WorkflowFailureError

from common.catalog import Catalog
from common.models import Decision, ReleaseRollbackInput, RollbackStatus
from common.releases import Release, plan, waves
from sandbox.frontend_fleet import SITE_BUCKET, release_files
from sandbox.lambda_fleet import ALIAS, FUNCTION, catalog_entry
from tests.conftest import RunCatalog, id_token, in_process_worker
from tests.helpers import (cancel_when_idle, failure_text, new_id, running_revision, status_of, wait_for,
                           wait_phase)
from tests.test_crash import spawn_worker  # noqa: F401  (the fixture: worker.py subprocesses, killed at teardown)
from workflows.release import ReleaseRollback, previous_release

BAD, GOOD = (43, "v1.2.3"), (42, "v1.2.2")


def with_release(cat: RunCatalog, databases: dict | None = None, **release) -> RunCatalog:
    """The sandbox's release v1.2.3 (per-test names) in the catalog, plus the search indexer."""
    cat.data["functions"] = {**cat.data.get("functions", {}), cat.name(FUNCTION): catalog_entry()}
    cat.data["releases"] = {"v1.2.3": {
        "services": {cat.api: "v1.2.3"}, "functions": {cat.name(FUNCTION): "4"}, "sites": {cat.name("web"): "v1.2.3"},
        "flags": [cat.name("new_feature_enabled")], **({"databases": databases} if databases else {}), **release}}
    Catalog.model_validate(cat.data)
    cat.path.write_text(yaml.safe_dump(cat.data, sort_keys=False))
    return cat


def request(**kw) -> ReleaseRollbackInput:
    fields = dict(release="v1.2.3", severity="SEV-2", requested_by="zoe", reason="bookings broken after v1.2.3",
                  monitor_minutes=10)
    fields.update(kw)
    fields.setdefault("id_token", id_token(fields["requested_by"]))
    return ReleaseRollbackInput(**fields)


def alias_version(aws) -> str:
    return aws.client("lambda").get_alias(FunctionName=FUNCTION, Name=ALIAS)["FunctionVersion"]


def site_files(aws) -> dict[str, str]:
    s3 = aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=SITE_BUCKET).get("Contents", [])]
    return {k: s3.get_object(Bucket=SITE_BUCKET, Key=k)["Body"].read().decode() for k in keys}


def flag_enabled_anywhere(aws) -> bool:
    """What clients are served for the sandbox's new_feature_enabled (the AppConfig data plane)."""
    from tests.support.appconfig_state import AppConfigState

    return bool(AppConfigState(aws).served_flags()["new_feature_enabled"]["enabled"])


def component_steps(s: RollbackStatus) -> list:
    return [st for st in s.steps if st.name.startswith("Roll back ")]


def approve(handle, who: str):
    return handle.signal("approve", Decision(approver=who, id_token=id_token(who)))


async def test_one_request_rolls_back_the_release_in_order_under_one_approval(ts_env, aws, catalog):
    cat = with_release(catalog)
    assert running_revision(aws) == BAD and alias_version(aws) == "4" and flag_enabled_anywhere(aws)
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(ReleaseRollback.run, request(), id=f"rollback-release-{new_id()}",
                                                    task_queue=worker.task_queue)
        s = await wait_phase(handle, "awaiting_approval")
        # the whole plan, in the runbook's order, before anything is asked or changed
        assert s.plan == [f"1. flag {cat.name('new_feature_enabled')}: disable in every city",
                          f"2. service {cat.api}: v1.2.3 -> v1.2.2",
                          f"3. Lambda function {cat.name(FUNCTION)}: 4 -> 3",
                          f"4. frontend {cat.name('web')}: v1.2.3 -> v1.2.2"]
        assert [(c.kind, c.phase, c.from_version, c.to_version) for c in s.components][1:] == [
            ("service", "planned", "v1.2.3", "v1.2.2"), ("lambda", "planned", "4", "3"),
            ("frontend", "planned", "v1.2.3", "v1.2.2")]
        # one approval, the severity's only (no database in the plan: no DBA)
        assert [(r.label, r.count, r.eligible) for r in s.approvals.required] == [("on-call engineer (SEV-2)", 1,
                                                                                   ["dana"])]
        assert running_revision(aws) == BAD and aws.faults.changes() == {}
        await approve(handle, "dana")
        result: RollbackStatus = await handle.result()

    assert result.phase.value == "succeeded", result.message
    assert running_revision(aws) == GOOD and alias_version(aws) == "3" and not flag_enabled_anywhere(aws)
    assert site_files(aws) == release_files("v1.2.2")
    assert "v1.2.2" in httpx.get(f"{aws.http_base}/site/").text
    assert [c.phase for c in result.components] == ["succeeded"] * 4
    # in order: each component started after the one before it had ended (verified and monitored)
    steps = component_steps(result)
    assert [st.name.rsplit(" ", 1)[-1] for st in steps] == [
        cat.name("new_feature_enabled"), cat.api, cat.name(FUNCTION), cat.name("web")]
    assert all(a.ended_at <= b.started_at for a, b in zip(steps, steps[1:]))
    # nobody was asked again: each child counted the release's approval, vouched by the worker
    assert result.report.count("- Approved: dana (approved once for release rollback") == 4
    assert len(result.approvals.received) == 1 and result.approvals.received[0].approver == "dana"
    # one report with every component's timeline; the post-rollback actions ran once, for the release
    for st in steps:
        name = st.name.removeprefix("Roll back ")
        assert f"## {name}: succeeded" in result.report
    assert result.report.count("- post-rollback actions: skipped (done once for the release") == 4
    assert [a.action for a in result.actions if a.action == "post outcome to #incidents"] == [
        "post outcome to #incidents"]


async def test_dry_run_plans_every_component_and_changes_nothing(ts_env, aws, catalog):
    cat = with_release(catalog)
    async with in_process_worker(ts_env.client, cat) as worker:
        result: RollbackStatus = await ts_env.client.execute_workflow(
            ReleaseRollback.run, request(dry_run=True), id=new_id("release-dry"), task_queue=worker.task_queue)
    assert result.phase.value == "planned", result.message
    assert len(result.plan) == 4 and result.plan[1].endswith("v1.2.3 -> v1.2.2")
    assert aws.faults.changes() == {}
    assert running_revision(aws) == BAD and alias_version(aws) == "4" and flag_enabled_anywhere(aws)
    assert {st.state.value for st in component_steps(result)} == {"skipped"}
    assert result.actions == []  # nothing announced


async def refused(ts_env, cat: RunCatalog, req: ReleaseRollbackInput) -> tuple[RollbackStatus, str]:
    """Run a release rollback that must fail: its last status and its failure, as a person reads it."""
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(ReleaseRollback.run, req, id=new_id("release-refused"),
                                                    task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        return await status_of(handle), failure_text(excinfo)


async def test_unknown_release_says_which_exist_and_announces_nothing(ts_env, aws, catalog):
    s, text = await refused(ts_env, with_release(catalog), request(release="v9.9.9"))
    assert "release 'v9.9.9' is not known" in text and "known: v1.2.3" in text and "nothing was changed" in text
    assert s.actions == [] and not any("ROLLBACK STARTED" in e.what for e in s.events)
    assert aws.faults.changes() == {}


async def test_without_the_automation_key_it_refuses_before_asking_or_announcing(ts_env, aws, catalog, monkeypatch):
    monkeypatch.delenv("ROLLBACK_AUTOMATION_KEY")
    monkeypatch.setenv("ROLLBACK_AWS", "real")  # no sandbox key either: as a production worker without it
    s, text = await refused(ts_env, with_release(catalog), request(requested_by="dana"))
    assert "ROLLBACK_AUTOMATION_KEY is not set on the worker" in text
    assert s.actions == [] and aws.faults.changes() == {} and not s.approvals.received


async def test_leave_out_skips_a_component(ts_env, aws, catalog):
    cat = with_release(catalog)
    async with in_process_worker(ts_env.client, cat) as worker:
        result = await ts_env.client.execute_workflow(
            ReleaseRollback.run, request(dry_run=True, leave_out=[cat.name("web"), cat.name(FUNCTION)]),
            id=new_id("release-leave"), task_queue=worker.task_queue)
        bad = await ts_env.client.start_workflow(ReleaseRollback.run, request(dry_run=True, leave_out=["nope"]),
                                                 id=new_id("release-leave"), task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await bad.result()
    assert [p.split(":")[0] for p in result.plan] == [f"1. flag {cat.name('new_feature_enabled')}",
                                                     f"2. service {cat.api}"]
    assert {c.name: c.phase for c in result.components}[cat.name("web")] == "left_out"
    assert "leave_out names 'nope'" in failure_text(excinfo)


def test_databases_only_when_required_and_the_runbook_order():
    rel = Release(services={"api": "v2"}, sites={"web": "v2"}, functions={"fn": "4"}, flags=["f"],
                  kill_switches=["k"], databases={"kept": {}, "undone": {"required": True}})
    comps, unknown = plan(rel, [])
    assert [c.key for c in comps] == ["flag:f", "kill_switch:k", "service:api", "lambda:fn", "frontend:web",
                                      "database:undone"]
    assert [[c.name for c in w] for w in waves(comps)] == [["f", "k"], ["api"], ["fn"], ["web"], ["undone"]]
    assert previous_release(["v1.2.1", "v1.2.10", "v1.2.9", "v1.2.11"], "v1.2.10") == "v1.2.9"
    assert previous_release(["v1.2.3"], "v1.2.3") is None


# --- a database in the plan: the approval also needs a DBA ----------------------------------

async def test_a_database_in_the_plan_needs_a_dba_in_the_one_approval(ts_env, aws, tmp_path, pg_database):
    from tests.pg import schema_version, upgrade
    from tests.test_database import with_database

    upgrade(pg_database, "0003")
    cat = with_database(tmp_path, aws, pg_database)
    cat.data["releases"] = {"v1.2.3": {"services": {cat.api: "v1.2.3"},
                                       "databases": {cat.name("bookings"): {"steps": 1, "required": True}}}}
    cat.path.write_text(yaml.safe_dump(cat.data, sort_keys=False))
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(ReleaseRollback.run, request(), id=new_id("release-db"),
                                                    task_queue=worker.task_queue)
        s = await wait_phase(handle, "awaiting_approval")
        assert [r.label for r in s.approvals.required] == ["on-call engineer (SEV-2)", "database administrator"]
        assert s.plan[-1].startswith(f"2. database {cat.name('bookings')}")
        await approve(handle, "dana")
        s = await wait_for(handle, lambda s: len(s.approvals.received) == 1, what="dana's approval counted")
        assert s.phase.value == "awaiting_approval" and running_revision(aws) == BAD  # still the DBA
        await approve(handle, "erin")
        result = await handle.result()
    assert result.phase.value == "succeeded", result.message
    assert running_revision(aws) == GOOD and schema_version(pg_database) == "0002"
    assert [c.kind for c in result.components] == ["service", "database"]
    assert result.report.count("- Approved: dana (approved once for release rollback") == 2


# --- failures and cancel ----------------------------------------------------------------------

async def _fail_the_service(ts_env, aws, cat, decide: str) -> tuple[RollbackStatus, str]:
    aws.faults.inject("UpdateService", "denied")  # the service's change fails: AccessDenied, not retried
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(ReleaseRollback.run, request(requested_by="dana"),
                                                    id=new_id("release-fail"), task_queue=worker.task_queue)
        s = await wait_phase(handle, "paused")
        assert s.approvals.context.startswith(f"service {cat.api} failed")
        assert f"rolled back: flag {cat.name('new_feature_enabled')}" in s.approvals.context
        assert f"not rolled back: service {cat.api} (failed)" in s.approvals.context
        assert alias_version(aws) == "4"  # the rest waits for the human
        if decide == "approve":
            await approve(handle, "dana")
        else:
            await handle.signal("reject", Decision(approver="dana", id_token=id_token("dana"), reason="stop here"))
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        return await status_of(handle), failure_text(excinfo)


async def test_a_failing_component_stops_the_rest_and_stop_here_leaves_them(ts_env, aws, catalog):
    cat = with_release(catalog)
    s, text = await _fail_the_service(ts_env, aws, cat, "reject")
    assert s.phase.value == "failed"
    assert "stopped after service" in text and "not rolled back" in text
    assert {c.kind: c.phase for c in s.components} == {"flag": "succeeded", "service": "failed",
                                                        "lambda": "not_started", "frontend": "not_started"}
    assert running_revision(aws) == BAD and alias_version(aws) == "4" and not flag_enabled_anywhere(aws)
    assert "UpdateAlias" not in aws.faults.changes() and "CopyObject" not in aws.faults.changes()


async def test_a_failing_component_then_continue_rolls_back_the_others(ts_env, aws, catalog):
    cat = with_release(catalog)
    s, text = await _fail_the_service(ts_env, aws, cat, "approve")
    assert s.phase.value == "failed"  # one component is not rolled back: never reported as a success
    assert {c.kind: c.phase for c in s.components} == {"flag": "succeeded", "service": "failed",
                                                        "lambda": "succeeded", "frontend": "succeeded"}
    assert alias_version(aws) == "3" and site_files(aws) == release_files("v1.2.2")
    assert running_revision(aws) == BAD  # never retried behind the human's back
    assert f"not rolled back: service {cat.api} (failed)" in s.message
    assert "AccessDenied" in s.report or "access denied" in s.report  # the failed child's own timeline


async def test_cancel_mid_release_stops_every_child(ts_env, aws, catalog):
    cat = with_release(catalog)
    async with in_process_worker(ts_env.client, cat) as worker:
        handle = await ts_env.client.start_workflow(ReleaseRollback.run, request(requested_by="dana",
                                                                                 monitor_minutes=600),
                                                    id=new_id("release-cancel"), task_queue=worker.task_queue)
        s = await wait_for(handle, lambda s: any(c.kind == "service" and c.phase == "running" for c in s.components),
                           what="the service component running")
        child = ts_env.client.get_workflow_handle(next(c.workflow_id for c in s.components if c.kind == "service"))
        await wait_phase(child, "monitoring")
        await cancel_when_idle(handle, child)
        s = await status_of(handle)
        child_status = await status_of(child)
    assert s.phase.value == "cancelled"
    assert {c.kind: c.phase for c in s.components} == {"flag": "succeeded", "service": "cancelled",
                                                        "lambda": "not_started", "frontend": "not_started"}
    assert child_status.phase.value == "cancelled"
    assert running_revision(aws) == GOOD  # the change made before the cancel stays: never rolled forward
    assert alias_version(aws) == "4" and "CopyObject" not in aws.faults.changes()
    assert "no other was started" in s.message


# --- a worker crash mid-release: every change once ----------------------------------------------

async def test_crash_mid_release_then_restart_makes_each_change_once(dev_env, aws, tmp_path, spawn_worker):
    from tests.conftest import AUTOMATION_KEY, FAST_POLICY, write_catalog
    from tests.test_crash import result_of, sigkill, worker_env

    cat = with_release(write_catalog(tmp_path, aws, {**FAST_POLICY, "appconfig_poll_seconds": 0.5}))
    env = {**worker_env(dev_env, aws, cat, task_queue=f"tq-release-crash-{new_id()}"),
           "ROLLBACK_AUTOMATION_KEY": AUTOMATION_KEY}  # vouches the one approval to each component
    first = spawn_worker(env)
    handle = await dev_env.client.start_workflow(
        ReleaseRollback.run, request(requested_by="dana", monitor_minutes=0.1), id=new_id("release-crash"),
        task_queue=env["ROLLBACK_TASK_QUEUE"])
    s = await wait_for(handle, lambda s: any(c.kind == "service" and c.phase == "running" for c in s.components),
                       timeout=90, what="the service component running")
    child = dev_env.client.get_workflow_handle(next(c.workflow_id for c in s.components if c.kind == "service"))
    await wait_phase(child, "monitoring", timeout=60)
    sigkill(first)  # mid-release: the flag done, the service monitoring, the function and site not started
    before = aws.faults.changes()
    assert before["UpdateService"] == 1 and "UpdateAlias" not in before and "CopyObject" not in before

    spawn_worker(env)
    result = await result_of(handle, tmp_path, timeout=120)
    assert result.phase.value == "succeeded", result.message
    after = aws.faults.changes()
    # each change once: the flag's new revision and its deployment, the service, the alias, the site's sync
    assert (after["CreateHostedConfigurationVersion"], after["StartDeployment"], after["UpdateService"],
            after["UpdateAlias"], after["CreateInvalidation"]) == (1, 1, 1, 1, 1), after
    assert after["CopyObject"] == 3, after  # v1.2.2's changed files, copied once (tests/test_frontend.py)
    assert running_revision(aws) == GOOD and alias_version(aws) == "3" and site_files(aws) == release_files("v1.2.2")
    assert [c.phase for c in result.components] == ["succeeded"] * 4


# --- the CLI: record a release, show it, roll it back ----------------------------------------------

async def test_cli_records_shows_and_starts_a_release_rollback(dev_env, aws, catalog):
    from tests.test_cli import cli, cli_env, login

    cat = with_release(catalog)
    async with in_process_worker(dev_env.client, cat) as worker:
        env = cli_env(dev_env, aws, cat, task_queue=worker.task_queue)
        code, out, err = await cli("release", "record", "v2.0.0", "--service", f"{cat.api}=v1.2.3",
                                   "--function", f"{cat.name(FUNCTION)}=4", "--flag", cat.name("new_feature_enabled"),
                                   "--recorded-by", "deploy-pipeline", env=env)
        assert code == 0, err
        assert "recorded release v2.0.0 in /rollback-orchestrator/releases/v2.0.0" in out
        stored = json.loads(aws.client("ssm").get_parameter(Name="/rollback-orchestrator/releases/v2.0.0")
                            ["Parameter"]["Value"])
        assert stored["services"] == {cat.api: "v1.2.3"} and stored["recorded_by"] == "deploy-pipeline"
        code, out, err = await cli("release", "show", "v2.0.0", env=env)
        assert code == 0, err
        assert out.splitlines()[1:] == [f"1. flag {cat.name('new_feature_enabled')}", f"2. service {cat.api} v1.2.3",
                                        f"3. lambda {cat.name(FUNCTION)} 4"]
        code, out, err = await cli("release", "list", env=env)
        assert "v1.2.3  (catalog)" in out and "v2.0.0  (recorded)" in out
        code, out, err = await cli("release", "record", "v2.0.1", "--service", "nope=v1", env=env)
        assert code == 2 and "'nope' is not under services" in err
        code, out, err = await cli("release", "show", "v9", env=env)
        assert code == 2 and "release 'v9' is not known" in err and "v2.0.0" in err

        await login(env, "dana")
        code, out, err = await cli("start", "v2.0.0", "--kind", "release", "--severity", "SEV-2", "--requested-by",
                                   "dana", "--reason", "bookings broken", "--dry-run", env=env)
        assert code == 0, err
        assert "rollback-release-v2.0.0" in out
        code, out, err = await cli("status", "v2.0.0", "--kind", "release", "--watch", env=env, timeout=90)
        assert code == 0, out + err
        assert "planned" in out
    assert aws.faults.changes() == {} and running_revision(aws) == BAD


async def test_an_alert_can_start_a_release_rollback(dev_env, aws, fast_catalog):
    import httpx as http_client

    from common.api import workflow_id
    from tests.test_receiver import BEARER, alertmanager, serving, start_input, terminate

    cat = with_release(fast_catalog)
    cat.data["alert_rules"] = [{"name": "bad-release", "match": {"alertname": "BadRelease"}, "kind": "release",
                                "input": {"release": "{labels.release}"}}]
    cat.path.write_text(yaml.safe_dump(cat.data, sort_keys=False))
    wf = workflow_id("release", "v1.2.3")
    async with serving(dev_env.client, cat, "no-worker-here") as url, \
            http_client.AsyncClient(base_url=url, timeout=30) as http:
        try:
            r = await http.post("/alerts/alertmanager", headers=BEARER,
                                json=alertmanager("api", alertname="BadRelease", release="v1.2.3"))
            assert r.status_code == 200, r.text
            wf_type, started_with = await start_input(dev_env.client.get_workflow_handle(wf))
        finally:
            await terminate(dev_env.client, wf)
    assert wf_type == "ReleaseRollback"
    assert {k: started_with[k] for k in ("release", "severity", "requested_by")} == {
        "release": "v1.2.3", "severity": "SEV-3", "requested_by": "alertmanager:bad-release"}


def test_a_vouched_approval_satisfies_a_components_gate_but_never_a_pause():
    from datetime import datetime, timezone

    from common.identity import ProofRecord
    from sandbox.catalog import catalog_dict
    from workflows.gate import ApprovalGate

    c = Catalog.model_validate(catalog_dict("http://127.0.0.1:1", None))
    vouched = ProofRecord(kind="oidc", issuer="x", via="release rollback rollback-release-v1.2.3",
                          approved_by=["alice"])
    gate = ApprovalGate(policy=c.policy, people=c.people, requester="zoe", severity="SEV-0",
                        requester_proof=vouched)
    assert gate.view.satisfied and gate.approve_at_start(datetime.now(timezone.utc))
    assert [r.approver for r in gate.view.received] == ["alice"]
    pause = ApprovalGate(policy=c.policy, people=c.people, requester="zoe", severity="SEV-0",
                         requester_proof=vouched, auto_approve=False)
    assert not pause.view.satisfied  # a paused step asks people, whatever the release's approval
    typed = ApprovalGate(policy=c.policy, people=c.people, requester="zoe", severity="SEV-0",
                         requester_proof=vouched.model_copy(update={"via": ""}))
    assert not typed.view.satisfied  # only a worker-signed vouch (it carries the parent) counts
