"""Resource locks: ``TargetLock`` (held by the one rollback acting on a resource, see
activities/temporal_locks.py) and the names of the resources procedures touch.

Every procedure names what it will touch with the functions below, so two procedures that
touch the same thing (a service rollback of ``api`` and a secret rollback that redeploys
``api-service``) name the same resource and never act at once.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.temporal_locks import LockActivities, LockHolder
    from common.catalog import EcsRef, FlagStoreConfig
    from workflows.options import QUICK, call

# How often a held lock checks that its holder still runs (a terminated holder cannot release).
HOLDER_CHECK = timedelta(minutes=5)


@workflow.defn(name="TargetLock", sandboxed=False)
class TargetLock:
    """Runs while its holder runs; ends on ``release`` or when the holder has ended.

    Outside the workflow sandbox: every rollback starts one per resource (200 for a 200-function fleet),
    and the sandbox re-imports the workflow modules for each new instance (~75 ms of CPU each on the
    project's machine). This loop has no clock, I/O or randomness of its own; replay tests cover it."""

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
                if workflow.info().is_continue_as_new_suggested():
                    # A holder may wait for days: a fresh history keeps this lock small (same id: still held).
                    workflow.continue_as_new(holder)
        return f"released by {holder.workflow_id}"


# --- what procedures touch, named once ------------------------------------------------------

def ecs_service(ref: EcsRef) -> str:
    return f"ecs service {ref.cluster}/{ref.service}"


def listener(arn: str) -> str:
    return f"load balancer listener {arn}"


def rds_instance(name: str) -> str:
    return f"rds instance {name}"


def database(name: str) -> str:
    return f"database {name}"


def secret(secret_id: str) -> str:
    return f"secret {secret_id}"


def dns_record(zone: str, name: str) -> str:
    return f"dns record {zone}/{name}"


def appconfig_profile(application: str, environment: str, profile: str) -> str:
    """A flag store and a configuration profile: one deployment at a time per environment."""
    return f"appconfig {application}/{environment}/{profile}"


def flag_store(store: FlagStoreConfig) -> str:
    """A flag store writes and deploys all its flags together: the store is the resource."""
    return appconfig_profile(store.application, store.environment, store.profile)


def bucket(name: str) -> str:
    return f"s3 bucket {name}"


def lambda_function(name: str) -> str:
    return f"lambda function {name}"


def stack(repository: str, directory: str) -> str:
    return f"terraform stack {repository}#{directory}"
