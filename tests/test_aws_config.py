"""AWS configuration errors are classified where they happen (client creation included): a step with no
region, or an unknown profile, fails at once as non-retryable with the fix, instead of being retried for
10 minutes. Real dev server (real time, so a retry loop would show), moto behind the worker."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from common.models import ServiceRollbackInput
from tests.conftest import in_process_worker
from tests.helpers import failure_text, new_id, running_revision
from workflows.service import ServiceRollback


@pytest.mark.parametrize("env,expect", [
    # the case: only AWS_REGION set (boto3 reads AWS_DEFAULT_REGION)
    ({"AWS_REGION": "eu-west-1"}, "no AWS region: AWS_REGION=eu-west-1 is set, but boto3 reads AWS_DEFAULT_REGION; "
                                  "set AWS_DEFAULT_REGION=eu-west-1"),
    ({"AWS_PROFILE": "no-such-profile"}, "The config profile (no-such-profile) could not be found: AWS_PROFILE names a "
                                         "profile the worker's ~/.aws/config"),
])
async def test_a_misconfigured_worker_fails_the_step_at_once_with_the_fix(dev_env, aws, catalog, monkeypatch,
                                                                          env, expect):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    if "AWS_PROFILE" in env:
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    request = ServiceRollbackInput(service=catalog.api, severity="SEV-2", requested_by="dana", reason="errors")
    async with in_process_worker(dev_env.client, catalog) as worker:
        handle = await dev_env.client.start_workflow(ServiceRollback.run, request, id=new_id(),
                                                     task_queue=worker.task_queue)
        with pytest.raises(WorkflowFailureError) as excinfo:
            # well under the 10 minutes a retried step takes, and the first retry's backoff would show
            await asyncio.wait_for(handle.result(), 20)
    attempts = [e.activity_task_started_event_attributes.attempt async for e in handle.fetch_history_events()
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts, default=1) == 1  # no step was retried (a short read may be a local activity: no event)
    err = excinfo.value.cause
    while err is not None and not isinstance(err, ApplicationError):
        err = err.cause
    assert err is not None and err.non_retryable, err  # typed as not worth retrying, wherever it ran
    assert "AwsConfigError: ecs client: " + expect in failure_text(excinfo)
    assert "Nothing was changed by this call" in failure_text(excinfo)
    monkeypatch.undo()  # this test's own boto3 needs the environment back
    assert running_revision(aws) == (43, "v1.2.3")
