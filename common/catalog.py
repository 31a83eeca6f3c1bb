"""The catalog: the fleet, the people and the policy, as one validated YAML file.

Loaded by the worker at start-up (fail fast) and by the ``load_catalog`` activity
(workflows never read files). Errors name the file, the field path and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.catalog_docs import REFERENCE, explain
from common.identity import PROOF_FIELDS, IdentityConfig, Person
from common.policy import AUTO_ROLLBACK_REQUESTER, ROLE_LABEL, SEVERITY_SCALE, Policy, Severity
from common.releases import Release

T = TypeVar("T")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class EcsRef(Strict):
    """An ECS service."""

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
    """URLs checked after a rollback; each must answer 200."""

    health: str | None = None
    ready: str | None = None
    version: str | None = Field(None, description="answers JSON whose version_field must be the target version")
    version_field: str = "version"


class HttpCheck(Strict):
    """A smoke check: GET url."""

    name: str
    url: str
    expect_status: int = 200
    contains: str | None = Field(None, description="text the body must contain")


class MetricQuery(Strict):
    """A metric a check reads, from CloudWatch or Prometheus (``provider``), judged against a
    baseline measured from data (``baseline_from``) by the runbook's thresholds; see docs/verdicts.md.

    CloudWatch: ``namespace``, ``metric``, ``dimensions`` and ``stat``, read per ``period_seconds``.
    Prometheus: ``promql``, evaluated as a range query with step ``period_seconds``. In both,
    ``{version}`` (a dimension value, or anywhere in the PromQL) is the version measured: the one
    serving, or the baseline's version.
    """

    name: str = Field(description="shown in checks, e.g. error_rate")
    kind: Literal["error_rate", "latency_p95", "business"] = Field(
        description="how it is judged against baseline (policy.thresholds): error_rate fails above baseline + "
                    "0.5 percentage points, latency_p95 above baseline + 25 %, business below baseline - 10 %")
    provider: Literal["cloudwatch", "prometheus"] = Field(
        "cloudwatch", description="where the samples come from; prometheus needs the catalog's prometheus.url")
    namespace: str | None = Field(None, description="CloudWatch namespace, e.g. Rastup/API (provider cloudwatch)")
    metric: str | None = Field(None, description="CloudWatch metric name, e.g. ErrorRate (provider cloudwatch)")
    dimensions: dict[str, str] = Field(default_factory=dict, description='"{version}" in a value is the version '
                                                                         "being checked")
    stat: str = Field("Average", description="CloudWatch statistic per period (Average, Sum, Maximum) or "
                                             "extended statistic (p95)")
    promql: str | None = Field(
        None, description='PromQL with {version}, e.g. histogram_quantile(0.95, sum by (le) '
                          '(rate(http_request_duration_seconds_bucket{version="{version}"}[1m]))) * 1000')
    period_seconds: int = Field(60, ge=1, description="one sample per period (seconds): CloudWatch Period, "
                                                      "Prometheus step")
    baseline: float | None = Field(
        None, description="fallback baseline in the metric's own unit (for error_rate a percent: 0.2 means "
                          "0.2 %), used only when no measured baseline has data; the verdict says so",
        json_schema_extra={"unit": "the metric's (see unit)"})
    baseline_from: list[Literal["last_good", "week_ago"]] = Field(
        default_factory=lambda: ["last_good", "week_ago"], min_length=1,
        description="where the baseline is measured, tried in order: last_good = the last known-good "
                    "version in the window before the change began; week_ago = the same metric one week "
                    "earlier")
    baseline_minutes: float = Field(60, gt=0, le=24 * 60, description="length of the baseline window (minutes)")
    optional: bool = Field(False, description="an inconclusive verdict (no data, too few samples, query error) "
                                              "does not fail validation; it is shown as not checked")
    unit: str = Field("", description='only displayed after values, e.g. "%", "ms", "/min"; never converted')

    @model_validator(mode="after")
    def _provider_fields(self) -> "MetricQuery":
        if self.provider == "cloudwatch" and not (self.namespace and self.metric):
            raise ValueError(f"metric {self.name!r}: provider cloudwatch needs namespace and metric")
        if self.provider == "prometheus" and not self.promql:
            raise ValueError(f"metric {self.name!r}: provider prometheus needs promql")
        return self


class Prometheus(Strict):
    """A Prometheus server (or anything answering its HTTP API: Thanos, Mimir, VictoriaMetrics)."""

    url: str = Field(description="base URL, e.g. http://prometheus:9090")
    bearer_token_env: str | None = Field(None, description="env var on the worker holding a bearer token")


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
    auto_rollback: bool = Field(False, description="the auto-rollback schedule checks its 5-minute error rate "
                                                   "every 5 minutes and rolls it back above the policy's "
                                                   "auto_rollback_error_rate (runbook: Automation)")


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
    ecs_launch_type: Literal["FARGATE", "EC2"] | None = Field("FARGATE", description="None: the cluster's default")
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


class StackValidation(Strict):
    """How to verify a stack after the rollback (runbook: ``npm run infra:validate -- --env=production``)."""

    command: list[str] | None = Field(
        None, min_length=1, description='run in the checked-out configuration directory with the stack\'s env, '
                                        'e.g. ["npm", "run", "infra:validate", "--", "--env=production"]')
    checks: list[HttpCheck] = Field(default_factory=list, description="HTTP checks that must pass")
    timeout_minutes: float = Field(10, gt=0)


class Stack(Strict):
    """A Terraform (or OpenTofu) configuration in a git repository (runbook section 3)."""

    repository: str = Field(description="path or URL of the infrastructure git repository (only read)")
    branch: str = "main"
    directory: str = Field(".", description="the Terraform configuration's folder inside the repository")
    terraform: list[str] = Field(default_factory=lambda: ["terraform"], min_length=1,
                                 description='the binary on PATH ("terraform", "tofu") or a command as a list')
    env: dict[str, str] = Field(default_factory=dict, description="extra env for terraform and the validation "
                                                                  "command; ${VAR} is read from the worker env")
    validation: StackValidation = Field(default_factory=StackValidation)
    workdir: str | None = Field(None, description="where checkouts go; default <data dir>/infra")
    timeout_minutes: float = Field(30, gt=0, description="for one terraform init/plan/apply")

    @field_validator("terraform", mode="before")
    @classmethod
    def _command(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


# The procedures an alert rule may start (common/api.py PROCEDURES; a test keeps them equal).
KINDS = ("service", "database", "frontend", "lambda", "infra", "flag", "config", "release")


class SeverityFromLabel(Strict):
    """The rollback's severity, from one of the alert's labels. Mind the runbook's scale: SEV-0 is
    informational and SEV-4 a complete outage (higher is worse)."""

    label: str = Field("severity", description="the alert label read")
    map: dict[str, Severity] = Field(default_factory=lambda: {
        "critical": "SEV-3", "page": "SEV-3", "error": "SEV-2", "warning": "SEV-2", "info": "SEV-1"},
        description="label value -> severity; " + SEVERITY_SCALE)
    default: Severity = Field("SEV-2", description="when the label is missing or not in map")

    def of(self, labels: dict[str, str]) -> str:
        return self.map.get(labels.get(self.label, ""), self.default)


class AlertRule(Strict):
    """A firing alert -> a rollback (runbook: Common Rollback Scenarios); the first matching rule wins.

    ``input`` is the procedure's input as a template: in any string, ``{labels.NAME}``,
    ``{annotations.NAME}`` (``{labels.NAME|fallback}`` when it may be missing), ``{alertname}``,
    ``{summary}``, ``{source}`` and ``{rule}`` are filled from the alert. ``severity`` and
    ``requested_by`` ("<source>:<rule name>", which the policy's automation_may_proceed names)
    are set by the receiver.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="e.g. high-error-rate")
    match: dict[str, str] = Field(default_factory=dict, description="label -> exact value")
    match_re: dict[str, str] = Field(default_factory=dict, description="label -> regex (must match it all)")
    # A plain str with the allowed values checked when the file is loaded (``check_catalog``), not by
    # the model: catalogs recorded in running workflows' histories must still validate on replay.
    kind: str = Field(description="the procedure the alert starts", json_schema_extra={"allowed": list(KINDS)})
    input: dict[str, Any] = Field(default_factory=dict, description="the procedure's input fields (its workflow "
                                  "input in the README's Contract), as templates; checked against that input "
                                  "when the catalog is loaded")
    severity: SeverityFromLabel = Field(default_factory=SeverityFromLabel)
    reason: str = "{source} alert {alertname}: {summary}"

    @model_validator(mode="after")
    def _selective(self) -> "AlertRule":
        if not self.match and not self.match_re:
            raise ValueError(f"alert rule {self.name!r} matches every alert: give match or match_re")
        for label, pattern in self.match_re.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"alert rule {self.name!r}: match_re.{label} is not a regex: {e}") from None
        for key in ("severity", "requested_by"):
            if key in self.input:
                raise ValueError(f"alert rule {self.name!r}: input.{key} is set by the receiver; "
                                 f"use the rule's severity mapping instead" if key == "severity" else
                                 f"alert rule {self.name!r}: input.requested_by is '<source>:<rule name>'")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match.items())
                and all(re.fullmatch(p, labels.get(k, "")) is not None for k, p in self.match_re.items()))


