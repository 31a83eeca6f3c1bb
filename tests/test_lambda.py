"""LambdaRollback behaviour: the alias goes back to the right version and is verified, bad
targets fail clearly without touching the alias, routing steps happen in order, a fleet needs
one approval, a failing check between steps pauses. Time-skipping server; moto behind it
(the sandbox's rastup-search-indexer: published versions 1..4, production on 4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml
from temporalio.client import WorkflowFailureError

from common.catalog import Catalog
from common.models import Decision, LambdaRollbackInput, RollbackStatus
from sandbox.lambda_fleet import ALIAS, FUNCTION, catalog_entry, ensure_function, seed_lambda
from tests.conftest import RunCatalog, id_token, in_process_worker
from tests.helpers import bad_metric, failure_text, new_id, status_of, wait_for, wait_phase
from workflows.lambda_fn import LambdaRollback

OTHER = "rastup-thumbnailer"  # a second function, for the fleet form


def request(**kw) -> LambdaRollbackInput:
    fields = dict(severity="SEV-2", requested_by="dana", reason="errors after release 4")
    fields.update(kw)
    fields.setdefault("id_token", id_token(fields["requested_by"]))  # proven, as starter.py sends it
    return LambdaRollbackInput(**fields)


def use_functions(catalog: RunCatalog, entries: dict[str, dict]) -> None:
    """Put Lambda functions in this test's catalog, under per-test names (catalog.name(key))."""
    catalog.data["functions"] = {catalog.name(k): v for k, v in entries.items()}
    Catalog.model_validate(catalog.data)
    catalog.path.write_text(yaml.safe_dump(catalog.data, sort_keys=False))


@pytest.fixture()
def indexer(catalog: RunCatalog) -> str:
    """The catalog name of the sandbox function (smoke invocation on)."""
    use_functions(catalog, {FUNCTION: catalog_entry()})
    return catalog.name(FUNCTION)


def alias(aws, function: str = FUNCTION) -> tuple[str, dict]:
    a = aws.client("lambda").get_alias(FunctionName=function, Name=ALIAS)
    return a["FunctionVersion"], (a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}



def steps(s: RollbackStatus) -> dict[str, str]:
    return {st.name: st.state.value for st in s.steps}


async def test_alias_goes_back_to_the_previous_version_and_is_verified(ts_env, aws, catalog, indexer):
    assert alias(aws) == ("4", {})
    async with in_process_worker(ts_env.client, catalog) as worker:
        result: RollbackStatus = await ts_env.client.execute_workflow(
            LambdaRollback.run, request(function=indexer), id=f"rollback-lambda-{indexer}",
            task_queue=worker.task_queue)
    assert result.phase.value == "succeeded", result.message
    assert alias(aws) == ("3", {})
    assert (result.kind, result.target, result.from_version, result.to_version) == ("lambda", indexer, "4", "3")
    assert steps(result) == {
        "List function versions": "succeeded", "Approval": "succeeded",
        "Update alias to previous version": "succeeded", "Verify": "succeeded",
        "Monitor post-rollback": "succeeded", "Report": "succeeded"}
    verify = next(st for st in result.steps if st.name == "Verify").detail
    assert "rastup-search-indexer:production on version 3" in verify and "invoked" in verify
    assert "status 200" in verify
    listing = next(st for st in result.steps if st.name == "List function versions").detail
    assert "published 1..4" in listing and "below 4" in listing
    assert result.checks and all(c.ok for c in result.checks)  # monitoring: alias still on 3


async def test_explicit_to_version(ts_env, aws, catalog, indexer):
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(
            LambdaRollback.run, request(function=indexer, to_version="1", monitor_minutes=5),
            id=new_id(), task_queue=worker.task_queue)
    assert result.phase.value == "succeeded", result.message
    assert alias(aws) == ("1", {})
    assert result.to_version == "1"


