"""ConfigRollback behaviour: an AppConfig configuration redeployed at exactly the previous (or the
given) version and verified as served; a secret's AWSCURRENT moved back and verified with
VersionStage reads, its consumers redeployed, its value nowhere in status, history or logs; bad
input changes nothing. Time-skipping server; moto + the AppConfig stand-in behind it."""

from __future__ import annotations

import logging

import pytest
from temporalio.client import WorkflowFailureError

from common.models import ConfigRollbackInput, RollbackStatus
from sandbox.appconfig_fleet import API_KEY_NEW, API_KEY_OLD, API_KEY_SECRET, SETTINGS, SETTINGS_PROFILE, seed_config
from tests.conftest import RunCatalog, id_token, in_process_worker
from tests.helpers import failure_text, new_id
from tests.support.appconfig_state import AppConfigState
from workflows.config import ConfigRollback


def request(target: str, **kw) -> ConfigRollbackInput:
    fields = dict(target=target, severity="SEV-2", requested_by="dana", reason="timeouts after the config change")
    fields.update(kw)
    fields.setdefault("id_token", id_token(fields["requested_by"]))  # proven, as starter.py sends it
    return ConfigRollbackInput(**fields)


def steps(s: RollbackStatus) -> dict[str, str]:
    return {st.name: st.state.value for st in s.steps}


def stages(aws) -> dict[str, list[str]]:
    return aws.client("secretsmanager").describe_secret(SecretId=API_KEY_SECRET)["VersionIdsToStages"]


def holder(stage_map: dict[str, list[str]], stage: str) -> str:
    return next(v for v, s in stage_map.items() if stage in s)


async def run(ts_env, catalog: RunCatalog, req: ConfigRollbackInput, wid: str | None = None) -> RollbackStatus:
    async with in_process_worker(ts_env.client, catalog) as worker:
        return await ts_env.client.execute_workflow(ConfigRollback.run, req, id=wid or f"rollback-config-{req.target}",
                                                    task_queue=worker.task_queue)


async def test_appconfig_rollback_deploys_exactly_the_previous_version(ts_env, aws, catalog):
    state = AppConfigState(aws)
    assert [d["ConfigurationVersion"] for d in state.deployments(SETTINGS_PROFILE)] == ["2", "1"]
    result = await run(ts_env, catalog, request(catalog.name(SETTINGS_PROFILE)))
    assert result.phase.value == "succeeded", result.message
    assert steps(result) == {"Identify previous version": "succeeded", "Approval": "succeeded",
                             "Deploy previous configuration version": "succeeded",
                             "Verify deployed configuration": "succeeded", "Validate rollback": "skipped",
                             "Monitor post-rollback": "skipped", "Report": "succeeded"}
    assert (result.from_version, result.to_version) == ("2", "1")
    deployed = state.deployments(SETTINGS_PROFILE)
    assert [(d["ConfigurationVersion"], d["State"]) for d in deployed] == [("1", "COMPLETE"), ("2", "COMPLETE"),
                                                                         ("1", "COMPLETE")]
    assert deployed[0]["DeploymentStrategyId"] == "AppConfig.AllAtOnce"
    assert result.workflow_id in deployed[0]["Description"]
    assert state.served(SETTINGS_PROFILE) == SETTINGS[0].encode()  # clients get version 1, byte for byte
    assert state.versions(SETTINGS_PROFILE) == [1, 2]  # nothing new written: a redeploy
    assert aws.faults.calls["StartDeployment"] == 1
    assert [c.ok for c in result.checks] == [True, True]


async def test_appconfig_rollback_to_an_explicit_version(ts_env, aws, catalog):
    state = AppConfigState(aws)
    assert state.publish(SETTINGS_PROFILE, '{"search": {"page_size": 99}}') == 3
    aws.faults.clear()
    result = await run(ts_env, catalog, request(catalog.name(SETTINGS_PROFILE), to_version=1))  # not 2, the default
    assert result.phase.value == "succeeded", result.message
    assert (result.from_version, result.to_version) == ("3", "1")
    assert [d["ConfigurationVersion"] for d in state.deployments(SETTINGS_PROFILE)] == ["1", "3", "2", "1"]
    assert state.served(SETTINGS_PROFILE) == SETTINGS[0].encode()


