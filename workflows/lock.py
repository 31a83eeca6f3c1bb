"""``TargetLock``: held by the one rollback acting on a target (see activities/temporal_locks.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.temporal_locks import LockActivities, LockHolder
    from workflows.options import QUICK, call

# How often a held lock checks that its holder still runs (a terminated holder cannot release).
HOLDER_CHECK = timedelta(minutes=5)


@workflow.defn(name="TargetLock")
class TargetLock:
    """Runs while its holder runs; ends on ``release`` or when the holder has ended."""

    def __init__(self) -> None:
        self.released = False

    @workflow.signal
    def release(self) -> None:
        self.released = True

    @workflow.run
    async def run(self, holder: LockHolder) -> str:
        while not self.released:
            try:
                await workflow.wait_condition(lambda: self.released, timeout=HOLDER_CHECK)
            except asyncio.TimeoutError:
                if not await call(LockActivities.holder_running, holder, options=QUICK):
                    return f"holder {holder.workflow_id} ended without releasing"
        return f"released by {holder.workflow_id}"
