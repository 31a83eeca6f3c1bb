"""AWS AppConfig: applications, environments, hosted configuration versions, deployments, and
what the AppConfig Data plane serves (runbook section 3: ``aws appconfig start-deployment``).

Only the documented API through boto3 (the sandbox and tests put a stand-in for the parts moto
lacks in front of moto: ``sandbox/appconfig_standin.py``). The catalog names things by name or
id; ``resolve`` turns them into ids once. A name that does not exist is a non-retryable
``NotFound`` naming what does. The worker's IAM role needs appconfig:List*/Get*/
CreateHostedConfigurationVersion/StartDeployment and appconfig:StartConfigurationSession/
GetLatestConfiguration.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call
from activities.known_good import Verdict, appconfig_profile_arn, per_version, read_tags

FEATURE_FLAGS = "AWS.AppConfig.FeatureFlags"
DELIVERED = ("BAKING", "COMPLETE")  # served to every client (BAKING: AppConfig still watches alarms)
IN_PROGRESS = ("DEPLOYING", "BAKING", "VALIDATING", "ROLLING_BACK")
FAILED = ("ROLLED_BACK", "REVERTED")


class AppConfigRef(BaseModel):
    """Names or ids, as the catalog gives them."""

    application: str
    environment: str
    profile: str


class Resolved(BaseModel):
    application: str
    application_id: str
    environment: str
    environment_id: str
    profile: str
    profile_id: str
    profile_type: str = ""

    @property
    def where(self) -> str:
        return f"{self.application}/{self.environment}/{self.profile}"


class Deployment(BaseModel):
    number: int
    version: str
    state: str
    percent: float = 0.0
    profile_id: str | None = None
    strategy: str | None = None
    description: str = ""
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def delivered(self) -> bool:
        return self.state in DELIVERED and self.percent >= 100

    @property
    def failed(self) -> bool:
        return self.state in FAILED


class History(BaseModel):
    """An environment's deployments of one profile (newest first), and what blocks a new one."""

    resolved: Resolved
    deployments: list[Deployment] = Field(default_factory=list)
    latest_number: int = 0  # of the environment, any profile
    in_progress: Deployment | None = None  # of the environment, any profile (one at a time)
    verdicts: dict[str, Verdict] = Field(default_factory=dict, description="per version: what rollbacks found")
    profile_arn: str = ""  # where the verdicts are kept (tags of the profile)

    @property
    def current(self) -> Deployment | None:
        """The deployment whose version clients get: the newest delivered one."""
        return next((d for d in self.deployments if d.delivered), None)


class HostedVersion(BaseModel):
    version: int
    label: str | None = None
    description: str = ""
    content_type: str = ""
    sha256: str = ""
    size: int = 0


class VersionRef(BaseModel):
    resolved: Resolved
    version: int


class StartRequest(BaseModel):
    resolved: Resolved
    version: str
    strategy: str = Field(description="deployment strategy name or id")
    description: str
    token: str = Field(description="marks the deployment, so a retry finds the one it started")
    latest_number: int | None = Field(None, description="the environment's latest deployment number seen")


class DeploymentRef(BaseModel):
    resolved: Resolved
    number: int


class Served(BaseModel):
    """What AppConfig Data serves for the profile now (never the content itself: a digest)."""

    sha256: str
    size: int
    content_type: str = ""
    flags: dict[str, dict[str, Any]] | None = Field(
        None, description="feature-flag profiles: the retrieval-time form {flag: {enabled, attribute: value}}")


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _names(items: list[dict[str, Any]]) -> str:
    return ", ".join(sorted(i.get("Name", i.get("Id", "?")) for i in items)) or "none"


def _deployment(d: dict[str, Any]) -> Deployment:
    return Deployment(number=d["DeploymentNumber"], version=str(d.get("ConfigurationVersion", "")),
                      state=d.get("State", ""), percent=float(d.get("PercentageComplete") or 0),
                      profile_id=d.get("ConfigurationProfileId"), strategy=d.get("DeploymentStrategyId"),
                      description=d.get("Description") or "", started_at=d.get("StartedAt"),
                      completed_at=d.get("CompletedAt"))


