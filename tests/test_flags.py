"""FeatureFlagRollback behaviour against the sandbox's AppConfig flags (moto + the AppConfig
stand-in): only the requested value changes, byte for byte; the change is deployed with the
catalog's strategy and read back as clients are served it; the on-call engineer's kill switch
never waits; bad input changes nothing. Time-skipping server."""

from __future__ import annotations

import difflib
import json

import pytest
from temporalio.client import WorkflowFailureError

from common.models import Decision, FeatureFlagRollbackInput, RollbackStatus
from sandbox.appconfig_fleet import FLAGS_DOCUMENT
from tests.conftest import RunCatalog, id_token, in_process_worker, write_catalog
from tests.helpers import failure_text, new_id, wait_phase
from tests.support.appconfig_state import AppConfigState
from workflows.flags import FeatureFlagRollback

PROFILE = "feature-flags"


def request(flag: str, **kw) -> FeatureFlagRollbackInput:
    fields = dict(flag=flag, severity="SEV-2", requested_by="dana", reason="conversion dropped in LA")
    fields.update(kw)
    fields.setdefault("id_token", id_token(fields["requested_by"]))  # proven, as starter.py sends it
    return FeatureFlagRollbackInput(**fields)


def changed_lines(before: str, after: str) -> list[str]:
    """The lines that differ, as "-<old line>" / "+<new line>"."""
    return [line[0] + line[2:] for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line[:1] in "+-"]


def steps(s: RollbackStatus) -> dict[str, str]:
    return {st.name: st.state.value for st in s.steps}


async def run(ts_env, catalog: RunCatalog, req: FeatureFlagRollbackInput) -> RollbackStatus:
    async with in_process_worker(ts_env.client, catalog) as worker:
        return await ts_env.client.execute_workflow(FeatureFlagRollback.run, req, id=f"rollback-flag-{req.flag}",
                                                    task_queue=worker.task_queue)


async def test_disable_for_all_cities_changes_that_value_only_and_is_verified(ts_env, aws, catalog):
    state = AppConfigState(aws)
    assert state.versions(PROFILE) == [1] and state.raw(PROFILE, 1) == FLAGS_DOCUMENT
    result = await run(ts_env, catalog, request(catalog.name("new_feature_enabled"), action="disable",
                                                all_cities=True))
    assert result.phase.value == "succeeded", result.message
    assert steps(result) == {"Read flag state": "succeeded", "Approval": "succeeded",
                             "Disable feature globally": "succeeded", "Deploy configuration": "succeeded",
                             "Verify flag state": "succeeded", "Confirm deployment complete": "succeeded",
                             "Validate rollback": "skipped", "Monitor post-rollback": "skipped",  # nothing linked
                             "Report": "succeeded"}
    # One new version: the old text with one value changed; every other byte as it was.
    assert state.versions(PROFILE) == [1, 2]
    after = state.raw(PROFILE, 2)
    assert changed_lines(FLAGS_DOCUMENT, after) == ['-      "enabled": true,', '+      "enabled": false,']
    assert after == FLAGS_DOCUMENT.replace('"enabled": true,\n      "los-angeles"',
                                           '"enabled": false,\n      "los-angeles"')
    old, new = json.loads(FLAGS_DOCUMENT), json.loads(after)
    assert new["values"].pop("new_feature_enabled") == {**old["values"].pop("new_feature_enabled"), "enabled": False}
    assert new == old  # flags' definitions, the other flags' values, version: all equal
    # Deployed once, with the store's strategy for ordinary changes, and served so.
    deployed = state.deployments(PROFILE)
    assert [(d["ConfigurationVersion"], d["State"], d["DeploymentStrategyId"]) for d in deployed][0] == (
        "2", "COMPLETE", "AppConfig.Linear50PercentEvery30Seconds")
    assert aws.faults.calls["CreateHostedConfigurationVersion"] == 1 and aws.faults.calls["StartDeployment"] == 1
    served = state.served_flags()
    assert served == {"new_feature_enabled": {"enabled": False}, "payments_disabled": {"enabled": False},
                      "search_v2": {"enabled": True, "variant": "b"}}
    assert (result.from_version, result.to_version) == (
        "on (los-angeles 50%, new-york 25%, chicago 100%)", "off")
    assert [c.ok for c in result.checks] == [True, True]
    assert 0 <= result.extra["seconds_to_verified"] < 120
    assert "revision 2: values.new_feature_enabled.enabled: true -> false" in \
        next(st.detail for st in result.steps if st.name == "Disable feature globally")


