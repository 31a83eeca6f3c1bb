"""The runbook's fleet, created in moto, and the live reads the sandbox's fakes share.

What ``seed`` creates (idempotently):

- ECS cluster ``rastup-prod``; task-definition family ``api-service`` with revisions 1..43,
  container ``api``: revision 43 runs the bad release ``rastup/api:v1.2.3``, 42 the last good
  one ``v1.2.2``, 1..41 older ``v1.1.<n>``.
- ECS service ``api-service`` on revision 43 (the incident: the bad release is live).
- A blue/green pair for gradual rollbacks: a VPC with two subnets, ALB ``rastup-prod-alb``,
  target groups ``api-blue``/``api-green`` and an HTTP:80 listener forwarding 100/0 to them,
  served by ECS services ``api-service-blue`` (live) and ``api-service-green``, both on 43.
- The runbook's database: RDS PostgreSQL instance ``rastup-prod`` (db.r6g.2xlarge, Multi-AZ),
  its manual snapshot ``pre-deploy-20251118-140000``, and the Secrets Manager secret
  ``rastup/prod/db`` the application reads its connection from (host = the instance's
  endpoint). moto has no database engine behind its instances: nothing answers SQL there.
- The runbook's Lambda function ``rastup-search-indexer``: published versions 1..4 and alias
  ``production`` on 4 (see ``sandbox.lambda_fleet``: moto numbers versions from 1, not 42).
- The runbook's configuration (``sandbox.appconfig_fleet``): AppConfig application ``rastup``,
  environment ``production``, feature flags (``new_feature_enabled`` per city,
  ``payments_disabled`` kill switch) and ``app-settings`` (version 2 deployed after 1); the
  secret ``rastup/prod/api-key`` with two versions (AWSCURRENT the new one).

Every service has desiredCount ``DESIRED_COUNT``; moto must run with
``MOTO_ECS_SERVICE_RUNNING`` equal to it (see ``sandbox.moto_server``) so they look settled.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import BaseModel

from sandbox.appconfig_fleet import seed_config
from sandbox.frontend_fleet import seed_frontend
from sandbox.lambda_fleet import seed_lambda

REGION = "us-east-1"
CLUSTER = "rastup-prod"
FAMILY = "api-service"
CONTAINER = "api"
IMAGE = "rastup/api"
SERVICE = "api-service"
BLUE_SERVICE = "api-service-blue"
GREEN_SERVICE = "api-service-green"
LOAD_BALANCER = "rastup-prod-alb"
BLUE_TARGET_GROUP = "api-blue"
GREEN_TARGET_GROUP = "api-green"
DESIRED_COUNT = 2

LATEST_REVISION = 43
BAD_VERSION = "v1.2.3"  # revision 43, deployed: the release being rolled back
GOOD_VERSION = "v1.2.2"  # revision 42, the rollback target

DB_INSTANCE = "rastup-prod"
DB_INSTANCE_CLASS = "db.r6g.2xlarge"
DB_SNAPSHOT = "pre-deploy-20251118-140000"  # manual, taken before the deploy
DB_SECRET = "rastup/prod/db"
DB_NAME = DB_USER = "rastup"
DB_PASSWORD = "sandbox-only"  # a dummy: there is no real database behind moto's instance


def version_of(revision: int) -> str:
    """The image tag of a revision: distinct and increasing, ending in v1.2.2, v1.2.3."""
    return {LATEST_REVISION: BAD_VERSION, LATEST_REVISION - 1: GOOD_VERSION}.get(
        revision, f"v1.1.{revision}")


class Fleet(BaseModel):
    """What the catalog and tests need that moto names at random (the ALB resources' ARNs,
    the database's endpoint), and the names of the database resources."""

    region: str
    cluster: str
    listener_arn: str
    blue_target_group_arn: str
    green_target_group_arn: str
    db_endpoint: str  # the instance's endpoint address (moto: <id>.aaaaaaaaaa.<region>.rds.amazonaws.com)
    db_instance: str = DB_INSTANCE
    db_port: int = 5432
    db_snapshot: str = DB_SNAPSHOT
    db_secret_id: str = DB_SECRET
    distribution_id: str | None = None  # the frontend's CloudFront distribution

    def service_behind(self, target_group_arn: str) -> str:
        """The ECS service serving a target group of the blue/green pair."""
        return {self.blue_target_group_arn: BLUE_SERVICE,
                self.green_target_group_arn: GREEN_SERVICE}[target_group_arn]


@functools.lru_cache(maxsize=128)
def client(service: str, endpoint_url: str, region: str = REGION, threads: int = 10) -> Any:
    """A boto3 client for moto: fake credentials, and few retries so mistakes fail fast; a pool for
    ``threads`` threads sharing it. Made once per service, endpoint, region and pool size (a client is
    thread-safe, and making one costs tens of milliseconds of CPU: the endpoints and the metric emitter
    of every sandbox and test ask for them)."""
    return boto3.client(service, endpoint_url=endpoint_url, region_name=region,
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"mode": "standard", "max_attempts": 2},
                                      max_pool_connections=max(10, threads)))