def _missing(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") == "ResourceNotFoundException"


RESOLVED_TTL = 600.0  # seconds a name -> id answer is reused: a rollback's reads and writes, not days
RESOLVED_MAX = 256  # names -> ids remembered per worker (the oldest is forgotten first)


class AppConfigActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws
        self._resolved: OrderedDict[tuple[str, str, str], tuple[float, Resolved]] = OrderedDict()
        self._resolved_lock = threading.Lock()

    def resolve_cached(self, ref: AppConfigRef) -> Resolved:
        """``resolve``, reusing an answer of the last RESOLVED_TTL seconds: a kill switch's read, write,
        deploy, polls and verification look the names up once (they were 18 of its 34 AppConfig calls)."""
        now, key = time.monotonic(), (ref.application, ref.environment, ref.profile)
        with self._resolved_lock:
            hit = self._resolved.get(key)
            if hit is not None and now - hit[0] < RESOLVED_TTL:
                return hit[1]
        r = self.resolve(ref)
        with self._resolved_lock:
            self._resolved[key] = (now, r)
            self._resolved.move_to_end(key)
            while len(self._resolved) > RESOLVED_MAX:
                self._resolved.popitem(last=False)
        return r

    # --- names -> ids ----------------------------------------------------------------

    def _list(self, op: str, what: str, **kw: Any) -> list[dict[str, Any]]:
        with aws_call(f"appconfig {what}"):
            pages = self._aws("appconfig").get_paginator(op).paginate(**kw)
            return [item for page in pages for item in page.get("Items", [])]

    @staticmethod
    def _pick(items: list[dict[str, Any]], key: str, what: str, where: str, field: str) -> dict[str, Any]:
        found = [i for i in items if i.get("Id") == key] or [i for i in items if i.get("Name") == key]
        if not found:
            raise ApplicationError(f"AppConfig {what} {key!r} not found{where} (there: {_names(items)}); "
                                   f"fix {field} in the catalog", type="NotFound", non_retryable=True)
        if len(found) > 1:
            raise ApplicationError(f"AppConfig {what} name {key!r} is ambiguous{where} (ids: "
                                   f"{', '.join(i['Id'] for i in found)}); give the id in the catalog",
                                   type="NotFound", non_retryable=True)
        return found[0]

    @activity.defn
    def resolve(self, ref: AppConfigRef) -> Resolved:
        """The application, environment and profile the catalog names, as ids."""
        app = self._pick(self._list("list_applications", "list-applications"), ref.application,
                         "application", "", "application")
        env = self._pick(self._list("list_environments", f"list-environments {app['Name']}", ApplicationId=app["Id"]),
                         ref.environment, "environment", f" in application {app['Name']}", "environment")
        profile = self._pick(self._list("list_configuration_profiles", f"list-configuration-profiles {app['Name']}",
                                        ApplicationId=app["Id"]),
                             ref.profile, "configuration profile", f" in application {app['Name']}", "profile")
        return Resolved(application=app["Name"], application_id=app["Id"], environment=env["Name"],
                        environment_id=env["Id"], profile=profile["Name"], profile_id=profile["Id"],
                        profile_type=profile.get("Type") or "")

    @activity.defn
    def strategy_id(self, name_or_id: str) -> str:
        items = self._list("list_deployment_strategies", "list-deployment-strategies")
        return self._pick(items, name_or_id, "deployment strategy", "", "strategy")["Id"]

    # --- versions and deployments ----------------------------------------------------

    @activity.defn
    def history(self, r: Resolved) -> History:
        """The deployments, and the verdicts rollbacks recorded (tags of the profile)."""
        h = self.deployments(r)
        arn = appconfig_profile_arn(self._aws, r.application_id, r.profile_id)
        ac = self._aws("appconfig")
        h.verdicts = per_version(read_tags(arn, lambda: ac.list_tags_for_resource(ResourceArn=arn).get("Tags") or {}))
        h.profile_arn = arn
        return h

    def deployments(self, r: Resolved) -> History:
        items = self._list("list_deployments", f"list-deployments {r.environment}",
                           ApplicationId=r.application_id, EnvironmentId=r.environment_id)
        every = sorted((_deployment(i) for i in items), key=lambda d: d.number, reverse=True)
        return History(resolved=r, deployments=[d for d in every if d.profile_id == r.profile_id],
                       latest_number=every[0].number if every else 0,
                       in_progress=next((d for d in every if d.state in IN_PROGRESS), None))

    @activity.defn
    def hosted_versions(self, r: Resolved) -> list[int]:
        """The profile's hosted configuration version numbers, newest first."""
        items = self._list("list_hosted_configuration_versions", f"list-hosted-configuration-versions {r.profile}",
                           ApplicationId=r.application_id, ConfigurationProfileId=r.profile_id)
        return sorted((int(i["VersionNumber"]) for i in items), reverse=True)

    def content(self, ref: VersionRef) -> tuple[bytes, HostedVersion]:
        """A hosted version's content (for the flag store; never returned by an activity)."""
        r = ref.resolved
        with aws_call(f"appconfig get-hosted-configuration-version {r.profile} {ref.version}"):
            try:
                resp = self._aws("appconfig").get_hosted_configuration_version(
                    ApplicationId=r.application_id, ConfigurationProfileId=r.profile_id, VersionNumber=ref.version)
            except ClientError as e:
                if not _missing(e):
                    raise
                known = ", ".join(str(v) for v in self.hosted_versions(r)) or "none"
                raise ApplicationError(f"configuration version {ref.version} of {r.where} does not exist "
                                       f"(hosted versions: {known})", type="NotFound", non_retryable=True) from None
            body = resp["Content"].read()
        label = resp.get("VersionLabel")
        return body, HostedVersion(version=ref.version, label=None if label in (None, "None") else label,
                                   description=resp.get("Description") or "",
                                   content_type=resp.get("ContentType") or "",
                                   sha256=digest(body), size=len(body))

    def labelled_version(self, r: Resolved, label: str) -> int | None:
        """The hosted version carrying ``label`` (labels are unique per profile), if any."""
        with aws_call(f"appconfig list-hosted-configuration-versions {r.profile} --version-label {label}"):
            items = self._aws("appconfig").list_hosted_configuration_versions(
                ApplicationId=r.application_id, ConfigurationProfileId=r.profile_id, VersionLabel=label)["Items"]
        return max((int(i["VersionNumber"]) for i in items if i.get("VersionLabel") == label), default=None)

    def create_version(self, r: Resolved, content: bytes, content_type: str, label: str, description: str,
                       latest: int | None) -> int:
        """A new hosted version labelled ``label``; after a lost answer, the one that was created."""
        earlier = self.labelled_version(r, label)
        if earlier is not None:
            return earlier
        kwargs: dict[str, Any] = dict(ApplicationId=r.application_id, ConfigurationProfileId=r.profile_id,
                                      Content=content, ContentType=content_type, VersionLabel=label,
                                      Description=description[:1024])
        if latest is not None:
            kwargs["LatestVersionNumber"] = latest  # AppConfig refuses if someone wrote a version meanwhile
        try:
            with aws_call(f"appconfig create-hosted-configuration-version {r.where}"):
                return int(self._aws.once("appconfig").create_hosted_configuration_version(**kwargs)["VersionNumber"])
        except ApplicationError:
            earlier = self.labelled_version(r, label)
            if earlier is None:
                raise
            return earlier

    @activity.defn
    def hosted_version(self, ref: VersionRef) -> HostedVersion:
        """A hosted version's metadata and digest (NotFound, naming the versions, if it does not exist)."""
        return self.content(ref)[1]

    @activity.defn
    def start_deployment(self, req: StartRequest) -> Deployment:
        """Start deploying ``version``; idempotent: a deployment already marked with ``token`` is returned."""
        r = req.resolved
        mine = self._marked(r, req.token, req.latest_number)
        if mine is not None:
            activity.logger.info("deployment %s of %s already started by this rollback", mine.number, r.where)
            return mine
        strategy = self.strategy_id(req.strategy)
        kwargs: dict[str, Any] = dict(
            ApplicationId=r.application_id, EnvironmentId=r.environment_id, DeploymentStrategyId=strategy,
            ConfigurationProfileId=r.profile_id, ConfigurationVersion=req.version,
            Description=f"{req.description} [{req.token}]"[:1024])
        if req.latest_number is not None:
            kwargs["LatestDeploymentNumber"] = req.latest_number
        try:
            with aws_call(f"appconfig start-deployment {r.where} version {req.version}"):
                d = self._aws.once("appconfig").start_deployment(**kwargs)
        except ApplicationError:
            mine = self._marked(r, req.token, req.latest_number)  # the answer was lost after it started
            if mine is not None:
                return mine
            raise
        activity.logger.info("deployment %s of %s version %s started (%s)", d["DeploymentNumber"], r.where,
                             req.version, strategy)
        return _deployment(d)

    def _marked(self, r: Resolved, token: str, after: int | None) -> Deployment | None:
        """This rollback's deployment, if an earlier attempt started it (newer than ``after``)."""
        newer = [d for d in self.deployments(r).deployments if d.number > (after or 0)]
        for d in newer[:10]:
            full = self.deployment(DeploymentRef(resolved=r, number=d.number))
            if f"[{token}]" in full.description:
                return full
        return None

    @activity.defn
    def deployment(self, ref: DeploymentRef) -> Deployment:
        r = ref.resolved
        with aws_call(f"appconfig get-deployment {r.environment} {ref.number}"):
            return _deployment(self._aws("appconfig").get_deployment(
                ApplicationId=r.application_id, EnvironmentId=r.environment_id, DeploymentNumber=ref.number))

    @activity.defn
    def served(self, r: Resolved) -> Served:
        """Read the profile as clients do (AppConfig Data: a new session, then GetLatestConfiguration)."""
        data = self._aws("appconfigdata")
        with aws_call(f"appconfigdata get-latest-configuration {r.where}"):
            token = data.start_configuration_session(
                ApplicationIdentifier=r.application_id, EnvironmentIdentifier=r.environment_id,
                ConfigurationProfileIdentifier=r.profile_id, RequiredMinimumPollIntervalInSeconds=15,
            )["InitialConfigurationToken"]
            resp = data.get_latest_configuration(ConfigurationToken=token)
            body = resp["Configuration"].read()
        flags = None
        if r.profile_type == FEATURE_FLAGS:
            try:
                flags = json.loads(body or b"{}")
            except ValueError:
                raise ApplicationError(f"AppConfig Data served {r.where} as something other than JSON",
                                       type="InvalidRequest", non_retryable=True) from None
        return Served(sha256=digest(body), size=len(body), content_type=resp.get("ContentType") or "", flags=flags)
