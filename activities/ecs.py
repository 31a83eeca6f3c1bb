"""ECS: what is deployed, which versions exist, and pointing a service at a task definition."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call
from activities.known_good import KEEP, Verdict, described_with_verdict, ecs_verdict
from common.catalog import EcsRef


class Revision(BaseModel):
    arn: str
    family: str
    revision: int
    version: str  # the image tag of the service's container
    verdict: Verdict | None = None  # what rollbacks found (activities/known_good.py); list_versions only


class Deployed(BaseModel):
    cluster: str
    service: str
    task_definition: Revision
    desired_count: int
    running_count: int
    deployments: int
    settled: bool
    deployed_at: datetime | None = Field(None, description="when the PRIMARY deployment (this version) began")


class VersionQuery(BaseModel):
    ecs: EcsRef
    to_version: str | None = None  # the version a person named; None: the previous stable one


class Identified(BaseModel):
    """What a service runs, and the revisions that decide the target (newest first): the current one
    and those looked at until the target was found (``choose_target`` reads them as it would all)."""

    current: Deployed
    revisions: list[Revision]


class DeployRequest(BaseModel):
    ecs: EcsRef
    task_definition_arn: str


def image_version(task_def: dict, container: str | None) -> str:
    containers = task_def.get("containerDefinitions") or []
    chosen = next((c for c in containers if c.get("name") == container), None) if container else None
    chosen = chosen or (containers[0] if containers else None)
    if chosen is None:
        raise ApplicationError(f"task definition {task_def.get('taskDefinitionArn')} has no containers",
                               non_retryable=True, type="InvalidTaskDefinition")
    image: str = chosen.get("image", "")
    if "@" in image:
        return image.rsplit("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def _revision(td: dict, container: str | None) -> Revision:
    return Revision(arn=td["taskDefinitionArn"], family=td["family"], revision=td["revision"],
                    version=image_version(td, container))


def _family_of(arn: str) -> str:
    return arn.rsplit("/", 1)[-1].rsplit(":", 1)[0]


def _revision_of(arn: str) -> int:
    return int(arn.rsplit(":", 1)[-1])


class EcsActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    @activity.defn
    def describe_deployed(self, ref: EcsRef) -> Deployed:
        """The service's current task definition, its version and whether it has settled."""
        return self._deployed(ref)

    def _deployed(self, ref: EcsRef, verdict: bool = False) -> Deployed:
        """As ``describe_deployed``; with ``verdict``, the current revision's verdict read in the same call."""
        ecs = self._aws("ecs")
        with aws_call(f"ecs describe-services {ref.cluster}/{ref.service}"):
            resp = ecs.describe_services(cluster=ref.cluster, services=[ref.service])
        services = [s for s in resp.get("services", []) if s.get("status") != "INACTIVE"]
        if not services:
            raise ApplicationError(
                f"ECS service {ref.service!r} not found in cluster {ref.cluster!r}; "
                "fix ecs.cluster/ecs.service in the catalog",
                non_retryable=True, type="NotFound")
        svc = services[0]
        judged = None
        if verdict:
            td, judged = described_with_verdict(ecs, svc["taskDefinition"])
        else:
            with aws_call(f"ecs describe-task-definition {svc['taskDefinition']}"):
                td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
        deployments = svc.get("deployments") or []
        in_progress = [d for d in deployments if d.get("rolloutState") == "IN_PROGRESS"]
        settled = (len(deployments) <= 1 and not in_progress
                   and svc.get("runningCount", 0) >= svc.get("desiredCount", 0))
        primary = next((d for d in deployments if d.get("status") == "PRIMARY"), None)
        now = _revision(td, ref.container)
        now.verdict = judged
        return Deployed(cluster=ref.cluster, service=ref.service,
                        task_definition=now,
                        desired_count=svc.get("desiredCount", 0),
                        running_count=svc.get("runningCount", 0),
                        deployments=len(deployments), settled=settled,
                        deployed_at=primary.get("createdAt") if primary else None)

    @activity.defn
    def identify(self, q: VersionQuery) -> Identified:
        """What runs and the target, in O(1) calls for the common case: the service once, its task
        definition, the family's revision ARNs (the revision is in the ARN), then the revisions below
        the current one, newest first, only until one qualifies (``to_version``'s, or an earlier
        different version no rollback left as bad: workflows/service.py ``choose_target``)."""
        current = self._deployed(q.ecs, verdict=True)
        ecs = self._aws("ecs")
        family, now = current.task_definition.family, current.task_definition
        arns: list[str] = []
        with aws_call(f"ecs list-task-definitions {family}"):
            for page in ecs.get_paginator("list_task_definitions").paginate(familyPrefix=family, status="ACTIVE"):
                arns.extend(a for a in page.get("taskDefinitionArns", []) if _family_of(a) == family)
        arns.sort(key=_revision_of, reverse=True)
        found = [now]
        for i, arn in enumerate(a for a in arns if a != now.arn):
            if q.to_version is None and _revision_of(arn) > now.revision:
                continue  # newer than what runs: never a default target
            if i < KEEP:  # the verdicts that can matter: the newest revisions'
                td, judged = described_with_verdict(ecs, arn)
            else:
                with aws_call(f"ecs describe-task-definition {arn}"):
                    td, judged = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"], None
            r = _revision(td, q.ecs.container)
            r.verdict = judged
            found.append(r)
            if (r.version == q.to_version if q.to_version else
                    (r.version != now.version and (r.verdict is None or r.verdict.verdict != "bad"))):
                break
        found.sort(key=lambda r: r.revision, reverse=True)
        return Identified(current=current, revisions=found)

    @activity.defn
    def list_versions(self, ref: EcsRef) -> list[Revision]:
        """Every ACTIVE revision of the service's task-definition family, newest first."""
        deployed = self.describe_deployed(ref)
        ecs = self._aws("ecs")
        arns: list[str] = []
        with aws_call(f"ecs list-task-definitions {deployed.task_definition.family}"):
            for page in ecs.get_paginator("list_task_definitions").paginate(
                familyPrefix=deployed.task_definition.family, status="ACTIVE"
            ):
                arns.extend(page.get("taskDefinitionArns", []))
        revisions = []
        for arn in arns:
            activity.heartbeat(arn)
            with aws_call(f"ecs describe-task-definition {arn}"):
                td = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
            if td["family"] == deployed.task_definition.family:
                revisions.append(_revision(td, ref.container))
        revisions.sort(key=lambda r: r.revision, reverse=True)
        for r in revisions[:KEEP]:  # the verdicts that can matter: the newest revisions'
            r.verdict = ecs_verdict(ecs, r.arn)
        return revisions

    @activity.defn
    def deploy_task_definition(self, req: DeployRequest) -> bool:
        """Point the service at the task definition. Idempotent: returns False if it already was."""
        ecs = self._aws("ecs")
        where = f"{req.ecs.cluster}/{req.ecs.service}"
        with aws_call(f"ecs describe-services {where}"):
            svc = ecs.describe_services(cluster=req.ecs.cluster, services=[req.ecs.service])["services"]
        if svc and svc[0].get("taskDefinition") == req.task_definition_arn:
            activity.logger.info("service already on %s; nothing to do", req.task_definition_arn)
            return False
        with aws_call(f"ecs update-service {where}"):
            ecs.update_service(cluster=req.ecs.cluster, service=req.ecs.service,
                               taskDefinition=req.task_definition_arn)
        activity.logger.info("service %s now on %s", where, req.task_definition_arn)
        return True


