"""The catalog: the fleet, the people and the policy, as one validated YAML file.

Loaded by the worker at start-up (fail fast) and by the ``load_catalog`` activity
(workflows never read files). Errors name the file, the field path and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.policy import Policy


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class EcsRef(Strict):
    cluster: str
    service: str
    container: str | None = Field(
        None, description="container whose image tag is the version; default: the first one"
    )


class BlueGreenSide(Strict):
    target_group_arn: str
    ecs: EcsRef


class BlueGreen(Strict):
    """An ALB listener forwarding to two target groups, each served by its own ECS service."""

    listener_arn: str
    blue: BlueGreenSide
    green: BlueGreenSide


class Endpoints(Strict):
    health: str | None = None
    ready: str | None = None
    version: str | None = None
    version_field: str = "version"


class HttpCheck(Strict):
    name: str
    url: str
    expect_status: int = 200
    contains: str | None = None


class MetricQuery(Strict):
    """A CloudWatch metric. ``{version}`` in a dimension value is replaced by the version checked."""

    name: str
    kind: Literal["error_rate", "latency_p95", "business"]
    namespace: str
    metric: str
    dimensions: dict[str, str] = Field(default_factory=dict)
    stat: str = "Average"
    baseline: float
    unit: str = ""


class Stage(Strict):
    ecs: EcsRef
    endpoints: Endpoints = Field(default_factory=Endpoints)
    smoke_checks: list[HttpCheck] = Field(default_factory=list)


class Service(Strict):
    ecs: EcsRef
    blue_green: BlueGreen | None = None
    endpoints: Endpoints = Field(default_factory=Endpoints)
    smoke_checks: list[HttpCheck] = Field(default_factory=list)
    metrics: list[MetricQuery] = Field(default_factory=list)
    alarms: list[str] = Field(default_factory=list, description="CloudWatch alarm names")
    staging: Stage | None = None
    customer_facing: bool = True


class MigrationCommand(Strict):
    """How the application's own migration tool runs: ``{steps}`` in an argument is replaced.

    ``local``: a command on the worker's host (a deploy host) with a working directory and env.
    ``ecs``: a one-off ECS task from the app's task definition with the command overridden.
    """

    runner: Literal["local", "ecs"]
    command: list[str] = Field(min_length=1, description='e.g. ["alembic", "downgrade", "-{steps}"]')
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="values may be ${VAR} from the worker env")
    ecs: EcsRef | None = None
    ecs_network: dict | None = Field(None, description="awsvpcConfiguration for run_task, if needed")
    timeout_minutes: float = 30


class Migrations(Strict):
    tool: Literal["alembic"] = "alembic"
    directory: str = Field(description="the app's migration scripts (versions/), read to plan and to "
                                       "detect destructive migrations")
    version_table: str = "alembic_version"
    rollback: MigrationCommand
    destructive_patterns: list[str] = Field(
        default_factory=lambda: [
            r"#\s*rollback:\s*destructive", r"--\s*rollback:\s*destructive",
            r"\bUPDATE\s+\w+\s+SET\b", r"\bDELETE\s+FROM\b", r"\bTRUNCATE\b",
            r"\bDROP\s+(TABLE|COLUMN)\b", r"op\.drop_(table|column)\b", r"op\.alter_column\([^)]*type_",
        ],
        description="regexes over a migration's upgrade(): a match means it modified or deleted data")


class IntegrityCheck(Strict):
    """SQL run on the restored instance before any cutover; the first column of the first row is checked."""

    name: str
    sql: str
    min: float | None = None
    max: float | None = None
    equals: float | str | None = None
    max_age_before_snapshot_minutes: float | None = Field(
        None, description="for a timestamp: at most this long before the snapshot was taken")


class Cutover(Strict):
    """How the application is pointed at the restored instance (runbook: see DR runbook)."""

    kind: Literal["secret", "route53"]
    secret_id: str | None = None
    host_key: str = "host"
    restart_services: list[EcsRef] = Field(default_factory=list)
    hosted_zone_id: str | None = None
    record_name: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> "Cutover":
        if self.kind == "secret" and not self.secret_id:
            raise ValueError("cutover kind 'secret' needs secret_id")
        if self.kind == "route53" and not (self.hosted_zone_id and self.record_name):
            raise ValueError("cutover kind 'route53' needs hosted_zone_id and record_name")
        return self


class Database(Strict):
    engine: Literal["postgres"] = "postgres"
    dsn_env: str = Field(description="env var on the worker holding the production DSN (a secret)")
    rds_instance: str | None = Field(None, description="RDS instance id, for snapshot restores")
    restored_dsn: str | None = Field(
        None, description="DSN of the restored instance; {host} and {port} are its endpoint, "
                          "${VAR} is read from the worker env (credentials)")
    migrations: Migrations | None = None
    integrity_checks: list[IntegrityCheck] = Field(default_factory=list)
    cutover: Cutover | None = None
    smoke_checks: list[HttpCheck] = Field(default_factory=list)
    app_service: str | None = Field(None, description="catalog service to roll back first (post_migration)")


class Site(Strict):
    """A static frontend: a versioned S3 bucket behind CloudFront (runbook section 6)."""

    bucket: str = Field(description="the live bucket (versioning enabled)")
    versions_bucket: str | None = Field(None, description="holds one prefix per release, e.g. v1.2.2/")
    distribution_id: str | None = None
    url: str | None = Field(None, description="the public URL serving index_key, for verification")
    index_key: str = "index.html"
    endpoints: Endpoints = Field(default_factory=Endpoints)
    smoke_checks: list[HttpCheck] = Field(default_factory=list)
    metrics: list[MetricQuery] = Field(default_factory=list)
    alarms: list[str] = Field(default_factory=list)
    customer_facing: bool = True


class LambdaFunction(Strict):
    """A Lambda function rolled back by moving an alias between its published versions."""

    function_name: str = Field(description="the function's name in AWS")
    smoke_invoke: bool = Field(False, description="invoke it through the alias after the rollback")
    smoke_payload: dict | list | None = Field(None, description="the smoke invocation's JSON event")
    metrics: list[MetricQuery] = Field(
        default_factory=list, description="checked between routing steps and while monitoring; "
                                          "{version} in a dimension is the published version")
    alarms: list[str] = Field(default_factory=list, description="CloudWatch alarm names")


class People(Strict):
    approvers: list[str] = Field(default_factory=list)
    on_call: list[str] = Field(default_factory=list)
    dbas: list[str] = Field(default_factory=list)
    security: list[str] = Field(default_factory=list)

    def everyone(self) -> set[str]:
        return {*self.approvers, *self.on_call, *self.dbas, *self.security}


class Catalog(Strict):
    people: People
    policy: Policy = Field(default_factory=Policy)
    services: dict[str, Service] = Field(default_factory=dict)
    databases: dict[str, Database] = Field(default_factory=dict)
    sites: dict[str, Site] = Field(default_factory=dict)
    functions: dict[str, LambdaFunction] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "Catalog":
        if not self.people.on_call:
            raise ValueError("people.on_call must list at least one on-call engineer")
        for name, db in self.databases.items():
            if db.app_service and db.app_service not in self.services:
                raise ValueError(f"databases.{name}.app_service {db.app_service!r} is not under services: "
                                 f"(known: {', '.join(sorted(self.services)) or 'none'})")
        return self

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise UnknownTarget("service", name, sorted(self.services)) from None

    def site(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise UnknownTarget("site", name, sorted(self.sites)) from None

    def function(self, name: str) -> LambdaFunction:
        try:
            return self.functions[name]
        except KeyError:
            raise UnknownTarget("function", name, sorted(self.functions)) from None

    def database(self, name: str) -> Database:
        try:
            return self.databases[name]
        except KeyError:
            raise UnknownTarget("database", name, sorted(self.databases)) from None


class UnknownTarget(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        super().__init__(
            f"{kind} {name!r} is not in the catalog (known: {', '.join(known) or 'none'}); "
            f"add it under '{kind}s:' or fix the name"
        )


class CatalogError(ValueError):
    """The catalog file is missing or invalid. The message is meant for a person."""


def _format(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} problem(s) in the catalog:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CatalogError(
            f"{path}: catalog file not found; set ROLLBACK_CATALOG to your catalog.yaml"
        ) from None
    except yaml.YAMLError as e:
        raise CatalogError(f"{path}: not valid YAML: {e}") from None
    try:
        return Catalog.model_validate(raw or {})
    except ValidationError as e:
        raise CatalogError(_format(path, e)) from None
