"""Last known good, and automation that never cascades (issue 10).

- A version a rollback left as bad is never the default target again (service, Lambda): the
  verdicts are AWS tags any tool can read; the status explains the choice; a person may still
  name any version.
- Automation (the 5-minute check, alerts) never rolls a target back further on its own: a
  cooldown after an automatic rollback, never past the version automation returned it to, and a
  decline that is in the check's result and announced in #incidents once. Dev server.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import yaml
from pydantic import SecretStr
from temporalio.client import Client

from common.api import workflow_id
from common.catalog import Catalog
from common.models import AutoRollbackCheckInput, AutoRollbackReport, RollbackStatus
from common.settings import Settings
from sandbox.lambda_fleet import ALIAS, FUNCTION, catalog_entry, ensure_function
from tests.conftest import FAST_POLICY, RunCatalog, in_process_worker, proven, write_catalog
from tests.helpers import bad_metric, new_id, running_revision
from tests.support.recorder import Recorder
from worker import build_worker

BASE = proven({"severity": "SEV-2", "requested_by": "dana", "reason": "errors after the release"})


def tags(aws, arn: str) -> dict[str, str]:
    return {t["key"]: t["value"] for t in aws.client("ecs").list_tags_for_resource(resourceArn=arn)["tags"]}


def deploy_new_release(aws, version: str) -> str:
    """What a deploy pipeline does: a new task-definition revision of api-service on ``version``."""
    ecs = aws.client("ecs")
    td = ecs.describe_task_definition(taskDefinition="api-service:43")["taskDefinition"]
    containers = [{**c, "image": c["image"].rsplit(":", 1)[0] + f":{version}"} for c in td["containerDefinitions"]]
    arn = ecs.register_task_definition(family=td["family"], containerDefinitions=containers)["taskDefinition"][
        "taskDefinitionArn"]
    ecs.update_service(cluster="rastup-prod", service="api-service", taskDefinition=arn)
    return arn


async def test_a_service_version_left_as_bad_is_never_the_default_target_again(ts_env, aws, catalog):
    # Before: after v1.2.3 was rolled back and v1.2.4 deployed, rolling back v1.2.4 picked v1.2.3 again.
    td = "arn:aws:ecs:us-east-1:123456789012:task-definition/api-service:{}".format
    async with in_process_worker(ts_env.client, catalog) as worker:
        first: RollbackStatus = await ts_env.client.execute_workflow(
            "ServiceRollback", {"service": catalog.api, "monitor_minutes": 5, **BASE}, id=new_id(),
            task_queue=worker.task_queue, result_type=RollbackStatus)
        assert first.phase.value == "succeeded" and first.to_version == "v1.2.2"
        # any tool can see it: the task definitions carry the verdicts
        assert tags(aws, td(43))["rollback-verdict"].startswith("bad ")
        assert tags(aws, td(42))["rollback-verdict"].startswith("good ")
        assert first.workflow_id in tags(aws, td(42))["rollback-verdict"]

        deploy_new_release(aws, "v1.2.4")
        assert running_revision(aws) == (44, "v1.2.4")
        second: RollbackStatus = await ts_env.client.execute_workflow(
            "ServiceRollback", {"service": catalog.api, "monitor_minutes": 5, **BASE}, id=new_id(),
            task_queue=worker.task_queue, result_type=RollbackStatus)
        assert (second.from_version, second.to_version) == ("v1.2.4", "v1.2.2"), second.message
        identify = next(st for st in second.steps if st.name == "Identify previous stable version").detail
        assert "target: v1.2.2 (revision 42): v1.2.2 (revision 42): restored and verified on " in identify
        assert "v1.2.3 (revision 43): rolled back from on " in identify and "skipped" in identify
        assert running_revision(aws) == (42, "v1.2.2")

        # a person may still name any version explicitly
        named: RollbackStatus = await ts_env.client.execute_workflow(
            "ServiceRollback", {"service": catalog.api, "to_version": "v1.2.3", "dry_run": True, **BASE},
            id=new_id(), task_queue=worker.task_queue, result_type=RollbackStatus)
    assert named.phase.value == "planned" and named.to_version == "v1.2.3"


async def test_a_lambda_version_left_as_bad_is_never_the_default_target_again(ts_env, aws, catalog):
    name = catalog.name(FUNCTION)
    catalog.data["functions"] = {name: catalog_entry()}
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    lam = aws.client("lambda")
    async with in_process_worker(ts_env.client, catalog) as worker:
        first: RollbackStatus = await ts_env.client.execute_workflow(
            "LambdaRollback", {"function": name, "monitor_minutes": 5, **BASE}, id=new_id(),
            task_queue=worker.task_queue, result_type=RollbackStatus)
        assert (first.from_version, first.to_version) == ("4", "3"), first.message
        arn = lam.get_function(FunctionName=FUNCTION)["Configuration"]["FunctionArn"]
        function_tags = lam.list_tags(Resource=arn)["Tags"]
        assert function_tags["rollback-verdict-4"].startswith("bad ")
        assert function_tags["rollback-verdict-3"].startswith("good ")

        ensure_function(lam, aws.client("iam"), FUNCTION, 5)  # release 5 is published ...
        lam.update_alias(FunctionName=FUNCTION, Name=ALIAS, FunctionVersion="5")  # ... and deployed
        second: RollbackStatus = await ts_env.client.execute_workflow(
            "LambdaRollback", {"function": name, "monitor_minutes": 5, **BASE}, id=new_id(),
            task_queue=worker.task_queue, result_type=RollbackStatus)
    assert (second.from_version, second.to_version) == ("5", "3"), second.message
    listing = next(st for st in second.steps if st.name == "List function versions").detail
    assert "target 3 (version 3: restored and verified on " in listing
    assert "version 4: rolled back from on " in listing
    assert lam.get_alias(FunctionName=FUNCTION, Name=ALIAS)["FunctionVersion"] == "3"


# --- automation never cascades -----------------------------------------------------------------------

async def check(client: Client, task_queue: str) -> AutoRollbackReport:
    return await client.execute_workflow("AutoRollbackCheck", AutoRollbackCheckInput(),
                                         id=f"auto-rollback-check-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
                                         result_type=AutoRollbackReport)


def set_policy(catalog: RunCatalog, **policy) -> None:
    catalog.data["policy"].update(policy)
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))


def unhealthy(aws, version: str, rate: float = 9.0) -> None:
    """A cause outside the code: the good version errs too."""
    bad_metric(aws, "Rastup/API", "ErrorRate", rate, {"Service": "api", "Version": version})


async def test_the_auto_rollback_check_never_cascades(dev_env, aws, tmp_path):
    # Before: with v1.2.2 also unhealthy, the next check rolled v1.2.2 back to v1.1.41, and so on, nobody asked.
    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "monitor_minutes": 0.05})
    slack = Recorder().start()
    settings = Settings(ROLLBACK_SLACK_WEBHOOK_URL=SecretStr(f"{slack.url}/slack"))
    wid = workflow_id("service", catalog.api)

    def declined() -> list[str]:
        return [r.body["text"] for r in slack.at("/slack") if r.body["text"].startswith("Auto-rollback DECLINED")]

    try:
        async with build_worker(dev_env.client, settings, catalog.path, task_queue=f"tq-{uuid.uuid4().hex[:8]}") \
                as worker:
            first = (await check(dev_env.client, worker.task_queue)).services[0]
            assert first.outcome == "started"
            s = RollbackStatus.model_validate(await asyncio.wait_for(
                dev_env.client.get_workflow_handle(wid).result(), 60))
            assert s.phase.value == "succeeded" and running_revision(aws) == (42, "v1.2.2")

            unhealthy(aws, "v1.2.2")
            second = (await check(dev_env.client, worker.task_queue)).services[0]
            assert (second.outcome, second.version) == ("declined", "v1.2.2"), second.detail
            assert "automation returned " + catalog.api + " to v1.2.2 (revision 42): restored and verified" \
                in second.detail
            assert "automation never rolls a service back further on its own: a person decides" in second.detail
            assert second.announced
            third = (await check(dev_env.client, worker.task_queue)).services[0]
            assert third.outcome == "declined" and not third.announced
            assert "(announced in #incidents by an earlier check)" in third.detail
            assert len(declined()) == 1 and "a person decides" in declined()[0]
            assert running_revision(aws) == (42, "v1.2.2")  # never further back

            # a new release, bad too, right after: the 5-minute reading may still cover the last rollback
            # (not_before), and the cooldown after an automatic rollback holds too: only a person may act
            deploy_new_release(aws, "v1.2.4")
            unhealthy(aws, "v1.2.4")
            fourth = (await check(dev_env.client, worker.task_queue)).services[0]
            assert (fourth.outcome, fourth.version) == ("handled", "v1.2.4"), fourth.detail
            assert f"not started again: {wid} ended (succeeded)" in fourth.detail
            # a 3-second reading that starts after the rollback ended, with fresh data in it (a loaded machine
            # can take longer than a shorter window between writing the datapoint and the check reading it)
            set_policy(catalog, metric_window_minutes=0.05)
            await asyncio.sleep(3.2)
            unhealthy(aws, "v1.2.4")
            window = (await check(dev_env.client, worker.task_queue)).services[0]
            assert window.outcome == "declined", window.detail  # a reading past the rollback: the cooldown holds
            assert "within policy.auto_rollback_cooldown_minutes (60)" in window.detail
            assert "only a person can start another" in window.detail
            assert running_revision(aws) == (44, "v1.2.4")
            assert s.automatic  # the status says automation started it
    finally:
        slack.stop()


async def test_alerts_never_cascade_a_lambda_rollback(dev_env, aws, tmp_path):
    from tests.test_receiver import BEARER, alertmanager as alertmanager_payload, serving

    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "monitor_minutes": 0.05})
    name = catalog.name(FUNCTION)
    catalog.data["functions"] = {name: catalog_entry()}
    catalog.data["alert_rules"] = [{"name": "lambda-errors", "match": {"alertname": "LambdaErrors"}, "kind": "lambda",
                                    "input": {"function": "{labels.function}"}}]
    catalog.data["policy"]["automation_may_proceed"] = ["alertmanager:lambda-errors"]  # proceeds without people
    Catalog.model_validate(catalog.data)
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    lam = aws.client("lambda")

    def alert(starts: datetime) -> dict:  # from Alertmanager itself: the generic endpoint cannot speak as it
        return alertmanager_payload(name, alertname="LambdaErrors", starts_at=starts, function=name)

    async with in_process_worker(dev_env.client, catalog) as worker, \
            serving(dev_env.client, catalog, worker.task_queue) as url, httpx.AsyncClient() as http:
        answer = (await http.post(f"{url}/alerts/alertmanager", json=alert(datetime.now(timezone.utc)),
                                  headers=BEARER)).json()["results"][0]
        assert answer["outcome"] == "started"
        h = dev_env.client.get_workflow_handle(answer["workflow_id"])
        assert RollbackStatus.model_validate(await asyncio.wait_for(h.result(), 60)).phase.value == "succeeded"
        assert lam.get_alias(FunctionName=FUNCTION, Name=ALIAS)["FunctionVersion"] == "3"

        # version 3 errs too; a new alert (it began after the rollback ended): within the cooldown, declined
        answer = (await http.post(f"{url}/alerts/alertmanager", json=alert(datetime.now(timezone.utc)),
                                  headers=BEARER)).json()["results"][0]
        assert answer["outcome"] == "declined", answer
        assert "only a person can start another" in answer["message"]

        set_policy(catalog, auto_rollback_cooldown_minutes=0)  # no cooldown: the rollback itself refuses
        answer = (await http.post(f"{url}/alerts/alertmanager", json=alert(datetime.now(timezone.utc) +
                                                                        timedelta(seconds=1)),
                                  headers=BEARER)).json()["results"][0]
        assert answer["outcome"] == "started"
        refused = RollbackStatus.model_validate(await asyncio.wait_for(
            dev_env.client.get_workflow_handle(answer["workflow_id"]).result(), 60))
        assert refused.phase.value == "refused", refused.message
        assert f"automation already returned {name} to {FUNCTION} version 3: restored and verified" in refused.message
    assert lam.get_alias(FunctionName=FUNCTION, Name=ALIAS)["FunctionVersion"] == "3"  # never further back


async def test_the_check_judges_only_what_actually_serves(dev_env, aws, tmp_path):
    # Before: with blue/green traffic split 50/50, the check judged one side's version as "the deployed one"
    # and rolled back a service whose traffic was a mix of versions.
    catalog = write_catalog(tmp_path, aws, {**FAST_POLICY, "monitor_minutes": 0.05})
    catalog.data["services"][catalog.api]["auto_rollback"] = False
    catalog.data["services"][catalog.api_bg]["auto_rollback"] = True
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))
    f = aws.fleet
    aws.client("elbv2").modify_listener(ListenerArn=f.listener_arn, DefaultActions=[{
        "Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": f.blue_target_group_arn, "Weight": 50},
            {"TargetGroupArn": f.green_target_group_arn, "Weight": 50}]}}])
    async with in_process_worker(dev_env.client, catalog) as worker:
        result = (await check(dev_env.client, worker.task_queue)).services[0]
    assert (result.service, result.outcome) == (catalog.api_bg, "not_checked"), result.detail
    assert "traffic is split (api-service-blue 50, api-service-green 50)" in result.detail
    assert "a mix of versions, so it is not judged now" in result.detail
    assert aws.faults.changes() == {"ModifyListener": 1}  # ours, above: nothing else
