"""Temporal itself as an outside system: the locks that keep two rollbacks from acting on the
same resource at once, whatever procedure or workflow id they were started with.

A lock is a tiny ``TargetLock`` workflow whose id names the resource: Temporal's own "one
running workflow per id" rule makes taking it atomic. A rollback names every resource it will
touch (an ECS service, an RDS instance, a secret, a flag store profile, a bucket, a function, a
stack: see ``workflows/lock.py``) and takes them all in one activity, all or nothing.

Lock ids are bounded whatever the names: ``rollback-lock-<readable prefix>-<digest>``, where the
digest covers the whole resource name and the task queue (one orchestrator deployment's locks).
"""

from __future__ import annotations

import asyncio
import hashlib
import re

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


class LocksRequest(BaseModel):
    resources: list[str]  # e.g. "ecs service rastup-prod/api-service" (workflows/lock.py names them)
    holder: LockHolder


class LocksResult(BaseModel):
    acquired: bool
    lock_ids: list[str] = []  # taken (all of them), when acquired
    resource: str = ""  # the resource someone else holds, when not acquired
    holder: LockHolder | None = None  # ... and who


AT_ONCE = 50  # lock workflows started concurrently: a 1000-function fleet takes its locks in seconds
READABLE = 40  # characters of the resource name kept readable in a lock id


def lock_id(resource: str, scope: str) -> str:
    """A bounded, readable lock id: the resource name's first characters plus a digest of all of it."""
    digest = hashlib.sha256(f"{scope}\n{resource}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^a-z0-9]+", "-", resource.lower()).strip("-")[:READABLE].strip("-")
    return f"rollback-lock-{slug}-{digest}"


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

    @activity.defn
    async def acquire_locks(self, req: LocksRequest) -> LocksResult:
        """Take the lock of every resource, or none: if one is held by a running rollback, the
        ones just taken are released and the answer names the holder. Idempotent for one holder run."""
        gate = asyncio.Semaphore(AT_ONCE)
        ids = {r: lock_id(r, self._task_queue) for r in dict.fromkeys(req.resources)}

        async def one(resource: str) -> tuple[str, LockResult]:
            async with gate:
                activity.heartbeat(resource)
                return resource, await self.acquire_lock(LockRequest(
                    lock_id=ids[resource], holder=req.holder.model_copy(
                        update={"description": f"{req.holder.description} ({resource})"})))

        results = await asyncio.gather(*(one(r) for r in ids))
        refused = [(r, res) for r, res in results if not res.acquired]
        taken = [ids[r] for r, res in results if res.acquired]
        if not refused:
            return LocksResult(acquired=True, lock_ids=taken)
        await self.release_locks(taken)
        resource, res = refused[0]
        return LocksResult(acquired=False, resource=resource, holder=res.holder)

    @activity.defn
    async def release_locks(self, lock_ids: list[str]) -> None:
        """Release locks (a lock whose holder has ended also frees itself)."""
        gate = asyncio.Semaphore(AT_ONCE)

        async def one(lid: str) -> None:
            async with gate:
                try:
                    await self._client.get_workflow_handle(lid).signal("release")
                except RPCError as e:
                    if e.status != RPCStatusCode.NOT_FOUND:  # already gone: nothing to release
                        activity.logger.warning("could not release %s: %s", lid, e.message)

        await asyncio.gather(*(one(lid) for lid in lock_ids))

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
