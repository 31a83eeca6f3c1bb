"""FrontendRollback against moto's S3 and CloudFront and the sandbox's /site/ endpoint."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from common.models import FrontendRollbackInput
from sandbox.frontend_fleet import SITE_BUCKET, release_files
from tests.conftest import id_token, in_process_worker
from tests.helpers import failure_text, new_id
from workflows.frontend import FrontendRollback


def req(cat, **kw) -> FrontendRollbackInput:
    fields = dict(site=cat.name("web"), strategy="release_sync", to_release="v1.2.2", severity="SEV-2",
                  requested_by="dana", reason="checkout page broken in v1.2.3", monitor_minutes=10)
    fields.update(kw)
    fields.setdefault("id_token", id_token(fields["requested_by"]))  # proven, as starter.py sends it
    return FrontendRollbackInput(**fields)


def live_files(aws) -> dict[str, str]:
    s3 = aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=SITE_BUCKET).get("Contents", [])]
    return {k: s3.get_object(Bucket=SITE_BUCKET, Key=k)["Body"].read().decode() for k in keys}


async def test_release_sync_makes_the_bucket_equal_the_release_and_a_rerun_changes_nothing(ts_env, aws, catalog):
    assert "v1.2.3" in httpx.get(f"{aws.http_base}/site/").text
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(FrontendRollback.run, req(catalog), id=new_id(),
                                                      task_queue=worker.task_queue)
        assert result.phase.value == "succeeded", result.message
        assert live_files(aws) == release_files("v1.2.2")  # new-feature.js is gone, the rest is v1.2.2's
        assert result.extra["plan"]["to_copy"] == 3 and result.extra["plan"]["to_delete"] == 1
        assert "v1.2.2" in httpx.get(f"{aws.http_base}/site/").text
        steps = {s.name: s.state.value for s in result.steps}
        assert steps["Wait for invalidation"] == "succeeded" and steps["Verify"] == "succeeded"
        assert aws.faults.calls["CreateInvalidation"] == 1

        copies = aws.faults.calls["CopyObject"]
        again = await ts_env.client.execute_workflow(FrontendRollback.run, req(catalog), id=new_id(),
                                                     task_queue=worker.task_queue)
    assert again.phase.value == "succeeded"
    assert again.extra["applied"] == {"copied": 0, "deleted": 0, "resumed_after": None}
    assert aws.faults.calls["CopyObject"] == copies and aws.faults.calls["DeleteObject"] == 1


def put_release(aws, release: str, extra: dict[str, str]) -> None:
    s3 = aws.client("s3")
    for key, body in {**release_files("v1.2.3"), **extra}.items():
        s3.put_object(Bucket=SITE_BUCKET, Key=key, Body=body.replace("v1.2.3", release).encode())


@pytest.mark.parametrize("exact", [False, True])
async def test_object_versions_restores_the_point_in_time(ts_env, aws, catalog, exact):
    time.sleep(1.1)  # S3 times have one-second resolution
    restore_to = datetime.now(timezone.utc)
    time.sleep(1.1)
    put_release(aws, "v1.2.4", {"v124-only.js": "console.log(1)"})
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(
            FrontendRollback.run, req(catalog, strategy="object_versions", to_release=None, restore_to=restore_to,
                                      exact=exact), id=new_id(), task_queue=worker.task_queue)
    assert result.phase.value == "succeeded", result.message
    files = live_files(aws)
    expected = release_files("v1.2.3")
    assert {k: files[k] for k in expected} == expected
    assert ("v124-only.js" in files) is (not exact)  # newer objects removed only on an exact restore
    assert "v1.2.3" in httpx.get(f"{aws.http_base}/site/").text


async def test_invalidation_created_once_across_retries_and_awaited(ts_env, aws, catalog):
    aws.faults.inject("CreateInvalidation", "lost-answer")
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(FrontendRollback.run, req(catalog), id=new_id(),
                                                      task_queue=worker.task_queue)
    assert result.phase.value == "succeeded"
    cf = aws.client("cloudfront")
    items = cf.list_invalidations(DistributionId=aws.fleet.distribution_id)["InvalidationList"].get("Items") or []
    assert len(items) == 1 and items[0]["Id"] == result.extra["invalidation_id"]
    assert aws.faults.calls["GetInvalidation"] >= 1


@pytest.mark.parametrize("fields,expect", [
    ({"site": "nope"}, "site 'nope' is not in the catalog"),
    ({"to_release": "v0.0.1"}, "no such release"),
    ({"strategy": "object_versions", "to_release": None}, "needs restore_to"),
    ({"strategy": "object_versions", "to_release": None, "restore_to": "2025-11-18T14:00:00Z",
      "keys": ["missing.js"]}, "no such object(s)"),
])
async def test_bad_input_is_refused_clearly_and_nothing_changes(ts_env, aws, catalog, fields, expect):
    raw = {"site": catalog.name("web"), "strategy": "release_sync", "to_release": "v1.2.2", "severity": "SEV-2",
           "requested_by": "dana", "reason": "x", **fields}
    raw = {k: v for k, v in raw.items() if v is not None}
    before = live_files(aws)
    async with in_process_worker(ts_env.client, catalog) as worker:
        handle = await ts_env.client.start_workflow("FrontendRollback", raw, id=new_id(), task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            await handle.result()
    assert expect in failure_text(excinfo)
    assert live_files(aws) == before and aws.faults.calls["CopyObject"] == 0


async def test_dry_run_shows_the_plan(ts_env, aws, catalog):
    async with in_process_worker(ts_env.client, catalog) as worker:
        result = await ts_env.client.execute_workflow(FrontendRollback.run, req(catalog, dry_run=True), id=new_id(),
                                                      task_queue=worker.task_queue)
    assert result.phase.value == "planned"
    assert result.plan[0].startswith("3 object(s) to copy") and "delete new-feature.js" in result.plan
    assert aws.faults.calls["CopyObject"] == 0 and "v1.2.3" in httpx.get(f"{aws.http_base}/site/").text


async def test_the_status_names_the_live_release_it_rolls_back_from(ts_env, aws, catalog):
    """Issue 14: the status said 'version: ? -> v1.2.2'; the plan reads which release the live bucket serves."""
    async with in_process_worker(ts_env.client, catalog) as worker:
        planned = await ts_env.client.execute_workflow(FrontendRollback.run, req(catalog, dry_run=True), id=new_id(),
                                                       task_queue=worker.task_queue)
        assert (planned.from_version, planned.to_version) == ("v1.2.3", "v1.2.2")
        done = await ts_env.client.execute_workflow(FrontendRollback.run, req(catalog), id=new_id(),
                                                    task_queue=worker.task_queue)
        assert done.phase.value == "succeeded", done.message
        assert (done.from_version, done.to_version) == ("v1.2.3", "v1.2.2")

        # a hotfix no release prefix matches: the status says how old the live site is, never '?'
        time.sleep(1.1)  # S3 times have one-second resolution
        restore_to = datetime.now(timezone.utc)
        time.sleep(1.1)
        put_release(aws, "v1.2.4", {})
        newest = max(o["LastModified"] for o in aws.client("s3").list_objects_v2(Bucket=SITE_BUCKET)["Contents"])
        hotfix = await ts_env.client.execute_workflow(
            FrontendRollback.run, req(catalog, strategy="object_versions", to_release=None, restore_to=restore_to,
                                      dry_run=True), id=new_id(), task_queue=worker.task_queue)
    assert hotfix.from_version == f"live as of {newest:%Y-%m-%d %H:%M:%S} UTC", hotfix.from_version