class OneOffTask(BaseModel):
    """A one-off task from a service's task definition with the command overridden."""

    ecs: EcsRef
    command: list[str]
    started_by: str  # idempotency token: a retry finds the task it already started
    network: dict | None = None
    launch_type: str | None = None


class TaskRef(BaseModel):
    cluster: str
    task_arn: str


class TaskState(BaseModel):
    last_status: str
    exit_code: int | None = None
    reason: str = ""


class EcsTaskActivities:
    """One-off tasks (migrations run as the app's own image) and forced redeployments."""

    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    @activity.defn
    def run_one_off(self, t: OneOffTask) -> str:
        ecs = self._aws("ecs")
        with aws_call(f"ecs list-tasks startedBy={t.started_by}"):
            for status in ("RUNNING", "STOPPED"):
                arns = ecs.list_tasks(cluster=t.ecs.cluster, startedBy=t.started_by,
                                      desiredStatus=status).get("taskArns", [])
                if arns:
                    return arns[0]  # started by an earlier attempt
        with aws_call(f"ecs describe-services {t.ecs.service}"):
            svc = ecs.describe_services(cluster=t.ecs.cluster, services=[t.ecs.service])["services"][0]
            td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
        container = t.ecs.container or td["containerDefinitions"][0]["name"]
        kwargs: dict = dict(cluster=t.ecs.cluster, taskDefinition=svc["taskDefinition"], startedBy=t.started_by,
                            overrides={"containerOverrides": [{"name": container, "command": t.command}]})
        if t.network:
            kwargs["networkConfiguration"] = {"awsvpcConfiguration": t.network}
        if t.launch_type:
            kwargs["launchType"] = t.launch_type
        with aws_call(f"ecs run-task {td['family']}"):
            resp = ecs.run_task(**kwargs)
        if resp.get("failures") or not resp.get("tasks"):
            raise ApplicationError(f"ecs run-task failed: {resp.get('failures')}", non_retryable=True,
                                   type="InvalidRequest")
        return resp["tasks"][0]["taskArn"]

    @activity.defn
    def task_state(self, ref: TaskRef) -> TaskState:
        with aws_call(f"ecs describe-tasks {ref.task_arn}"):
            tasks = self._aws("ecs").describe_tasks(cluster=ref.cluster, tasks=[ref.task_arn]).get("tasks", [])
        if not tasks:
            raise ApplicationError(f"task {ref.task_arn} not found", non_retryable=True, type="NotFound")
        task = tasks[0]
        codes = [c.get("exitCode") for c in task.get("containers", []) if c.get("exitCode") is not None]
        return TaskState(last_status=task.get("lastStatus", ""), exit_code=max(codes) if codes else None,
                         reason=task.get("stoppedReason", ""))

    @activity.defn
    def force_new_deployment(self, ref: EcsRef) -> None:
        """Restart the service's tasks so they re-read their secrets (runbook: update app config)."""
        with aws_call(f"ecs update-service --force-new-deployment {ref.cluster}/{ref.service}"):
            self._aws("ecs").update_service(cluster=ref.cluster, service=ref.service, forceNewDeployment=True)
