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

    @model_validator(mode="after")
    def _someone_can_approve(self) -> "Catalog":
        if not self.people.on_call:
            raise ValueError("people.on_call must list at least one on-call engineer")
        return self

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise UnknownTarget("service", name, sorted(self.services)) from None


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
