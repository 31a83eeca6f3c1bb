"""Secrets Manager: pointing a connection secret at another host. Values never leave this module."""

from __future__ import annotations

import json

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call


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
