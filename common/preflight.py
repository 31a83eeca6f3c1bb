"""Preflight: everything a worker, the alert receiver or ``starter.py doctor`` needs, checked at start.

Each failure is ONE paragraph that names the setting or thing and the fix, and the process exits
non-zero without a traceback. The checks, in order:

- secrets: every secret setting that is set has a value (``VAR=`` counts as unset; say so);
- the receiver: at least one way to authenticate alerts;
- the catalog: it loads and validates, alert rules included (``common.catalog.load_catalog``);
- Temporal: reachable, the namespace exists, our search attributes are registered (the worker and
  the receiver register missing ones; when they may not, the exact ``temporal operator`` command);
- AWS (production worker and doctor): region and credentials resolve, and one cheap read call works
  for each AWS service the catalog uses, on the catalog's own resources;
- tools: ``git`` and each stack's Terraform command, when the catalog has stacks.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from common import SEARCH_ATTRIBUTES
from common.catalog import Catalog, CatalogError, load_catalog
from common.settings import Mode, Settings

Role = Literal["worker", "receiver", "doctor"]
TEMPORAL_TIMEOUT = timedelta(seconds=10)

# Setting env var -> Settings field, for every secret (values are never printed).
SECRETS = {"TEMPORAL_API_KEY": "temporal_api_key", "ROLLBACK_SLACK_WEBHOOK_URL": "slack_webhook_url",
           "ROLLBACK_STATUSPAGE_TOKEN": "statuspage_token", "ROLLBACK_TICKET_TOKEN": "ticket_token",
           "ROLLBACK_PAGERDUTY_ROUTING_KEY": "pagerduty_routing_key", "ROLLBACK_RECEIVER_TOKEN": "receiver_token",
           "ROLLBACK_RECEIVER_HMAC_SECRET": "receiver_hmac_secret",
           "ROLLBACK_SLACK_SIGNING_SECRET": "slack_signing_secret", "ROLLBACK_AUTOMATION_KEY": "automation_key"}


@dataclass
class Problem:
    check: str
    text: str  # one paragraph: what is wrong, and the fix
    code: int = 2  # the exit code: 2 configuration, 3 Temporal unreachable


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)  # one line per check that passed
    problems: list[Problem] = field(default_factory=list)
    client: Client | None = None
    catalog: Catalog | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return max((p.code for p in self.problems), default=0)

    def render(self, who: str) -> str:
        """What a person reads when the start is refused (stderr)."""
        n = len(self.problems)
        head = f"{who} cannot start: {n} problem{'s' if n > 1 else ''}, each with its fix (docs/production.md):"
        return "\n\n".join([head, *(f"[{p.check}] {p.text}" for p in self.problems)]) + "\n"


class PreflightFailed(Exception):
    def __init__(self, report: Report) -> None:
        super().__init__("; ".join(p.text for p in report.problems))
        self.report = report


# --- the checks ---------------------------------------------------------------------------------

def check_secrets(environ: Any = os.environ) -> list[Problem]:
    """A secret set to nothing is refused, not taken as configured (nor silently as unset)."""
    problems = []
    for env, name in SECRETS.items():
        if env in environ and not environ[env].strip():
            problems.append(Problem("secrets", (
                f"{env} is set but empty. An empty secret is never used as one (it is treated as unset), "
                f"so set it to the real value or remove the variable (in docker compose: leave it out of "
                f".env and the shell, or give it a value).")))
    return problems


def check_receiver_auth(settings: Settings) -> list[Problem]:
    if settings.receiver_token or settings.receiver_hmac_secret or settings.receiver_sources:
        return []
    return [Problem("receiver authentication", (
        "neither ROLLBACK_RECEIVER_TOKEN nor ROLLBACK_RECEIVER_HMAC_SECRET has a value: set ROLLBACK_RECEIVER_TOKEN "
        "(bearer token) or ROLLBACK_RECEIVER_HMAC_SECRET (HMAC-SHA256 signatures), or both, and/or "
        "ROLLBACK_RECEIVER_SOURCES for the generic endpoint: the receiver never accepts unauthenticated alerts "
        "(README, Alert receiver)."))]


def check_catalog(mode: Mode) -> tuple[Catalog | None, list[Problem]]:
    try:
        return load_catalog(mode.catalog), []
    except CatalogError as e:
        text = str(e)
        if mode.sandbox and not mode.catalog.exists():
            text = (f"{mode.catalog}: the sandbox's catalog does not exist yet; the worker writes it when it starts "
                    "the sandbox: start it with 'make run' first (or set ROLLBACK_DATA_DIR to the worker's data "
                    "folder).")
        return None, [Problem("catalog", text)]


def _rpc_reason(e: BaseException) -> str:
    text = getattr(e, "message", "") or str(e)
    for marker in ('message: "', 'error: "', 'ConnectError("'):
        if marker in text:
            return text.split(marker, 1)[1].split('"', 1)[0]
    return text


async def check_temporal(settings: Settings, connect: Callable[..., Any], **connect_kw: Any
                         ) -> tuple[Client | None, list[Problem]]:
    where = f"Temporal at {settings.address} (namespace {settings.temporal_namespace})"
    try:
        client = await connect(settings, **connect_kw)
    except (OSError, ValueError) as e:  # an unreadable TLS file, cert without key
        return None, [Problem("Temporal", f"cannot set up TLS for {where}: {e}. Fix TEMPORAL_TLS_* (docs/production.md).")]
    except RuntimeError as e:  # what Client.connect raises when nothing answers
        fix = ("check that the frontend at TEMPORAL_ADDRESS is up and reachable from here, the port is the gRPC "
               "port (7233 by default, not the Web UI's), and TLS (TEMPORAL_TLS, TEMPORAL_TLS_CA, "
               "TEMPORAL_TLS_SERVER_NAME, TEMPORAL_API_KEY) matches the server"
               if settings.temporal_address else
               "TEMPORAL_ADDRESS is not set, so this is the local dev server: start it with 'make run'")
        return None, [Problem("Temporal", f"cannot reach {where}: {_rpc_reason(e)}. To fix: {fix}.", code=3)]
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=settings.temporal_namespace), timeout=TEMPORAL_TIMEOUT)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None, [Problem("namespace", (
                f"namespace {settings.temporal_namespace!r} does not exist on {settings.address}. Create it "
                f"('temporal operator namespace create --namespace {settings.temporal_namespace} --address "
                f"{settings.address}') or set TEMPORAL_NAMESPACE to an existing one."))]
        return None, [Problem("namespace", (
            f"{where} refused to describe the namespace ({e.status.name if e.status else '?'}: {e.message}). "
            "Check TEMPORAL_NAMESPACE and the credentials (TEMPORAL_API_KEY or the mTLS certificate) are for it."),
            code=3 if e.status == RPCStatusCode.UNAVAILABLE else 2)]
    return client, []


def search_attribute_command(settings: Settings, names: list[str]) -> str:
    args = " ".join(f"--name {n} --type Keyword" for n in names)
    return (f"temporal operator search-attribute create --address {settings.address} "
            f"--namespace {settings.temporal_namespace} {args}")


async def check_search_attributes(client: Client, settings: Settings, register: bool) -> list[Problem]:
    """Present, or registered now, or the exact command a Temporal admin runs."""
    namespace = settings.temporal_namespace
    try:
        have = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace), timeout=TEMPORAL_TIMEOUT)
        missing = [n for n in SEARCH_ATTRIBUTES if n not in have.custom_attributes]
        if not missing:
            return []
        if register:
            await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={n: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for n in missing}),
                timeout=TEMPORAL_TIMEOUT)
            return []
        why = "they are not registered"
    except RPCError as e:
        missing = list(SEARCH_ATTRIBUTES)
        why = f"registering them was refused ({e.status.name if e.status else '?'}: {e.message})"
    return [Problem("search attributes", (
        f"the workflows need the Keyword search attributes {', '.join(missing)} in namespace {namespace!r}, and "
        f"{why}. Have a Temporal admin run: {search_attribute_command(settings, missing)} "
        "(Temporal Cloud: add them to the namespace in the Cloud UI or with tcld), then start again."))]


# --- AWS ----------------------------------------------------------------------------------------

@dataclass
class Probe:
    service: str  # boto3 service name
    call: str  # what a person reads, e.g. "ecs describe-services rastup-prod/api-service"
    permission: str  # the IAM action it needs
    run: Callable[[Any], Any]


def aws_probes(catalog: Catalog) -> list[Probe]:
    """One cheap read per AWS service the catalog uses, on its first resource of that kind:
    the call (and permission) a rollback itself makes first."""
    probes: dict[str, Probe] = {}

    def add(p: Probe) -> None:
        probes.setdefault(p.service, p)

    for svc in catalog.services.values():
        ref = svc.ecs
        add(Probe("ecs", f"ecs describe-services {ref.cluster}/{ref.service}", "ecs:DescribeServices",
                  lambda c, r=ref: _ecs_service(c, r.cluster, r.service)))
        if svc.blue_green:
            arn = svc.blue_green.listener_arn
            add(Probe("elbv2", f"elbv2 describe-listeners {arn}", "elasticloadbalancing:DescribeListeners",
                      lambda c, a=arn: c.describe_listeners(ListenerArns=[a])))
    metrics = [m for group in (*catalog.services.values(), *catalog.sites.values(), *catalog.functions.values())
               for m in group.metrics]
    if metrics:
        m = metrics[0]
        add(Probe("cloudwatch", f"cloudwatch get-metric-data {m.namespace}/{m.metric}", "cloudwatch:GetMetricData",
                  lambda c, q=m: _metric(c, q.namespace, q.metric, q.stat)))
    for db in catalog.databases.values():
        if db.rds_instance:
            add(Probe("rds", f"rds describe-db-instances {db.rds_instance}", "rds:DescribeDBInstances",
                      lambda c, i=db.rds_instance: c.describe_db_instances(DBInstanceIdentifier=i)))
        if db.cutover and db.cutover.kind == "secret" and db.cutover.secret_id:
            sid = db.cutover.secret_id
            add(Probe("secretsmanager", f"secretsmanager describe-secret {sid}", "secretsmanager:DescribeSecret",
                      lambda c, s=sid: c.describe_secret(SecretId=s)))
        if db.cutover and db.cutover.kind == "route53" and db.cutover.hosted_zone_id:
            zone = db.cutover.hosted_zone_id
            add(Probe("route53", f"route53 get-hosted-zone {zone}", "route53:GetHostedZone",
                      lambda c, z=zone: c.get_hosted_zone(Id=z)))
    for site in catalog.sites.values():
        add(Probe("s3", f"s3 list-objects-v2 {site.bucket}", "s3:ListBucket",
                  lambda c, b=site.bucket: c.list_objects_v2(Bucket=b, MaxKeys=1)))
        if site.distribution_id:
            add(Probe("cloudfront", f"cloudfront list-invalidations {site.distribution_id}",
                      "cloudfront:ListInvalidations",
                      lambda c, d=site.distribution_id: c.list_invalidations(DistributionId=d, MaxItems="1")))
    for fn in catalog.functions.values():
        add(Probe("lambda", f"lambda list-versions-by-function {fn.function_name}", "lambda:ListVersionsByFunction",
                  lambda c, n=fn.function_name: c.list_versions_by_function(FunctionName=n, MaxItems=1)))
    for target in catalog.configs.values():
        if target.kind == "secret":
            add(Probe("secretsmanager", f"secretsmanager describe-secret {target.secret_id}",
                      "secretsmanager:DescribeSecret", lambda c, s=target.secret_id: c.describe_secret(SecretId=s)))
    if catalog.flag_stores or any(t.kind == "appconfig" for t in catalog.configs.values()):
        add(Probe("appconfig", "appconfig list-applications", "appconfig:ListApplications",
                  lambda c: c.list_applications(MaxResults=1)))
    return list(probes.values())


def _ecs_service(client: Any, cluster: str, service: str) -> None:
    failures = client.describe_services(cluster=cluster, services=[service]).get("failures") or []
    if failures:
        raise LookupError(f"ECS answered {failures[0].get('reason', 'a failure')} for service {service!r} in "
                          f"cluster {cluster!r}")


def _metric(client: Any, namespace: str, metric: str, stat: str) -> None:
    end = datetime.now(timezone.utc)
    client.get_metric_data(StartTime=end - timedelta(minutes=5), EndTime=end, MetricDataQueries=[{
        "Id": "preflight", "ReturnData": True,
        "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": metric}, "Period": 60, "Stat": stat}}])


def check_aws(catalog: Catalog) -> tuple[list[str], list[Problem]]:
    """Region and credentials resolve, STS says who we are, then each probe. Blocking (boto3)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from activities.aws import ACCESS_DENIED, CONFIG_ERRORS, config_problem

    try:
        session = boto3.session.Session()
        if session.region_name is None:
            from botocore.exceptions import NoRegionError
            raise NoRegionError()
        if session.get_credentials() is None:
            from botocore.exceptions import NoCredentialsError
            raise NoCredentialsError()
    except CONFIG_ERRORS as e:
        return [], [Problem("AWS", f"{config_problem(e)}. Every AWS step would fail; see docs/production.md.")]
    region = session.region_name
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    where = f"region {region}" + (f", endpoint {endpoint}" if endpoint else "")
    config = Config(retries={"total_max_attempts": 2}, connect_timeout=5, read_timeout=15)
    passed: list[str] = []
    problems: list[Problem] = []
    for probe in [Probe("sts", "sts get-caller-identity", "(none)", lambda c: c.get_caller_identity()),
                  *aws_probes(catalog)]:
        try:
            answer = probe.run(session.client(probe.service, config=config))
        except ClientError as e:
            err = e.response.get("Error", {})
            code, message = err.get("Code", "Unknown"), err.get("Message", "")
            if code in ACCESS_DENIED or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                fix = ("the credentials are not valid: check AWS_ACCESS_KEY_ID/AWS_PROFILE and that they are not "
                       "expired" if probe.service == "sts" else
                       f"grant the worker's IAM role {probe.permission} (and what docs/production.md lists)")
                problems.append(Problem("AWS", f"{probe.call} ({where}) was denied: {code}: {message}. To fix: {fix}."))
            else:
                problems.append(Problem("AWS", (
                    f"{probe.call} ({where}) failed: {code}: {message}. Check that the catalog's names exist in "
                    f"{region} (AWS_DEFAULT_REGION) and that the worker may call {probe.permission}.")))
        except LookupError as e:
            problems.append(Problem("AWS", f"{probe.call} ({where}): {e}. Check the catalog's names and the region "
                                           "(AWS_DEFAULT_REGION)."))
        except CONFIG_ERRORS as e:
            problems.append(Problem("AWS", f"{config_problem(e)}."))
            break
        except BotoCoreError as e:
            problems.append(Problem("AWS", (
                f"{probe.call} ({where}) could not be made: {e}. Check the network path to AWS"
                + (" and AWS_ENDPOINT_URL" if endpoint else "") + " from the worker.")))
            break
        else:
            who = f" as {answer.get('Arn')}" if probe.service == "sts" and isinstance(answer, dict) else ""
            passed.append(f"AWS {probe.call}: ok{who}")
    return passed, problems