async def test_city_percentage_touches_that_city_only(ts_env, aws, catalog):
    state = AppConfigState(aws)
    result = await run(ts_env, catalog, request(catalog.name("new_feature_enabled"), action="percentage",
                                                cities=["los-angeles"], percentage=0))
    assert result.phase.value == "succeeded", result.message
    assert "Update flag" in steps(result)
    after = state.raw(PROFILE, 2)
    assert changed_lines(FLAGS_DOCUMENT, after) == ['-      "los-angeles": 50,', '+      "los-angeles": 0,']
    assert state.served_flags()["new_feature_enabled"] == {
        "enabled": True, "los-angeles": 0, "new-york": 25, "chicago": 100}
    assert result.to_version == "on (los-angeles 0%, new-york 25%, chicago 100%)"


async def test_kill_switch_by_the_on_call_at_sev4_never_waits_and_is_verified(ts_env, aws, tmp_path):
    # Even with a matrix that would make SEV-4 wait for two approvers, the policy's
    # kill_switch_immediate lets the on-call engineer's kill switch through at once.
    strict = {"matrix": {"SEV-4": {"trigger": "breach", "response_minutes": 0, "approvals": 2,
                                   "approver_role": "approvers", "requester_may_approve": False}}}
    catalog = write_catalog(tmp_path, aws, strict)
    state = AppConfigState(aws)
    result = await run(ts_env, catalog, request(catalog.name("payments_disabled"), action="kill_switch",
                                                severity="SEV-4", reason="card data exposed"))
    assert result.phase.value == "succeeded", result.message
    assert not any("awaiting_approval" in e.what for e in result.events)
    assert steps(result)["Enable kill switch"] == "succeeded"
    assert [(r.approver, "kill_switch_immediate" in r.note) for r in result.approvals.received] == [("dana", True)]
    assert state.served_flags()["payments_disabled"] == {"enabled": True}
    assert state.deployments(PROFILE)[0]["DeploymentStrategyId"] == "AppConfig.AllAtOnce"
    assert changed_lines(FLAGS_DOCUMENT, state.raw(PROFILE, 2)) == [
        '-      "enabled": false', '+      "enabled": true']
    seconds = result.extra["seconds_to_verified"]
    verified = next(st for st in result.steps if st.name == "Verify flag state").ended_at
    assert seconds == (verified - result.started_at).total_seconds()


async def test_kill_switch_asked_by_someone_else_waits_for_the_on_call(ts_env, aws, catalog):
    state = AppConfigState(aws)
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            FeatureFlagRollback.run, request(catalog.name("payments_disabled"), action="kill_switch",
                                             severity="SEV-3", requested_by="zoe"),
            id=new_id(), task_queue=worker.task_queue)
        s = await wait_phase(handle, "awaiting_approval")
        assert s.approvals.eligible == ["dana"] and aws.faults.calls["CreateHostedConfigurationVersion"] == 0
        # Meanwhile someone deploys another flag change: the kill switch goes on top of it.
        meanwhile = FLAGS_DOCUMENT.replace('"variant": "b"', '"variant": "a"')
        assert state.publish(PROFILE, meanwhile) == 2
        await handle.signal(FeatureFlagRollback.approve, Decision(approver="dana", id_token=id_token("dana")))
        result: RollbackStatus = await handle.result()
    assert result.phase.value == "succeeded", result.message
    assert any("deployed revision 2 since the plan" in e.what for e in result.events)
    assert changed_lines(meanwhile, state.raw(PROFILE, 3)) == ['-      "enabled": false', '+      "enabled": true']
    served = state.served_flags()
    assert served["payments_disabled"] == {"enabled": True} and served["search_v2"]["variant"] == "a"


