"""ECS: what is deployed, which versions exist, and pointing a service at a task definition."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, aws_call
from common.catalog import EcsRef


class Revision(BaseModel):
    arn: str
    family: str
    revision: int
    version: str  # the image tag of the service's container


class Deployed(BaseModel):
    cluster: str
    service: str
    task_definition: Revision
    desired_count: int
    running_count: int
    deployments: int
    settled: bool


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


class EcsActivities:
    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    @activity.defn
    def describe_deployed(self, ref: EcsRef) -> Deployed:
        """The service's current task definition, its version and whether it has settled."""
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
        with aws_call(f"ecs describe-task-definition {svc['taskDefinition']}"):
            td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
        deployments = svc.get("deployments") or []
        in_progress = [d for d in deployments if d.get("rolloutState") == "IN_PROGRESS"]
        settled = (len(deployments) <= 1 and not in_progress
                   and svc.get("runningCount", 0) >= svc.get("desiredCount", 0))
        return Deployed(cluster=ref.cluster, service=ref.service,
                        task_definition=_revision(td, ref.container),
                        desired_count=svc.get("desiredCount", 0),
                        running_count=svc.get("runningCount", 0),
                        deployments=len(deployments), settled=settled)

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
        return sorted(revisions, key=lambda r: r.revision, reverse=True)

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