# --- tools --------------------------------------------------------------------------------------

def check_tools(catalog: Catalog) -> tuple[list[str], list[Problem]]:
    """InfraRollback needs git and the stack's Terraform (or OpenTofu) on the worker's PATH."""
    if not catalog.stacks:
        return [], []
    needed = {"git": "git (InfraRollback mirrors the stacks' repositories)"}
    for name, stack in catalog.stacks.items():
        needed.setdefault(stack.terraform[0], f"{stack.terraform[0]} (stacks.{name}.terraform)")
    passed, problems = [], []
    for command, why in needed.items():
        found = shutil.which(command)
        if found:
            passed.append(f"tool {command}: {found}")
        else:
            problems.append(Problem("tools", (
                f"{why} is not on the worker's PATH, so InfraRollback cannot run. Install it in the worker's image "
                "(the Dockerfile installs git and Terraform; see docs/production.md) or point "
                "stacks.<name>.terraform at the binary.")))
    return passed, problems


# --- all together -------------------------------------------------------------------------------

async def preflight(settings: Settings, mode: Mode, role: Role, *, connect: Callable[..., Any] | None = None,
                    **connect_kw: Any) -> Report:
    """The checks for ``role``; ``report.client`` is the connected client when Temporal passed."""
    from common.temporal import connect as default_connect

    report = Report()
    report.problems += check_secrets()
    if role == "receiver":
        report.problems += check_receiver_auth(settings)
    report.catalog, problems = check_catalog(mode)
    report.problems += problems
    if report.catalog is not None:
        report.passed.append(f"catalog {mode.catalog}: valid")
    report.client, problems = await check_temporal(settings, connect or default_connect, **connect_kw)
    report.problems += problems
    if report.client is not None:
        report.passed.append(f"Temporal {settings.address}, namespace {settings.temporal_namespace}: reachable")
        problems = await check_search_attributes(report.client, settings, register=role != "doctor")
        report.problems += problems
        if not problems:
            report.passed.append(f"search attributes {', '.join(SEARCH_ATTRIBUTES)}: registered")
    if role != "receiver" and report.catalog is not None:
        if mode.sandbox:
            report.passed.append("AWS: the local sandbox (moto) the worker starts")
        else:
            passed, problems = await asyncio.to_thread(check_aws, report.catalog)
            report.passed += passed
            report.problems += problems
        passed, problems = check_tools(report.catalog)
        report.passed += passed
        report.problems += problems
    return report