async def test_a_deployment_appconfig_rolls_back_fails_clearly(ts_env, aws, catalog):
    aws.faults.appconfig.roll_back_next()  # as if an alarm fired during the deployment
    with pytest.raises(WorkflowFailureError) as excinfo:
        await run(ts_env, catalog, request(catalog.name("new_feature_enabled"), action="disable", all_cities=True))
    assert "ROLLED_BACK" in failure_text(excinfo) and "as it was before" in failure_text(excinfo)
    assert AppConfigState(aws).served_flags()["new_feature_enabled"]["enabled"] is True


async def test_lost_answers_write_and_deploy_once(ts_env, aws, catalog):
    aws.faults.inject("CreateHostedConfigurationVersion", "lost-answer")
    aws.faults.inject("StartDeployment", "lost-answer")
    result = await run(ts_env, catalog, request(catalog.name("new_feature_enabled"), action="percentage",
                                                cities=["new-york", "chicago"], percentage=10))
    assert result.phase.value == "succeeded", result.message
    state = AppConfigState(aws)
    assert state.versions(PROFILE) == [1, 2]
    assert [d["ConfigurationVersion"] for d in state.deployments(PROFILE)] == ["2", "1"]
    assert sorted(changed_lines(FLAGS_DOCUMENT, state.raw(PROFILE, 2))) == sorted([
        '-      "new-york": 25,', '-      "chicago": 100', '+      "new-york": 10,', '+      "chicago": 10'])
    # Each answer was lost after the change was made; the retry found it instead of repeating it.
    assert aws.faults.calls["CreateHostedConfigurationVersion"] == 1 and aws.faults.calls["StartDeployment"] == 1


@pytest.mark.parametrize("bad,expect", [
    ({"flag": "no_such_flag", "action": "disable", "all_cities": True},
     "flag 'no_such_flag' is not in the catalog (known: new_feature_enabled-"),
    ({"action": "percentage", "cities": ["boston"], "percentage": 0},
     "city 'boston': flag 'new_feature_enabled-"),
    ({"action": "percentage", "cities": ["los-angeles"], "percentage": 101}, "less than or equal to 100"),
    ({"action": "percentage", "cities": ["los-angeles"], "percentage": -1}, "greater than or equal to 0"),
    ({"action": "kill_switch"}, "is not a kill switch in the catalog (kill switches: payments_disabled-"),
    ({"action": "disable"}, "needs cities (a list) or all_cities"),
])
async def test_bad_input_fails_clearly_and_changes_nothing(ts_env, aws, catalog, bad, expect):
    raw = {"flag": catalog.name("new_feature_enabled"), "severity": "SEV-2", "requested_by": "dana",
           "reason": "conversion dropped", **bad}
    async with in_process_worker(ts_env.client, catalog) as worker:
        # Raw JSON as the Web UI sends it: no client-side model in the way.
        handle = await ts_env.client.start_workflow("FeatureFlagRollback", raw, id=new_id(),
                                                    task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
    assert expect in failure_text(excinfo)
    assert aws.faults.calls["CreateHostedConfigurationVersion"] == 0 and aws.faults.calls["StartDeployment"] == 0
    state = AppConfigState(aws)
    assert state.versions(PROFILE) == [1] and len(state.deployments(PROFILE)) == 1


async def test_dry_run_plans_and_changes_nothing(ts_env, aws, catalog):
    result = await run(ts_env, catalog, request(catalog.name("new_feature_enabled"), action="percentage",
                                                all_cities=True, percentage=5, dry_run=True))
    assert result.phase.value == "planned"
    assert any("new_feature_enabled.los-angeles = 5%" in p and "new_feature_enabled.chicago = 5%" in p
               for p in result.plan)
    assert aws.faults.calls["CreateHostedConfigurationVersion"] == 0 and aws.faults.calls["StartDeployment"] == 0
