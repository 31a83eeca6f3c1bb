"""Temporal as the outside system: starting a rollback from a workflow (the auto-rollback check),
through the same API and one-per-target rule as the CLI and the alert receiver. The start is signed
with the worker's automation key, so the policy's automation_may_proceed can trust who asked."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from common.api import BadRequest, Rollbacks, Started
from common.models import AutoRollbackReport, Evidence


class StartOrJoin(BaseModel):
    kind: str
    fields: dict[str, Any]
    evidence: Evidence
    not_before: datetime | None = None


class RollbackStartActivities:
    def __init__(self, client: Client, task_queue: str, catalog_path: Path,
                 automation_key: SecretStr | None = None) -> None:
        self._api = Rollbacks(client, task_queue, catalog_path, automation_key=automation_key, via="auto-rollback")

    @activity.defn
    async def start_or_join_rollback(self, req: StartOrJoin) -> Started:
        """Start the target's rollback or add the evidence to the running one (never two).
        A retry after a lost answer joins the rollback the first attempt started."""
        try:
            return await self._api.start_or_join(req.kind, req.fields, req.evidence, not_before=req.not_before)
        except BadRequest as e:
            raise ApplicationError(str(e), type="InvalidRequest", non_retryable=True) from None

    @activity.defn
    async def previous_check(self, task_queue: str) -> AutoRollbackReport | None:
        """The newest completed auto-rollback check's report on this task queue (so that a decline is
        announced once, not every 5 minutes)."""
        newest = None
        async for run in self._api.client.list_workflows(
                f"WorkflowType = 'AutoRollbackCheck' AND TaskQueue = '{task_queue}' AND ExecutionStatus = 'Completed'",
                limit=10):
            if run.close_time and (newest is None or run.close_time > newest.close_time):
                newest = run
        if newest is None:
            return None
        handle = self._api.client.get_workflow_handle(newest.id, run_id=newest.run_id, result_type=AutoRollbackReport)
        return await handle.result()