class AppConfigFlagStore(Strict):
    """Feature flags in an AWS AppConfig feature-flag profile (type ``AWS.AppConfig.FeatureFlags``,
    runbook: "AppConfig -> Configuration -> Kill Switches"). A flag's rollout in a city is a number
    attribute (0..100) of the flag named after the city, e.g. ``los-angeles``."""

    provider: Literal["appconfig"]
    application: str = Field(description="AppConfig application name or id")
    environment: str = Field(description="environment name or id, e.g. production")
    profile: str = Field(description="the feature-flag configuration profile's name or id")
    strategy: str = Field("AppConfig.AllAtOnce", description="deployment strategy (name or id) for flag changes")
    kill_switch_strategy: str = Field("AppConfig.AllAtOnce", description="deployment strategy for kill switches")


# A flag store: another provider (LaunchDarkly, a database table) is one more model here, joined
# as ``Annotated[A | B, Field(discriminator="provider")]``, plus its class in activities/flags.py.
FlagStoreConfig = AppConfigFlagStore


class Flag(Strict):
    store: str = Field(description="a name under flag_stores:")
    key: str | None = Field(None, description="the flag's key in the store; default: its catalog name")
    cities: list[str] = Field(default_factory=list, description="cities with a rollout percentage attribute")
    kill_switch: bool = Field(False, description="enabling it turns something off (e.g. payments_disabled)")
    customer_facing: bool = True
    services: list[str] = Field(default_factory=list, description="catalog services it affects: their checks "
                                                                  "run after the rollback, then the monitoring window")
    metrics: list[MetricQuery] = Field(default_factory=list, description="its own metrics, e.g. the business "
                                                                         "metric of the feature it gates")