async def test_unknown_version_fails_listing_versions_and_leaves_the_alias(ts_env, aws, catalog, indexer):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            LambdaRollback.run, request(function=indexer, to_version="9"), id=new_id(),
            task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
        s = await status_of(handle)
    msg = failure_text(excinfo)
    assert "to_version '9' is not a published version of rastup-search-indexer" in msg
    assert "published versions: 1, 2, 3, 4" in msg and "was not changed" in msg
    assert alias(aws) == ("4", {})
    assert s.phase.value == "failed"
    assert steps(s)["Approval"] == "pending" and steps(s)["List function versions"] == "failed"


@pytest.mark.parametrize("case", ["not in catalog", "not in aws", "no such alias"])
async def test_unknown_function_or_alias_fails_clearly(ts_env, aws, catalog, indexer, case):
    if case == "not in catalog":
        req, expect = request(function="nope"), f"function 'nope' is not in the catalog (known: {indexer})"
    elif case == "not in aws":
        use_functions(catalog, {FUNCTION: catalog_entry(), "ghost": {"function_name": "rastup-ghost"}})
        req = request(function=catalog.name("ghost"))
        expect = "Lambda function 'rastup-ghost' not found (functions in this account and region: " \
                 "rastup-search-indexer)"
    else:
        req, expect = request(function=indexer, alias="staging"), \
            "alias 'staging' of Lambda function 'rastup-search-indexer' not found (its aliases: production)"
    async with in_process_worker(ts_env.client, catalog) as worker:
        with pytest.raises(WorkflowFailureError) as excinfo:
            await ts_env.client.execute_workflow(LambdaRollback.run, req, id=new_id(), task_queue=worker.task_queue)
    assert expect in failure_text(excinfo)
    assert alias(aws) == ("4", {})


async def test_routing_steps_shift_traffic_in_order_then_clear_the_routing(ts_env, aws, catalog, indexer):
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            LambdaRollback.run, request(function=indexer, routing_steps=[50, 100]), id=new_id(),
            task_queue=worker.task_queue)
        await wait_for(handle, lambda s: s.extra.get("routing_percentage") == 50, what="first step")
        assert alias(aws) == ("4", {"3": 0.5})  # half the traffic on 3, primary still 4
        result: RollbackStatus = await handle.result()
    assert result.phase.value == "succeeded", result.message
    assert alias(aws) == ("3", {})
    assert [(r["percent"], r["aliases"][indexer]) for r in result.extra["routing"]] == [
        (50, {"function_version": "4", "weights": {"3": 0.5}}),
        (100, {"function_version": "3", "weights": {}})]
    shifts = [e for e in result.events if e.what.startswith("routing:")]
    assert [e.what.split("%")[0] for e in shifts] == ["routing: 50", "routing: 100"]
    assert (shifts[1].at - shifts[0].at) >= timedelta(minutes=5)  # the policy's wait between steps


@pytest.mark.parametrize("routing_steps", [None, [50, 100]], ids=["at-once", "in-steps"])
async def test_fleet_rolls_back_every_function_with_one_approval(ts_env, aws, catalog, indexer, routing_steps):
    ensure_function(aws.client("lambda"), aws.client("iam"), OTHER, versions=3)  # production on 3
    use_functions(catalog, {FUNCTION: catalog_entry(), OTHER: {"function_name": OTHER}})
    names = [catalog.name(FUNCTION), catalog.name(OTHER)]
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            LambdaRollback.run, request(functions=names, severity="SEV-1", routing_steps=routing_steps), id=new_id(),
            task_queue=worker.task_queue)
        s = await wait_phase(handle, "awaiting_approval")
        assert s.target == ",".join(sorted(names))
        assert "version 4 to 3" in s.approvals.context and "version 3 to 2" in s.approvals.context
        # a single-function rollback of a fleet member is refused while the fleet holds it
        single = await ts_env.client.execute_workflow(
            LambdaRollback.run, request(function=names[1]), id=new_id(), task_queue=worker.task_queue)
        assert single.phase.value == "refused" and handle.id in single.message
        await handle.signal(LambdaRollback.approve, Decision(approver="alice", id_token=id_token("alice")))
        result: RollbackStatus = await handle.result()
    assert result.phase.value == "succeeded", result.message
    assert alias(aws) == ("3", {}) and alias(aws, OTHER) == ("2", {})
    assert [r.approver for r in result.approvals.received] == ["alice"]
    assert {n: v for n, v in steps(result).items() if n.startswith("Update alias")} == {
        f"Update alias to previous version: {names[0]}": "succeeded",
        f"Update alias to previous version: {names[1]}": "succeeded"}
    assert {c.name for c in result.checks} == {f"{names[0]}: alias", f"{names[1]}: alias"}
    if routing_steps:  # both aliases move together, step by step
        assert [(r["percent"], r["aliases"]) for r in result.extra["routing"]] == [
            (50, {names[0]: {"function_version": "4", "weights": {"3": 0.5}},
                  names[1]: {"function_version": "3", "weights": {"2": 0.5}}}),
            (100, {names[0]: {"function_version": "3", "weights": {}},
                   names[1]: {"function_version": "2", "weights": {}}})]