# -- live reads (the endpoints and the metric emitter answer from moto's current state) --

def image_tag(task_definition: dict) -> str:
    """The tag of the ``api`` container's image (the sandbox always tags its images)."""
    containers = task_definition["containerDefinitions"]
    image = next((c for c in containers if c["name"] == CONTAINER), containers[0])["image"]
    return image.rsplit(":", 1)[1]


class Running(BaseModel):
    version: str
    revision: int


def running(ecs: Any, service: str, cluster: str = CLUSTER) -> Running:
    """The version and revision an ECS service runs now."""
    svc = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
    td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    return Running(version=image_tag(td), revision=td["revision"])


def _family_and_revision(arn: str) -> tuple[str, int]:
    family, revision = arn.rsplit("/", 1)[1].rsplit(":", 1)  # ".../api-service:43"
    return family, int(revision)


def family_revisions(ecs: Any, family: str = FAMILY) -> list[str]:
    """The ARNs of the family's ACTIVE revisions, oldest first."""
    arns = [arn for page in ecs.get_paginator("list_task_definitions").paginate(
                familyPrefix=family, status="ACTIVE")
            for arn in page["taskDefinitionArns"]
            if _family_and_revision(arn)[0] == family]  # the prefix also matches "api-service-x"
    return sorted(arns, key=lambda arn: _family_and_revision(arn)[1])


def family_versions(ecs: Any, family: str = FAMILY, known: dict[str, str] | None = None) -> list[str]:
    """The version of every ACTIVE revision of the family, oldest first.

    ``known`` (task-definition ARN -> version) saves describing revisions seen before: a
    revision never changes, so a caller polling often can keep one across calls.
    """
    known = {} if known is None else known
    arns = family_revisions(ecs, family)
    for arn in arns:
        if arn not in known:
            known[arn] = image_tag(ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"])
    return [known[arn] for arn in arns]


# -- seeding --------------------------------------------------------------------------

def seed(endpoint_url: str, region: str = REGION) -> Fleet:
    """Create the fleet in moto, or find it if it is already there (safe to call twice)."""
    ecs, ec2, elbv2, rds, secrets = (client(s, endpoint_url, region)
                                     for s in ("ecs", "ec2", "elbv2", "rds", "secretsmanager"))
    _ensure_cluster(ecs)
    latest = _ensure_revisions(ecs)
    blue_tg, green_tg, listener = _ensure_load_balancer(ec2, elbv2, region)
    _ensure_service(ecs, SERVICE, latest)
    _ensure_service(ecs, BLUE_SERVICE, latest, blue_tg)
    _ensure_service(ecs, GREEN_SERVICE, latest, green_tg)
    db_host, db_port = _ensure_db_instance(rds)
    _ensure_db_snapshot(rds)
    _ensure_db_secret(secrets, db_host, db_port)
    seed_lambda(endpoint_url, region)  # rastup-search-indexer, versions 1..4, production on 4
    seed_config(endpoint_url, region)  # AppConfig flags and app-settings, secret rastup/prod/api-key
    distribution = seed_frontend(client("s3", endpoint_url, region), client("cloudfront", endpoint_url, region),
                                 region)
    return Fleet(region=region, cluster=CLUSTER, listener_arn=listener,
                 blue_target_group_arn=blue_tg, green_target_group_arn=green_tg,
                 db_endpoint=db_host, db_port=db_port, distribution_id=distribution)


def _ensure_cluster(ecs: Any) -> None:
    # moto's create_cluster replaces an existing cluster, so look first.
    clusters = ecs.describe_clusters(clusters=[CLUSTER])["clusters"]
    if not any(c["status"] == "ACTIVE" for c in clusters):
        ecs.create_cluster(clusterName=CLUSTER)


def _ensure_revisions(ecs: Any) -> str:
    """Register the revisions not there yet; returns the ARN of revision 43 (the bad release)."""
    arns = family_revisions(ecs)
    for revision in range(len(arns) + 1, LATEST_REVISION + 1):
        arns.append(ecs.register_task_definition(
            family=FAMILY,
            containerDefinitions=[{
                "name": CONTAINER,
                "image": f"{IMAGE}:{version_of(revision)}",
                "memory": 512,
                "essential": True,
                "portMappings": [{"containerPort": 8080}],
            }],
        )["taskDefinition"]["taskDefinitionArn"])
    return arns[LATEST_REVISION - 1]  # revisions count up from 1


def _ensure_service(ecs: Any, name: str, task_definition: str, target_group: str | None = None) -> None:
    found = ecs.describe_services(cluster=CLUSTER, services=[name])["services"]
    if any(s["status"] == "ACTIVE" for s in found):
        return
    load_balancers = ([{"targetGroupArn": target_group, "containerName": CONTAINER,
                        "containerPort": 8080}] if target_group else [])
    ecs.create_service(cluster=CLUSTER, serviceName=name, taskDefinition=task_definition,
                       desiredCount=DESIRED_COUNT, loadBalancers=load_balancers)


def _ensure_load_balancer(ec2: Any, elbv2: Any, region: str) -> tuple[str, str, str]:
    """The ALB, its two target groups and its listener; returns (blue, green, listener) ARNs."""
    try:
        alb = elbv2.describe_load_balancers(Names=[LOAD_BALANCER])["LoadBalancers"][0]["LoadBalancerArn"]
    except ClientError as e:
        if e.response["Error"]["Code"] != "LoadBalancerNotFound":
            raise
        alb = _create_load_balancer(ec2, elbv2, region)
    groups = elbv2.describe_target_groups(LoadBalancerArn=alb)["TargetGroups"]
    by_name = {g["TargetGroupName"]: g["TargetGroupArn"] for g in groups}
    listener = elbv2.describe_listeners(LoadBalancerArn=alb)["Listeners"][0]["ListenerArn"]
    return by_name[BLUE_TARGET_GROUP], by_name[GREEN_TARGET_GROUP], listener


def _create_load_balancer(ec2: Any, elbv2: Any, region: str) -> str:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                 AvailabilityZone=f"{region}{zone}")["Subnet"]["SubnetId"]
               for i, zone in enumerate("ab", start=1)]
    alb = elbv2.create_load_balancer(Name=LOAD_BALANCER, Subnets=subnets)["LoadBalancers"][0][
        "LoadBalancerArn"]
    blue, green = (elbv2.create_target_group(Name=name, Protocol="HTTP", Port=8080, VpcId=vpc,
                                             TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
                   for name in (BLUE_TARGET_GROUP, GREEN_TARGET_GROUP))
    elbv2.create_listener(
        LoadBalancerArn=alb, Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": blue, "Weight": 100},
            {"TargetGroupArn": green, "Weight": 0},
        ]}}],
    )
    return alb