class AppConfigTarget(Strict):
    """A configuration profile deployed to an AppConfig environment; rolled back by redeploying a version."""

    kind: Literal["appconfig"]
    application: str = Field(description="AppConfig application name or id")
    environment: str = Field(description="environment name or id")
    profile: str = Field(description="configuration profile name or id")
    strategy: str = Field("AppConfig.AllAtOnce", description="deployment strategy name or id")
    services: list[str] = Field(default_factory=list, description="catalog services it affects: their checks "
                                                                  "run after the rollback, then the monitoring window")
    metrics: list[MetricQuery] = Field(default_factory=list, description="its own metrics (checked the same way)")


class SecretTarget(Strict):
    """A Secrets Manager secret; rolled back by moving AWSCURRENT to an earlier version."""

    kind: Literal["secret"]
    secret_id: str = Field(description="name or ARN, e.g. rastup/prod/api-key")
    consumers: list[EcsRef] = Field(default_factory=list,
                                    description="ECS services redeployed after the move, so they read it again")
    services: list[str] = Field(default_factory=list, description="catalog services it affects: their checks "
                                                                  "run after the rollback, then the monitoring window")
    metrics: list[MetricQuery] = Field(default_factory=list, description="its own metrics (checked the same way)")


ConfigTarget = Annotated[AppConfigTarget | SecretTarget, Field(discriminator="kind")]


class People(BaseModel):
    """Who may approve, by role (the decision matrix names the roles), and how each person proves who they
    are: next to the role lists, an entry per person, e.g. `alice: {email: alice@rastup.com, slack_id:
    U01ALICE}` (the claim identity.oidc.person_claim names, and the Slack user id). A name not listed is
    refused; a listed name counts only with its proof (docs/identity.md)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Person] = Field(init=False)  # a person's entry, by name

    approvers: list[str] = Field(default_factory=list, description="approve SEV-0 (two of them) and SEV-1")
    on_call: list[str] = Field(default_factory=list, description="approve SEV-2..SEV-4; at least one is required")
    dbas: list[str] = Field(default_factory=list, description="also approve every database snapshot restore")
    security: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _roles_are_lists(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if key not in ROLE_LABEL and not isinstance(value, (dict, Person)):
                    raise ValueError(f"{key!r} is not a role (roles: {', '.join(ROLE_LABEL)}) and a person's entry is "
                                     f"a mapping, e.g. {key}: {{email: {key}@rastup.com, slack_id: U01ABCDEF}}")
        return data

    def everyone(self) -> set[str]:
        return {*self.approvers, *self.on_call, *self.dbas, *self.security}

    @property
    def directory(self) -> dict[str, Person]:
        """Each person's entry, by name."""
        return dict(self.model_extra or {})

    def by_claim(self, claim: str, value: str) -> str | None:
        """The person whose ``claim`` is ``value`` (e-mail addresses compare case-insensitively)."""
        want = value.casefold() if "@" in value else value
        for name, person in self.directory.items():
            have = person.claim(claim)
            if have is not None and (have.casefold() if "@" in have else have) == want:
                return name
        return None

    def by_slack_id(self, slack_id: str) -> str | None:
        return next((name for name, p in self.directory.items() if p.slack_id == slack_id), None)