async def test_failing_metric_between_routing_steps_pauses_and_holds(ts_env, aws, catalog):
    metric = {"name": "error_rate", "kind": "error_rate", "namespace": "Rastup/Lambda", "metric": "ErrorRate",
              "dimensions": {"FunctionName": FUNCTION, "Version": "{version}"}, "baseline": 0.2, "unit": "%"}
    use_functions(catalog, {FUNCTION: {**catalog_entry(), "metrics": [metric]}})
    bad_metric(aws, "Rastup/Lambda", "ErrorRate", 9.0, {"FunctionName": FUNCTION, "Version": "3"})
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow(
            LambdaRollback.run, request(function=catalog.name(FUNCTION), routing_steps=[50, 100]),
            id=new_id(), task_queue=worker.task_queue)
        await wait_for(handle, lambda s: s.extra.get("routing_percentage") == 50, what="first step")
        await ts_env.sleep(timedelta(minutes=6))  # the wait before the next step passes
        s = await wait_phase(handle, "paused", timeout=60)
        assert "error_rate" in s.approvals.context and "held at 50%" in s.approvals.context
        await handle.signal(LambdaRollback.reject, Decision(approver="dana", id_token=id_token("dana"),
                                                            reason="look first"))
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
    assert "stopped at 50%" in failure_text(excinfo)
    assert alias(aws) == ("4", {"3": 0.5})  # held where it was, not moved back


async def test_dry_run_plans_and_changes_nothing(ts_env, aws, catalog, indexer):
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(
            LambdaRollback.run, request(function=indexer, dry_run=True, routing_steps=[25, 100]),
            id=new_id(), task_queue=worker.task_queue)
    assert result.phase.value == "planned"
    assert any("--function-version 4 --routing-config 'AdditionalVersionWeights={3=0.25}'" in p
               for p in result.plan)
    assert any("--function-version 3 --routing-config 'AdditionalVersionWeights={}'" in p for p in result.plan)
    assert alias(aws) == ("4", {})
    assert steps(result)["Update alias to previous version"] == "skipped"


@pytest.mark.parametrize("bad,expect", [
    ({"functions": ["a"]}, "not both"),
    ({"routing_steps": [50, 70]}, "end at 100"),
    ({"to_version": "$LATEST"}, "not a published version"),
])
async def test_bad_input_fails_at_once(ts_env, aws, catalog, indexer, bad, expect):
    raw = {"function": indexer, "severity": "SEV-2", "requested_by": "dana", "reason": "errors", **bad}
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow("LambdaRollback", raw, id=new_id(), task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
    assert expect in failure_text(excinfo)
    assert alias(aws) == ("4", {})


def test_sandbox_function_seeds_once_and_invokes_without_docker(aws):
    lam = aws.client("lambda")

    def inventory() -> tuple:
        versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=FUNCTION)["Versions"]]
        return versions, alias(aws), len(aws.client("iam").list_roles()["Roles"])

    before = inventory()
    assert before[:2] == (["$LATEST", "1", "2", "3", "4"], ("4", {}))
    seed_lambda(aws.endpoint_url)
    assert inventory() == before
    answer = lam.invoke(FunctionName=FUNCTION, Qualifier=ALIAS, Payload=b'{"query": "x"}')
    assert answer["StatusCode"] == 200 and "FunctionError" not in answer
