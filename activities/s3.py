"""S3: the frontend's objects (runbook section 6: S3 version rollback, sync from a release).

Plans are computed from listings (paginated); the apply activities re-check each object
before changing it, heartbeat their progress, and resume from the last heartbeat after a
worker crash, so a retried rollback copies only what still differs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Iterator

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call

CHUNK = 100  # objects per heartbeat
CONCURRENCY = 16


class SyncRequest(BaseModel):
    """Make ``bucket`` equal to ``source_bucket/source_prefix`` (aws s3 sync --delete)."""

    source_bucket: str
    source_prefix: str
    bucket: str
    dry_run: bool = False


class VersionRequest(BaseModel):
    """Restore each object to the version that was current at ``restore_to``."""

    bucket: str
    restore_to: datetime
    keys: list[str] | None = None  # None: every object of the site
    exact: bool = False  # also delete objects created after restore_to
    dry_run: bool = False


class ObjectRef(BaseModel):
    bucket: str
    key: str


class Plan(BaseModel):
    to_copy: int
    to_delete: int
    bytes: int
    unchanged: int
    sample: list[str]  # a few "copy key" / "delete key" lines for people


class LiveRequest(BaseModel):
    """Which release the live bucket serves: the ``versions_bucket`` prefix it equals, if any."""

    bucket: str
    versions_bucket: str | None = None


class Live(BaseModel):
    release: str | None = None  # the release prefix (without "/") whose objects equal the live bucket's
    last_modified: datetime | None = None  # the newest object of the live bucket


class Applied(BaseModel):
    copied: int
    deleted: int
    resumed_after: str | None = None


def _pages(client: Any, op: str, **kw: Any) -> Iterator[dict]:
    yield from client.get_paginator(op).paginate(**kw)


class S3Activities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    # --- release sync ----------------------------------------------------------------

    def _objects(self, bucket: str, prefix: str = "") -> dict[str, tuple[str, int]]:
        s3 = self._aws("s3")
        out: dict[str, tuple[str, int]] = {}
        with aws_call(f"s3 list-objects-v2 s3://{bucket}/{prefix}"):
            for page in _pages(s3, "list_objects_v2", Bucket=bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    out[o["Key"][len(prefix):]] = (o["ETag"], o["Size"])
        return out

    def _sync_diff(self, req: SyncRequest) -> tuple[list[tuple[str, int]], list[str], int]:
        prefix = req.source_prefix if req.source_prefix.endswith("/") else req.source_prefix + "/"
        release = self._objects(req.source_bucket, prefix)
        if not release:
            raise ApplicationError(f"s3://{req.source_bucket}/{prefix} is empty or does not exist: no such release",
                                   non_retryable=True, type="NotFound")
        live = self._objects(req.bucket)
        copy = sorted((k, size) for k, (etag, size) in release.items() if live.get(k) != (etag, size))
        delete = sorted(k for k in live if k not in release)
        return copy, delete, len(release) - len(copy)

    @activity.defn
    def plan_release_sync(self, req: SyncRequest) -> Plan:
        copy, delete, same = self._sync_diff(req)
        return Plan(to_copy=len(copy), to_delete=len(delete), bytes=sum(s for _, s in copy), unchanged=same,
                    sample=[f"copy {k}" for k, _ in copy[:10]] + [f"delete {k}" for k in delete[:10]])

    @activity.defn
    def live_release(self, req: LiveRequest) -> Live:
        """Read-only: the release the site serves now, the one a rollback moves away from."""
        s3 = self._aws("s3")
        live: dict[str, tuple[str, int]] = {}
        newest: datetime | None = None
        with aws_call(f"s3 list-objects-v2 s3://{req.bucket}"):
            for page in _pages(s3, "list_objects_v2", Bucket=req.bucket):
                for o in page.get("Contents", []):
                    live[o["Key"]] = (o["ETag"], o["Size"])
                    newest = max(newest, o["LastModified"]) if newest else o["LastModified"]
        if not req.versions_bucket or not live:
            return Live(last_modified=newest)
        releases: dict[str, dict[str, tuple[str, int]]] = {}
        with aws_call(f"s3 list-objects-v2 s3://{req.versions_bucket}"):  # one listing, grouped by prefix
            for page in _pages(s3, "list_objects_v2", Bucket=req.versions_bucket):
                for o in page.get("Contents", []):
                    release, _, key = o["Key"].partition("/")
                    if key:
                        releases.setdefault(release, {})[key] = (o["ETag"], o["Size"])
        match = [r for r, objects in releases.items() if objects == live]
        return Live(release=max(match) if match else None, last_modified=newest)

    @activity.defn
    def apply_release_sync(self, req: SyncRequest) -> Applied:
        s3 = self._aws("s3")
        prefix = req.source_prefix if req.source_prefix.endswith("/") else req.source_prefix + "/"
        done_until: str | None = (activity.info().heartbeat_details or [None])[0]
        copy, delete, _ = self._sync_diff(req)
        work = [("copy", k) for k, _ in copy] + [("delete", k) for k in delete]
        if done_until is not None:
            work = [w for w in work if f"{w[0]}:{w[1]}" > done_until]

        def one(item: tuple[str, str]) -> None:
            action, key = item
            if action == "copy":
                with aws_call(f"s3 copy-object s3://{req.bucket}/{key}"):
                    s3.copy_object(Bucket=req.bucket, Key=key,
                                   CopySource={"Bucket": req.source_bucket, "Key": prefix + key})
            else:
                with aws_call(f"s3 delete-object s3://{req.bucket}/{key}"):
                    s3.delete_object(Bucket=req.bucket, Key=key)

        copied = deleted = 0
        work.sort(key=lambda w: f"{w[0]}:{w[1]}")  # the heartbeat's order
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            for i in range(0, len(work), CHUNK):
                chunk = work[i:i + CHUNK]
                list(pool.map(one, chunk))
                copied += sum(1 for a, _ in chunk if a == "copy")
                deleted += sum(1 for a, _ in chunk if a == "delete")
                last = chunk[-1]
                activity.heartbeat(f"{last[0]}:{last[1]}")
        return Applied(copied=copied, deleted=deleted, resumed_after=done_until)

    # --- object versions -------------------------------------------------------------

    def _version_actions(self, req: VersionRequest) -> tuple[list[tuple[str, str | None, int]], int]:
        """(key, version to restore or None to delete, size) for each object that must change."""
        s3 = self._aws("s3")
        history: dict[str, list[dict]] = {}
        with aws_call(f"s3 list-object-versions s3://{req.bucket}"):
            for page in _pages(s3, "list_object_versions", Bucket=req.bucket):
                # S3 lists each key's versions newest first; "order" keeps that for same-second ties
                for i, v in enumerate(page.get("Versions", [])):
                    history.setdefault(v["Key"], []).append({**v, "marker": False, "order": -i})
                for i, m in enumerate(page.get("DeleteMarkers", [])):
                    history.setdefault(m["Key"], []).append({**m, "marker": True, "Size": 0, "order": -i})
        if req.keys:
            missing = [k for k in req.keys if k not in history]
            if missing:
                raise ApplicationError(f"no such object(s) in s3://{req.bucket}: {', '.join(missing)}",
                                       non_retryable=True, type="NotFound")
        actions, unchanged = [], 0
        for key in sorted(req.keys or history):
            versions = sorted(history[key], key=lambda v: (v["LastModified"], v.get("IsLatest", False), v["order"]))
            latest = versions[-1]
            then = [v for v in versions if v["LastModified"] <= req.restore_to]
            wanted = then[-1] if then else None
            if wanted is None or wanted["marker"]:  # did not exist then
                if req.exact and not latest["marker"]:
                    actions.append((key, None, 0))
                else:
                    unchanged += 1
            elif wanted["VersionId"] == latest["VersionId"] or (
                    not latest["marker"] and latest.get("ETag") == wanted.get("ETag")):
                unchanged += 1
            else:
                actions.append((key, wanted["VersionId"], wanted["Size"]))
        return actions, unchanged

    @activity.defn
    def plan_object_versions(self, req: VersionRequest) -> Plan:
        actions, same = self._version_actions(req)
        copies = [(k, v, s) for k, v, s in actions if v]
        deletes = [k for k, v, _ in actions if v is None]
        return Plan(to_copy=len(copies), to_delete=len(deletes), bytes=sum(s for _, _, s in copies),
                    unchanged=same,
                    sample=[f"restore {k} (version {v})" for k, v, _ in copies[:10]] + [f"delete {k}" for k in
                                                                                      deletes[:10]])

    @activity.defn
    def apply_object_versions(self, req: VersionRequest) -> Applied:
        s3 = self._aws("s3")
        actions, _ = self._version_actions(req)  # re-planned: what is already restored is skipped
        copied = deleted = 0
        for i, (key, version, _) in enumerate(actions):
            if version:
                with aws_call(f"s3 copy-object s3://{req.bucket}/{key}?versionId={version}"):
                    s3.copy_object(Bucket=req.bucket, Key=key,
                                   CopySource={"Bucket": req.bucket, "Key": key, "VersionId": version})
                copied += 1
            else:
                with aws_call(f"s3 delete-object s3://{req.bucket}/{key}"):
                    s3.delete_object(Bucket=req.bucket, Key=key)
                deleted += 1
            if i % CHUNK == 0:
                activity.heartbeat(key)
        return Applied(copied=copied, deleted=deleted)

    @activity.defn
    def read_object(self, where: ObjectRef) -> str:
        """The object's body as text (index.html), to compare with what the site serves."""
        with aws_call(f"s3 get-object s3://{where.bucket}/{where.key}"):
            body = self._aws("s3").get_object(Bucket=where.bucket, Key=where.key)["Body"].read()
        return body.decode("utf-8", "replace")