class Catalog(Strict):
    """The whole file. Each name under a section is what people and alerts call the target."""

    people: People
    # Required in a catalog file (check_catalog says so); None only in histories recorded before it existed.
    identity: IdentityConfig | None = Field(None, description="how decisions are proven (docs/identity.md)")
    policy: Policy = Field(default_factory=Policy, description="overrides of the runbook's policy")
    services: dict[str, Service] = Field(default_factory=dict, description="ECS services (ServiceRollback)")
    databases: dict[str, Database] = Field(default_factory=dict, description="DatabaseRollback")
    sites: dict[str, Site] = Field(default_factory=dict, description="S3 + CloudFront frontends (FrontendRollback)")
    functions: dict[str, LambdaFunction] = Field(default_factory=dict, description="LambdaRollback")
    alert_rules: list[AlertRule] = Field(default_factory=list, description="used by receiver.py, in order")
    stacks: dict[str, Stack] = Field(default_factory=dict, description="Terraform stacks (InfraRollback)")
    flag_stores: dict[str, FlagStoreConfig] = Field(default_factory=dict, description="where flags live")
    flags: dict[str, Flag] = Field(default_factory=dict, description="FeatureFlagRollback")
    configs: dict[str, ConfigTarget] = Field(default_factory=dict, description="ConfigRollback")
    prometheus: Prometheus | None = Field(None, description="the server metrics with provider prometheus read")
    releases: dict[str, Release] = Field(default_factory=dict, description="what each release shipped "
                                         "(ReleaseRollback, docs/releases.md); releases the pipeline recorded "
                                         "(starter.py release record) need no entry here")

    @model_validator(mode="after")
    def _flags_have_stores(self) -> "Catalog":
        for name, f in self.flags.items():
            if f.store not in self.flag_stores:
                raise ValueError(f"flags.{name}.store {f.store!r} is not under flag_stores: "
                                 f"(known: {', '.join(sorted(self.flag_stores)) or 'none'})")
            if f.kill_switch and f.cities:
                raise ValueError(f"flags.{name}: a kill switch is on or off everywhere; remove its cities")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> "Catalog":
        names = [r.name for r in self.alert_rules]
        if len(set(names)) != len(names):
            raise ValueError(f"alert_rules: each rule needs its own name (given: {', '.join(names)})")
        if not self.people.on_call:
            raise ValueError("people.on_call must list at least one on-call engineer")
        for section, entries in (("flags", self.flags), ("configs", self.configs)):
            for name, entry in entries.items():
                for svc in entry.services:
                    if svc not in self.services:
                        raise ValueError(f"{section}.{name}.services: {svc!r} is not under services: "
                                         f"(known: {', '.join(sorted(self.services)) or 'none'})")
        if self.prometheus is None:
            uses = [m.name for m in self._metrics() if m.provider == "prometheus"]
            if uses:
                raise ValueError(f"metrics {', '.join(uses)} use provider prometheus: add prometheus: {{url: ...}}")
        for name, db in self.databases.items():
            if db.app_service and db.app_service not in self.services:
                raise ValueError(f"databases.{name}.app_service {db.app_service!r} is not under services: "
                                 f"(known: {', '.join(sorted(self.services)) or 'none'})")
        return self

    @model_validator(mode="after")
    def _names_unique_across_kinds(self) -> "Catalog":
        """A name means one target: `starter.py status NAME` and alerts find its kind from it."""
        seen: dict[str, str] = {}
        for section, names in self.sections().items():
            for name in names:
                if name in seen:
                    raise ValueError(f"the name {name!r} is under both {seen[name]}: and {section}:; a name must be "
                                     "unique across kinds (the CLI and alerts find the kind from it): rename one")
                seen[name] = section
        return self

    def sections(self) -> dict[str, dict[str, Any]]:
        """The target sections by their YAML name (``services``, ``flags``, ...)."""
        return {"services": self.services, "databases": self.databases, "sites": self.sites,
                "functions": self.functions, "stacks": self.stacks, "flags": self.flags, "configs": self.configs}

    def _metrics(self) -> list[MetricQuery]:
        entries = [*self.services.values(), *self.sites.values(), *self.functions.values(), *self.flags.values(),
                   *self.configs.values()]
        return [m for e in entries for m in e.metrics]

    def service(self, name: str) -> Service:
        return _lookup("service", self.services, name)

    def site(self, name: str) -> Site:
        return _lookup("site", self.sites, name)

    def function(self, name: str) -> LambdaFunction:
        return _lookup("function", self.functions, name)

    def flag(self, name: str) -> Flag:
        return _lookup("flag", self.flags, name)

    def config(self, name: str) -> AppConfigTarget | SecretTarget:
        return _lookup("config", self.configs, name)

    def stack(self, name: str) -> Stack:
        return _lookup("stack", self.stacks, name)

    def database(self, name: str) -> Database:
        return _lookup("database", self.databases, name)