def _ensure_db_instance(rds: Any) -> tuple[str, int]:
    """The runbook's production database; returns its endpoint (address, port).

    moto reports it ``available`` at once and, like real RDS, adds an *automated* snapshot
    (``rds:rastup-prod-<date>``) of its own: whoever picks snapshots must filter SnapshotType.
    """
    try:
        instance = rds.describe_db_instances(DBInstanceIdentifier=DB_INSTANCE)["DBInstances"][0]
    except ClientError as e:
        if e.response["Error"]["Code"] != "DBInstanceNotFound":
            raise
        instance = rds.create_db_instance(
            DBInstanceIdentifier=DB_INSTANCE, Engine="postgres", DBInstanceClass=DB_INSTANCE_CLASS,
            MultiAZ=True, AllocatedStorage=100, DBName=DB_NAME,
            MasterUsername=DB_USER, MasterUserPassword=DB_PASSWORD)["DBInstance"]
    return instance["Endpoint"]["Address"], instance["Endpoint"]["Port"]


def _ensure_db_snapshot(rds: Any) -> None:
    """The manual pre-deploy snapshot the runbook restores from.

    Its name says 2025-11-18 14:00 but moto stamps SnapshotCreateTime with the time of this
    call (it cannot be set): in the sandbox the snapshot is "taken" when the sandbox starts,
    so "the newest manual snapshot before <time>" needs a time after that.
    """
    try:
        rds.describe_db_snapshots(DBSnapshotIdentifier=DB_SNAPSHOT)
    except ClientError as e:
        if e.response["Error"]["Code"] != "DBSnapshotNotFound":
            raise
        rds.create_db_snapshot(DBSnapshotIdentifier=DB_SNAPSHOT, DBInstanceIdentifier=DB_INSTANCE)


def _ensure_db_secret(secrets: Any, host: str, port: int) -> None:
    """The connection secret the app reads; a cutover rewrites its ``host``. Left as found if
    it exists (a cutover in progress is not undone by seeding again)."""
    try:
        secrets.describe_secret(SecretId=DB_SECRET)
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        secrets.create_secret(Name=DB_SECRET, SecretString=json.dumps({
            "host": host, "port": port, "username": DB_USER, "password": DB_PASSWORD,
            "dbname": DB_NAME}))
