"""Lambda: published versions, an alias (its version and routing weights), and invocations.

Runbook section 5: ``aws lambda list-versions-by-function``, ``update-alias``, ``get-alias``.
A function or alias that does not exist is a non-retryable ``NotFound`` naming what does.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call
from activities.batch import Failed, each
from activities.known_good import Verdict, per_version, read_tags

SHOWN = 20  # names listed in a NotFound message; the rest are counted


class FunctionRef(BaseModel):
    function_name: str
    alias: str = "production"


class FunctionVersion(BaseModel):
    version: str  # "1", "2", ...: published versions are numbered per function from 1
    description: str = ""
    last_modified: str = ""
    code_sha256: str = ""
    verdict: Verdict | None = None  # what rollbacks found (activities/known_good.py)
    arn: str = Field("", exclude=True)  # the function's unqualified ARN (for its tags)


class AliasState(BaseModel):
    function_name: str
    alias: str
    function_version: str  # the primary version ("$LATEST" is possible, but not for a rollback)
    weights: dict[str, float] = Field(default_factory=dict, description="AdditionalVersionWeights")


class AliasTarget(BaseModel):
    """Where the alias should point: its primary version plus extra versions' traffic shares."""

    function_name: str
    alias: str
    function_version: str
    weights: dict[str, float] = Field(default_factory=dict, description="empty: no routing (all primary)")


class Invocation(BaseModel):
    function_name: str
    qualifier: str  # the alias (or a version)
    payload: dict | list | None = None


class InvokeResult(BaseModel):
    status_code: int
    function_error: str | None = None
    executed_version: str | None = None
    payload: str = ""  # the answer, cut to 1000 characters


class Functions(BaseModel):
    """A fleet's functions for one batch activity, ``at_once`` at a time (policy.fleet_concurrency)."""

    refs: list[FunctionRef]
    at_once: int = 16


class Aliases(BaseModel):
    """A fleet's aliases to point (each ``point_function_alias``), ``at_once`` at a time."""

    targets: list[AliasTarget]
    at_once: int = 16


class Found(BaseModel):
    """One function of a fleet: its published versions and alias, or why they could not be read."""

    versions: list[FunctionVersion] = Field(default_factory=list)
    arn: str = ""  # the function's ARN (unqualified), for its tags
    alias: AliasState | None = None
    failed: Failed | None = None