async def test_secret_stage_move_is_verified_and_the_value_never_shows(ts_env, aws, catalog, caplog):
    caplog.set_level(logging.DEBUG)
    for quiet in ("botocore", "boto3", "urllib3", "werkzeug"):  # as common.logging.configure sets them
        logging.getLogger(quiet).setLevel(logging.WARNING)
    before = stages(aws)
    new, old = holder(before, "AWSCURRENT"), holder(before, "AWSPREVIOUS")
    target = catalog.name("api-key")
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(ConfigRollback.run, request(target), id=f"rollback-config-{target}",
                                                    task_queue=worker.task_queue)
        result: RollbackStatus = await handle.result()
        history = (await handle.fetch_history()).to_json()
    assert result.phase.value == "succeeded", result.message
    assert steps(result) == {"Identify previous version": "succeeded", "Approval": "succeeded",
                             "Move AWSCURRENT to previous version": "succeeded", "Verify secret stages": "succeeded",
                             "Redeploy consumers": "succeeded", "Validate rollback": "skipped",
                             "Monitor post-rollback": "skipped", "Report": "succeeded"}
    assert (result.from_version, result.to_version) == (new, old)
    after = stages(aws)
    assert holder(after, "AWSCURRENT") == old and holder(after, "AWSPREVIOUS") == new
    sm = aws.client("secretsmanager")
    current = sm.get_secret_value(SecretId=API_KEY_SECRET, VersionStage="AWSCURRENT")
    assert (current["VersionId"], current["SecretString"]) == (old, API_KEY_OLD)
    assert {c.name: (c.ok, c.value) for c in result.checks} == {
        "AWSCURRENT (describe-secret)": (True, old), "AWSCURRENT (list-secret-version-ids)": (True, old),
        "AWSCURRENT (get-secret-value --version-stage AWSCURRENT)": (True, old), "AWSPREVIOUS": (True, new)}
    assert aws.faults.calls["UpdateSecretVersionStage"] == 1
    assert aws.faults.calls["UpdateService"] == 1  # the consumer api-service, forced to re-read it
    status_json = result.model_dump_json()
    logs = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert any("AWSCURRENT of rastup/prod/api-key moved" in r.getMessage() for r in caplog.records)  # logs were seen
    for value in (API_KEY_OLD, API_KEY_NEW):
        assert value not in status_json and value not in history and value not in logs


async def test_secret_explicit_unknown_version_changes_nothing(ts_env, aws, catalog):
    before = stages(aws)
    with pytest.raises(WorkflowFailureError) as excinfo:
        await run(ts_env, catalog, request(catalog.name("api-key"), to_version="not-a-version"))
    msg = failure_text(excinfo)
    assert "to_version 'not-a-version' is not a version of secret rastup/prod/api-key (versions: " in msg
    assert "nothing was changed" in msg
    assert stages(aws) == before and aws.faults.calls["UpdateSecretVersionStage"] == 0


@pytest.mark.parametrize("target,to_version,expect", [
    ("app-settings", "9", "to_version '9' is not a hosted configuration version of app-settings "
                          "(versions: 2, 1); nothing was changed"),
    ("app-settings", "2", "version 2 is already deployed to production; nothing to roll back"),
    ("app-settings", "v1", "to_version 'v1' is not an AppConfig hosted configuration version number"),
    ("nope", None, "config 'nope' is not in the catalog (known: "),
])
async def test_bad_appconfig_input_fails_clearly_and_changes_nothing(ts_env, aws, catalog, target, to_version, expect):
    name = catalog.name(target) if target != "nope" else target
    with pytest.raises(WorkflowFailureError) as excinfo:
        await run(ts_env, catalog, request(name, to_version=to_version), wid=new_id())
    assert expect in failure_text(excinfo)
    assert aws.faults.calls["StartDeployment"] == 0
    assert [d["ConfigurationVersion"] for d in AppConfigState(aws).deployments(SETTINGS_PROFILE)] == ["2", "1"]


async def test_dry_run_plans_the_runbook_command_and_changes_nothing(ts_env, aws, catalog):
    result = await run(ts_env, catalog, request(catalog.name("api-key"), dry_run=True))
    assert result.phase.value == "planned"
    assert any(p.startswith("aws secretsmanager update-secret-version-stage --secret-id rastup/prod/api-key "
                            "--version-stage AWSCURRENT --remove-from-version-id ") for p in result.plan)
    assert aws.faults.calls["UpdateSecretVersionStage"] == 0 and aws.faults.calls["UpdateService"] == 0


def test_sandbox_configuration_seeds_once(aws):
    state = AppConfigState(aws)

    def inventory() -> tuple:
        return (state.versions("feature-flags"), state.versions(SETTINGS_PROFILE),
                [d["DeploymentNumber"] for d in state.ac.list_deployments(ApplicationId=state.app,
                                                                          EnvironmentId=state.env)["Items"]],
                sorted(stages(aws).items()))

    before = inventory()
    assert before[:3] == ([1], [1, 2], [3, 2, 1])
    seed_config(aws.endpoint_url)
    assert inventory() == before
