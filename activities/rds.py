"""RDS: instances and snapshots (runbook "Unsafe Rollback": restore to a NEW instance).

The original instance is only ever described, never modified or deleted.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call


class Instance(BaseModel):
    id: str
    status: str
    instance_class: str
    multi_az: bool
    host: str | None = None
    port: int | None = None
    engine: str = ""


class Snapshot(BaseModel):
    id: str
    instance: str
    created: datetime
    type: str  # "manual" | "automated" | ...
    status: str


class SnapshotQuery(BaseModel):
    instance: str
    include_automatic: bool = False


class RestoreRequest(BaseModel):
    snapshot_id: str
    new_instance: str
    instance_class: str
    multi_az: bool


def _instance(d: dict) -> Instance:
    ep = d.get("Endpoint") or {}
    return Instance(id=d["DBInstanceIdentifier"], status=d.get("DBInstanceStatus", ""),
                    instance_class=d.get("DBInstanceClass", ""), multi_az=bool(d.get("MultiAZ")),
                    host=ep.get("Address"), port=ep.get("Port"), engine=d.get("Engine", ""))


class RdsActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    def _find(self, instance_id: str) -> Instance | None:
        rds = self._aws("rds")
        try:
            resp = rds.describe_db_instances(DBInstanceIdentifier=instance_id)
        except rds.exceptions.DBInstanceNotFoundFault:
            return None
        return _instance(resp["DBInstances"][0])

    @activity.defn
    def describe_instance(self, instance_id: str) -> Instance:
        with aws_call(f"rds describe-db-instances {instance_id}"):
            found = self._find(instance_id)
        if found is None:
            raise ApplicationError(f"RDS instance {instance_id!r} not found; fix rds_instance in the catalog",
                                   non_retryable=True, type="NotFound")
        return found

    @activity.defn
    def find_instance(self, instance_id: str) -> Instance | None:
        with aws_call(f"rds describe-db-instances {instance_id}"):
            return self._find(instance_id)

    @activity.defn
    def list_snapshots(self, q: SnapshotQuery) -> list[Snapshot]:
        """Available snapshots of the instance, newest first; automatic ones only when asked."""
        rds = self._aws("rds")
        snaps: list[Snapshot] = []
        with aws_call(f"rds describe-db-snapshots {q.instance}"):
            for page in rds.get_paginator("describe_db_snapshots").paginate(DBInstanceIdentifier=q.instance):
                for s in page.get("DBSnapshots", []):
                    if "SnapshotCreateTime" not in s:
                        continue  # still being created
                    snaps.append(Snapshot(id=s["DBSnapshotIdentifier"], instance=s["DBInstanceIdentifier"],
                                          created=s["SnapshotCreateTime"], type=s.get("SnapshotType", ""),
                                          status=s.get("Status", "")))
        if not q.include_automatic:
            snaps = [s for s in snaps if s.type == "manual"]
        return sorted(snaps, key=lambda s: s.created, reverse=True)

    @activity.defn
    def restore_from_snapshot(self, req: RestoreRequest) -> Instance:
        """Create the new instance once: if it already exists (a retry after a crash), return it."""
        rds = self._aws("rds")
        with aws_call(f"rds describe-db-instances {req.new_instance}"):
            existing = self._find(req.new_instance)
        if existing is not None:
            activity.logger.info("%s already exists; not restoring again", req.new_instance)
            return existing
        with aws_call(f"rds restore-db-instance-from-db-snapshot {req.snapshot_id} -> {req.new_instance}"):
            try:
                resp = rds.restore_db_instance_from_db_snapshot(
                    DBInstanceIdentifier=req.new_instance, DBSnapshotIdentifier=req.snapshot_id,
                    DBInstanceClass=req.instance_class, MultiAZ=req.multi_az)
            except rds.exceptions.DBInstanceAlreadyExistsFault:
                # botocore's own retry after a lost answer: the first call did create it
                found = self._find(req.new_instance)
                if found is None:
                    raise
                return found
        activity.logger.info("restoring %s from %s", req.new_instance, req.snapshot_id)
        return _instance(resp["DBInstance"])