def _missing(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") == "ResourceNotFoundException"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN]) or "none"
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _state(a: dict[str, Any], function_name: str) -> AliasState:
    weights = (a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return AliasState(function_name=function_name, alias=a["Name"], function_version=a["FunctionVersion"],
                      weights={str(k): float(v) for k, v in weights.items()})


class LambdaActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    # --- what exists (for NotFound messages) -----------------------------------------

    def _function_names(self) -> list[str]:
        with aws_call("lambda list-functions"):
            pages = self._aws("lambda").get_paginator("list_functions").paginate()
            return sorted(f["FunctionName"] for page in pages for f in page.get("Functions", []))

    def _no_function(self, name: str) -> ApplicationError:
        return ApplicationError(
            f"Lambda function {name!r} not found (functions in this account and region: "
            f"{_names(self._function_names())}); fix function_name in the catalog",
            type="NotFound", non_retryable=True)

    def _alias_names(self, name: str) -> list[str]:
        with aws_call(f"lambda list-aliases {name}"):
            try:
                pages = self._aws("lambda").get_paginator("list_aliases").paginate(FunctionName=name)
                return sorted(a["Name"] for page in pages for a in page.get("Aliases", []))
            except ClientError as e:
                if _missing(e):
                    raise self._no_function(name) from None
                raise

    def _published(self, name: str) -> list[FunctionVersion]:
        versions: list[FunctionVersion] = []
        with aws_call(f"lambda list-versions-by-function {name}"):
            try:
                pages = self._aws("lambda").get_paginator("list_versions_by_function").paginate(FunctionName=name)
                for page in pages:
                    versions += [FunctionVersion(version=v["Version"], description=v.get("Description", ""),
                                                 last_modified=v.get("LastModified", ""),
                                                 code_sha256=v.get("CodeSha256", ""),
                                                 arn=v.get("FunctionArn", "").rsplit(":", 1)[0])
                                 for v in page.get("Versions", [])]
            except ClientError as e:
                if _missing(e):
                    raise self._no_function(name) from None
                raise
        if not versions:  # real Lambda always lists $LATEST; moto answers [] for a missing function
            raise self._no_function(name)
        return versions

    # --- activities ------------------------------------------------------------------

    @activity.defn
    def list_function_versions(self, function_name: str) -> list[FunctionVersion]:
        """The function's published versions, newest first ($LATEST left out: not a release), with
        the verdicts rollbacks recorded (tags on the function)."""
        published = self._published(function_name)
        lam = self._aws("lambda")
        arn = next((v.arn for v in published if v.arn), "")
        verdicts = per_version(read_tags(function_name, lambda: lam.list_tags(Resource=arn).get("Tags") or {})
                               if arn else {})
        versions = [v.model_copy(update={"verdict": verdicts.get(v.version)}) for v in published
                    if v.version.isdigit()]
        return sorted(versions, key=lambda v: int(v.version), reverse=True)

    @activity.defn
    def get_function_alias(self, ref: FunctionRef) -> AliasState:
        with aws_call(f"lambda get-alias {ref.function_name} {ref.alias}"):
            try:
                a = self._aws("lambda").get_alias(FunctionName=ref.function_name, Name=ref.alias)
            except ClientError as e:
                if not _missing(e):
                    raise
                known = self._alias_names(ref.function_name)  # NotFound for the function itself
                raise ApplicationError(
                    f"alias {ref.alias!r} of Lambda function {ref.function_name!r} not found "
                    f"(its aliases: {_names(known)}); pass alias= with one of them",
                    type="NotFound", non_retryable=True) from None
        return _state(a, ref.function_name)

    @activity.defn
    def point_function_alias(self, to: AliasTarget) -> bool:
        """Point the alias at a version with these routing weights. Idempotent: returns False
        (and calls nothing) when it already is so."""
        now = self.get_function_alias(FunctionRef(function_name=to.function_name, alias=to.alias))
        if now.function_version == to.function_version and now.weights == to.weights:
            activity.logger.info("alias %s:%s already on %s %s; nothing to do", to.function_name, to.alias,
                                 to.function_version, to.weights)
            return False
        with aws_call(f"lambda update-alias {to.function_name} {to.alias} --function-version {to.function_version}"):
            try:
                # An empty AdditionalVersionWeights clears the routing: all traffic on the primary.
                self._aws("lambda").update_alias(
                    FunctionName=to.function_name, Name=to.alias, FunctionVersion=to.function_version,
                    RoutingConfig={"AdditionalVersionWeights": to.weights})
            except ClientError as e:
                if not _missing(e):
                    raise
                published = [v.version for v in self.list_function_versions(to.function_name)]
                raise ApplicationError(
                    f"version {to.function_version} (or {', '.join(to.weights) or 'no other'}) of "
                    f"{to.function_name!r} not found (published: {_names(sorted(published, key=int))})",
                    type="NotFound", non_retryable=True) from None
        activity.logger.info("alias %s:%s now on %s %s", to.function_name, to.alias, to.function_version, to.weights)
        return True

    # --- a fleet: one activity for all its functions (activities/batch.py) ---------------------

    @activity.defn
    def identify_functions(self, req: Functions) -> list[Found]:
        """For each function: its published versions (with verdicts) and its alias, as
        ``list_function_versions`` and ``get_function_alias``; one that cannot be found says so."""
        def one(ref: FunctionRef) -> Found:
            versions = self.list_function_versions(ref.function_name)
            return Found(versions=versions, arn=next((v.arn for v in versions if v.arn), ""),
                         alias=self.get_function_alias(ref))

        return [r if isinstance(r, Found) else Found(failed=r)
                for r in each(req.refs, one, req.at_once, label=lambda r: r.function_name)]

    @activity.defn
    def read_function_aliases(self, req: Functions) -> list[AliasState | Failed]:
        """Each alias as ``get_function_alias`` reads it, or why it could not be read."""
        return each(req.refs, self.get_function_alias, req.at_once, label=lambda r: r.function_name)

    @activity.defn
    def point_function_aliases(self, req: Aliases) -> list[bool | Failed]:
        """Each alias pointed as ``point_function_alias`` (idempotent: False where it already was)."""
        return each(req.targets, self.point_function_alias, req.at_once, label=lambda t: t.function_name)

    @activity.defn
    def invoke_function(self, inv: Invocation) -> InvokeResult:
        """One synchronous invocation (a smoke test): the answer, and whether the function errored."""
        body = json.dumps(inv.payload if inv.payload is not None else {}).encode()
        with aws_call(f"lambda invoke {inv.function_name}:{inv.qualifier}"):
            try:
                resp = self._aws("lambda").invoke(FunctionName=inv.function_name, Qualifier=inv.qualifier,
                                                  Payload=body)
            except ClientError as e:
                if _missing(e):
                    raise ApplicationError(f"cannot invoke {inv.function_name}:{inv.qualifier}: not found",
                                           type="NotFound", non_retryable=True) from None
                raise
            payload = resp["Payload"].read().decode("utf-8", "replace") if resp.get("Payload") else ""
        return InvokeResult(status_code=resp.get("StatusCode", 0), function_error=resp.get("FunctionError"),
                            executed_version=resp.get("ExecutedVersion"), payload=payload[:1000])
