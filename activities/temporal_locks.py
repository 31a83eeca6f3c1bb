"""Temporal itself as an outside system: the per-target lock that keeps two rollbacks of
the same target from acting at once, whatever workflow ids they were started with.

The lock is a tiny ``TargetLock`` workflow whose id is the lock name: Temporal's own
"one running workflow per id" rule makes acquiring it atomic.
"""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode


class LockHolder(BaseModel):
    workflow_id: str
    run_id: str
    description: str = ""


class LockRequest(BaseModel):
    lock_id: str
    holder: LockHolder


class LockResult(BaseModel):
    acquired: bool
    holder: LockHolder | None = None  # who holds it when not acquired


class LockActivities:
    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue

    @activity.defn
    async def acquire_lock(self, req: LockRequest) -> LockResult:
        """Try once to take the lock; idempotent for the same holder run."""
        for _ in range(3):
            try:
                await self._client.start_workflow(
                    "TargetLock", req.holder, id=req.lock_id, task_queue=self._task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    memo={"holder": req.holder.model_dump()},
                )
                return LockResult(acquired=True)
            except WorkflowAlreadyStartedError:
                lock = self._client.get_workflow_handle(req.lock_id)
                try:
                    memo = await (await lock.describe()).memo()
                except RPCError as e:
                    if e.status == RPCStatusCode.NOT_FOUND:
                        continue
                    raise
                holder = LockHolder.model_validate(memo["holder"])
                if holder.run_id == req.holder.run_id:
                    return LockResult(acquired=True)  # our own lock: an earlier attempt took it
                if await self._running(holder):
                    return LockResult(acquired=False, holder=holder)
                # The holder ended without releasing (e.g. terminated): the lock is stale.
                activity.logger.warning("breaking stale lock %s held by %s", req.lock_id, holder.workflow_id)
                try:
                    await lock.terminate(reason=f"holder {holder.workflow_id} has ended")
                except RPCError:
                    pass
        raise RuntimeError(f"could not settle lock {req.lock_id}; retrying")

    async def _running(self, holder: LockHolder) -> bool:
        try:
            desc = await self._client.get_workflow_handle(holder.workflow_id, run_id=holder.run_id).describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return desc.status == WorkflowExecutionStatus.RUNNING

    @activity.defn
    async def holder_running(self, holder: LockHolder) -> bool:
        return await self._running(holder)
