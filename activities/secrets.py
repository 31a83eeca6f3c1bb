"""Secrets Manager: pointing a connection secret at another host, and moving AWSCURRENT between
versions (runbook section 3: update-secret-version-stage). Values never leave this module: the
stage activities read version ids and stages only, and drop any value an answer carries."""

from __future__ import annotations

import json

from datetime import datetime

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call
from activities.known_good import Verdict, per_version


class PointSecret(BaseModel):
    secret_id: str
    host_key: str
    host: str
    port: int | None = None


class SecretsActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    def _current(self, secret_id: str) -> dict:
        # VersionStage explicitly: moto returns the wrong version without it (PLATFORM.md).
        with aws_call(f"secretsmanager get-secret-value {secret_id}"):
            raw = self._aws("secretsmanager").get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
        try:
            value = json.loads(raw["SecretString"])
        except (KeyError, ValueError):
            raise ApplicationError(f"secret {secret_id} is not a JSON object; cannot change its host",
                                   non_retryable=True, type="InvalidRequest") from None
        if not isinstance(value, dict):
            raise ApplicationError(f"secret {secret_id} is not a JSON object", non_retryable=True,
                                   type="InvalidRequest")
        return value

    @activity.defn
    def point_secret_at(self, req: PointSecret) -> bool:
        """Write a new AWSCURRENT version with the host changed. Idempotent: False if it already was."""
        value = self._current(req.secret_id)
        if value.get(req.host_key) == req.host and (req.port is None or value.get("port") == req.port):
            return False
        value[req.host_key] = req.host
        if req.port is not None and "port" in value:
            value["port"] = req.port
        with aws_call(f"secretsmanager put-secret-value {req.secret_id}"):
            self._aws("secretsmanager").put_secret_value(SecretId=req.secret_id, SecretString=json.dumps(value))
        activity.logger.info("secret %s now points at %s", req.secret_id, req.host)
        return True


class SecretVersion(BaseModel):
    version_id: str
    stages: list[str] = Field(default_factory=list)
    created: datetime | None = None
    verdict: Verdict | None = None  # what rollbacks found (tags of the secret, activities/known_good.py)


class SecretStages(BaseModel):
    """Where a secret's stages are, read three ways (no value, ever)."""

    secret_id: str
    versions: list[SecretVersion] = Field(default_factory=list, description="newest first")
    current: str | None = Field(None, description="AWSCURRENT per describe-secret")
    previous: str | None = Field(None, description="AWSPREVIOUS per describe-secret")
    listed_current: str | None = Field(None, description="AWSCURRENT per list-secret-version-ids")
    served_current: str | None = Field(
        None, description="the VersionId get-secret-value --version-stage AWSCURRENT answers with")


class MoveCurrent(BaseModel):
    secret_id: str
    from_version: str
    to_version: str


def _stage_holder(stages: dict[str, list[str]], stage: str) -> str | None:
    return next((v for v, s in stages.items() if stage in s), None)


class SecretStageActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    def _not_found(self, secret_id: str, e: ClientError) -> ApplicationError | None:
        if e.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            return None
        return ApplicationError(f"secret {secret_id!r} not found in Secrets Manager; fix secret_id in the catalog",
                                type="NotFound", non_retryable=True)

    @activity.defn
    def secret_stages(self, secret_id: str) -> SecretStages:
        sm = self._aws("secretsmanager")
        with aws_call(f"secretsmanager describe-secret {secret_id}"):
            try:
                described = sm.describe_secret(SecretId=secret_id)
            except ClientError as e:
                raise self._not_found(secret_id, e) or e
        stages = described.get("VersionIdsToStages") or {}
        verdicts = per_version({t["Key"]: t["Value"] for t in described.get("Tags") or []})
        listed: list[dict] = []
        with aws_call(f"secretsmanager list-secret-version-ids {secret_id}"):
            kwargs: dict = dict(SecretId=secret_id, IncludeDeprecated=True)
            while True:  # boto3 has no paginator for it
                page = sm.list_secret_version_ids(**kwargs)
                listed += page.get("Versions", [])
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
        with aws_call(f"secretsmanager get-secret-value {secret_id} --version-stage AWSCURRENT"):
            # VersionStage explicitly: moto returns the wrong version without it (PLATFORM.md).
            answer = sm.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
            served = answer["VersionId"]
            answer.clear()  # the value goes no further than this line
        versions = sorted((SecretVersion(version_id=v["VersionId"], stages=v.get("VersionStages") or [],
                                         created=v.get("CreatedDate"), verdict=verdicts.get(v["VersionId"]))
                           for v in listed),
                          key=lambda v: v.created or datetime.min, reverse=True)
        return SecretStages(secret_id=secret_id, versions=versions, current=_stage_holder(stages, "AWSCURRENT"),
                            previous=_stage_holder(stages, "AWSPREVIOUS"),
                            listed_current=next((v.version_id for v in versions if "AWSCURRENT" in v.stages), None),
                            served_current=served)

    @activity.defn
    def move_current(self, req: MoveCurrent) -> bool:
        """Move AWSCURRENT from ``from_version`` to ``to_version``. Idempotent: False if it already
        was there; refuses if someone else moved it elsewhere meanwhile."""
        sm = self._aws("secretsmanager")
        with aws_call(f"secretsmanager describe-secret {req.secret_id}"):
            stages = sm.describe_secret(SecretId=req.secret_id).get("VersionIdsToStages") or {}
        now = _stage_holder(stages, "AWSCURRENT")
        if now == req.to_version:
            return False
        if now != req.from_version:
            raise ApplicationError(
                f"AWSCURRENT of {req.secret_id} is on version {now}, not {req.from_version} as planned: someone "
                "else changed the secret meanwhile; nothing was moved. Start the rollback again to plan afresh.",
                type="InvalidRequest", non_retryable=True)
        with aws_call(f"secretsmanager update-secret-version-stage {req.secret_id}"):
            sm.update_secret_version_stage(SecretId=req.secret_id, VersionStage="AWSCURRENT",
                                           RemoveFromVersionId=req.from_version, MoveToVersionId=req.to_version)
        activity.logger.info("AWSCURRENT of %s moved from %s to %s", req.secret_id, req.from_version, req.to_version)
        return True