def _lookup(kind: str, section: dict[str, T], name: str) -> T:
    """The catalog entry, or an error naming what exists (``kind`` + "s" is the YAML section)."""
    try:
        return section[name]
    except KeyError:
        raise UnknownTarget(kind, name, sorted(section)) from None


class UnknownTarget(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        super().__init__(
            f"{kind} {name!r} is not in the catalog (known: {', '.join(known) or 'none'}); "
            f"add it under '{kind}s:' or fix the name"
        )


class CatalogError(ValueError):
    """The catalog file is missing or invalid. The message is meant for a person."""


def _format(path: Path, problems: list[str]) -> str:
    lines = [f"{path}: {len(problems)} problem(s) in the catalog (reference: {REFERENCE}):"]
    return "\n".join(lines + [f"  - {p}" for p in problems])


def check_catalog(catalog: Catalog) -> list[str]:
    """What the models cannot check without breaking replay (see AlertRule.kind) or without the
    procedures' input models: each alert rule's kind and input, and the automation list.
    Run on every load of the file, so the worker, the receiver and `starter.py doctor` all refuse it."""
    from common.api import CATALOG_LOOKUP, PROCEDURES  # common.api imports this module

    problems = []
    for i, rule in enumerate(catalog.alert_rules):
        where = f"alert_rules.{i}"
        if rule.kind not in PROCEDURES:
            problems.append(f"{where}.kind: {rule.kind!r} is not a procedure; use one of: {', '.join(PROCEDURES)} "
                            f"[{REFERENCE}#alertrule]")
            continue
        problems += [f"{where}.input{p} [{REFERENCE}#alertrule]" for p in _rule_input_problems(rule, catalog, *PROCEDURES[rule.kind][1:],
                                                                         CATALOG_LOOKUP.get(rule.kind, ""))]
    problems += _identity_problems(catalog)
    problems += release_problems(catalog)
    rules = {r.name for r in catalog.alert_rules}
    for entry in catalog.policy.automation_may_proceed:
        source, sep, rule_name = entry.partition(":")
        if entry != AUTO_ROLLBACK_REQUESTER and not (sep and source and rule_name in rules):
            problems.append(
                f"policy.automation_may_proceed: {entry!r} is neither '{AUTO_ROLLBACK_REQUESTER}' (the auto-rollback "
                "schedule) nor '<source>:<name of a rule under alert_rules>' (rules: "
                f"{', '.join(sorted(rules)) or 'none'}), e.g. 'alertmanager:high-error-rate' [{REFERENCE}#policy]")
    return problems


def release_problems(catalog: Catalog) -> list[str]:
    """Each release names only what the catalog has (docs/releases.md)."""
    from common.releases import valid_name

    problems = []
    for name, rel in catalog.releases.items():
        if not valid_name(name):
            problems.append(f"releases.{name}: a release name is letters, digits and . _ - (e.g. v1.2.3)")
        for section, names in (("services", rel.services), ("functions", rel.functions), ("sites", rel.sites),
                               ("flags", rel.flags), ("flags", rel.kill_switches),
                               ("databases", rel.databases)):
            known = getattr(catalog, section)
            problems += [f"releases.{name}: {n!r} is not under {section}: (known: {', '.join(sorted(known)) or 'none'})"
                         for n in names if n not in known]
    return problems


def _identity_problems(catalog: Catalog) -> list[str]:
    """Never silently unverified, and every person who can decide can prove who they are."""
    ident, doc = catalog.identity, "[docs/identity.md]"
    if ident is None:
        return ["identity: missing: say how approvals are proven: identity: {mode: oidc, oidc: {issuer: ..., "
                "audience: ..., person_claim: email}} with each person's email under people:, or identity: "
                "{mode: unverified} to accept typed names (every status and notification then says so) " + doc]
    if not ident.verified:
        return []
    problems = []
    claim = ident.oidc.person_claim if ident.oidc else None
    directory = catalog.people.directory
    for name, person in directory.items():
        problems += [f"people.{name}.{key}: unknown field; a person takes slack_id and the claim "
                     f"identity.oidc.person_claim names ({claim!r}) {doc}" for key in person.model_extra or {}
                     if key != claim]
    for what, value_of in ((claim or "", lambda p: p.claim(claim) if claim else None),
                           ("slack_id", lambda p: p.slack_id)):
        seen: dict[str, str] = {}
        for name, person in directory.items():
            value = value_of(person)
            key = value.casefold() if value and "@" in value else value
            if key and key in seen:
                problems.append(f"people.{name}.{what}: {value!r} is also {seen[key]}'s; each person needs their own")
            elif key:
                seen[key] = name
    ways = f"{claim} (identity.oidc.person_claim)" + (" or slack_id" if ident.slack else "")
    for role in ROLE_LABEL:
        for name in getattr(catalog.people, role):
            person = directory.get(name)
            if person is None or not ((claim and person.claim(claim)) or (ident.slack and person.slack_id)):
                problems.append(f"people.{role}: {name!r} has no {ways} under people.{name}, so nobody could prove "
                                f"to be {name}: add e.g. {name}: {{{claim}: {name}@rastup.com}} under people: {doc}")
    return problems


def _rule_input_problems(rule: AlertRule, catalog: Catalog, model: type[BaseModel], target_field: str,
                         lookup: str) -> list[str]:
    """The rule's input checked against the procedure's input model. A templated value ("{labels.x}")
    is only known when an alert arrives, so it stands in as text and its own errors are not reported."""
    templated = {k for k, v in rule.input.items() if isinstance(v, str) and "{" in v}
    sample = {**{k: ("x" if k in templated else v) for k, v in rule.input.items()},
              "severity": "SEV-2", "requested_by": f"alertmanager:{rule.name}", "reason": "alert"}
    problems = [f".{key}: the receiver proves its own starts (ROLLBACK_AUTOMATION_KEY); a rule never carries a "
                "proof: remove it" for key in sorted(PROOF_FIELDS & set(rule.input))]
    try:
        model.model_validate(sample)
    except ValidationError as e:
        allowed = ", ".join(f for f in model.model_fields
                            if f not in ("severity", "requested_by", "reason", *PROOF_FIELDS))
        for x in e.errors():
            key = str(x["loc"][0]) if x["loc"] else ""
            if key in templated:
                continue
            msg = x["msg"].removeprefix("Value error, ")
            if x["type"] == "extra_forbidden":
                msg = f"not an input of {rule.kind} rollbacks; its inputs are: {allowed}"
            elif x["type"] == "missing":
                msg = f"required by {rule.kind} rollbacks: add it (a value or a template such as {{labels.{key}}})"
            problems.append(f".{key}: {msg}" if key else f": {msg}")
    target = rule.input.get(target_field)
    if isinstance(target, str) and target_field not in templated and lookup:
        try:
            getattr(catalog, lookup)(target)
        except UnknownTarget as e:
            problems.append(f".{target_field}: {e}")
    return problems


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_LOADER)  # libyaml's C parser when installed
    except FileNotFoundError:
        raise CatalogError(
            f"{path}: catalog file not found; set ROLLBACK_CATALOG to your catalog.yaml"
        ) from None
    except yaml.YAMLError as e:
        raise CatalogError(f"{path}: not valid YAML: {e}") from None
    try:
        catalog = Catalog.model_validate(raw or {})
    except ValidationError as e:
        raise CatalogError(_format(path, [explain(Catalog, x) for x in e.errors()])) from None
    problems = check_catalog(catalog)
    if problems:
        raise CatalogError(_format(path, problems))
    return catalog
