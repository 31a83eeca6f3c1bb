"""The rollback worker. ``make run`` starts it on the embedded default:

- no ``TEMPORAL_ADDRESS``: the Temporal dev server (Web UI on :8233, state in ``.data/``);
- ``ROLLBACK_AWS=sandbox`` (the default): the local AWS sandbox (moto on :4566 seeded with
  the runbook's fleet, the service's endpoints on :8080, CloudWatch metrics).

With ``TEMPORAL_ADDRESS`` and ``ROLLBACK_AWS=real`` it starts nothing and serves a real cluster.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote

import structlog
from pydantic import SecretStr, ValidationError
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import batch
from activities.appconfig import AppConfigActivities
from activities.aws import AwsClients
from activities.catalog import CatalogActivities
from activities.cloudfront import CloudFrontActivities
from activities.ecs import EcsActivities, EcsTaskActivities
from activities.migrations import plan_migration_rollback, run_migration_command
from activities.postgres import sql_values
from activities.rds import RdsActivities
from activities.rollbacks import RollbackStartActivities
from activities.route53 import Route53Activities
from activities.releases import ReleaseActivities
from activities.s3 import S3Activities
from activities.terraform import TerraformActivities
from activities.secrets import SecretsActivities, SecretStageActivities
from activities.elbv2 import Elbv2Activities
from activities.flags import FlagActivities
from activities.http_checks import check_http
from activities.identity import IdentityActivities
from activities.incidents import IncidentActivities, IncidentSettings
from activities.known_good import KnownGoodActivities
from activities.lambda_fn import LambdaActivities
from activities.metrics import CloudWatchActivities, MetricActivities
from activities.notify import NotifyActivities
from activities.temporal_locks import LockActivities
from common import devserver
from common.catalog import Catalog
from common.leftovers import FolderInUse, Leftovers
from common.logging import configure
from common.preflight import preflight
from common.web_ui import ROLLBACKS_ONLY, with_short_failures
from common.settings import ModeError, Settings, describe_settings_error, resolve_mode
from common.api import ensure_auto_rollback_schedule
from workflows.auto import AutoRollbackCheck
from workflows.config import ConfigRollback
from workflows.database import DatabaseRollback
from workflows.flags import FeatureFlagRollback
from workflows.frontend import FrontendRollback
from workflows.infra import InfraRollback
from workflows.lambda_fn import LambdaRollback
from workflows.lock import TargetLock
from workflows.release import ReleaseRollback
from workflows.service import ServiceRollback

log = structlog.get_logger("worker")

# workflows/verdicts.py judges with SciPy (Mann-Whitney U): numpy and scipy import parts of
# themselves lazily, so they pass through the workflow sandbox whole (deterministic computation).
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("numpy", "scipy"))

ACTIVITY_THREADS = 32  # activities at once (thread pool); boto3's connection pools are sized to it
# Workflows kept in memory between tasks. Each rollback in flight is two (itself and its TargetLock), so
# the SDK's default of 1,000 evicted half of 1,000 waiting rollbacks, and a status query on one of those
# replayed its whole history first (the query's long tail in make bench).
CACHED_WORKFLOWS = 2_500

WORKFLOWS = [ServiceRollback, DatabaseRollback, FrontendRollback, LambdaRollback, InfraRollback, AutoRollbackCheck, TargetLock,
             FeatureFlagRollback, ConfigRollback, ReleaseRollback]


def activities(client: Client, settings: Settings, catalog_path: Path, task_queue: str) -> list:
    aws = AwsClients(concurrency=ACTIVITY_THREADS + batch.MOST_AT_ONCE)  # a fleet's batches have threads of their own
    ecs, elbv2, cw = EcsActivities(aws), Elbv2Activities(aws), CloudWatchActivities(aws)
    locks = LockActivities(client, task_queue)
    tasks, rds = EcsTaskActivities(aws), RdsActivities(aws)
    s3, cf = S3Activities(aws), CloudFrontActivities(aws)
    lam = LambdaActivities(aws)
    verdicts = KnownGoodActivities(aws)
    tf = TerraformActivities(settings.data_dir / "infra")
    automation_key = settings.automation_secret()
    identity = IdentityActivities(catalog_path, settings.slack_signing_secret, automation_key)
    return [
        identity.verify_identity, identity.vouch,
        *_catalog_activities(catalog_path),
        ecs.describe_deployed, ecs.list_versions, ecs.identify, ecs.deploy_task_definition,
        elbv2.get_weights, elbv2.set_weights,
        cw.read_metric, cw.alarms_firing, MetricActivities(aws).read_samples,
        check_http,
        NotifyActivities(settings.slack_webhook_url, settings.ui_url, settings.dashboard_url,
                         settings.temporal_namespace, catalog_path).notify,
        *_incident_activities(settings),
        locks.acquire_lock, locks.holder_running, locks.acquire_locks, locks.release_locks,
        *_start_activities(client, task_queue, catalog_path, automation_key),
        tasks.run_one_off, tasks.task_state, tasks.force_new_deployment,
        rds.describe_instance, rds.find_instance, rds.list_snapshots, rds.restore_from_snapshot,
        SecretsActivities(aws).point_secret_at, Route53Activities(aws).upsert_cname,
        sql_values, plan_migration_rollback, run_migration_command,
        s3.plan_release_sync, s3.apply_release_sync, s3.live_release, s3.plan_object_versions, s3.apply_object_versions,
        s3.read_object, cf.create_invalidation, cf.invalidation_done,
        lam.list_function_versions, lam.get_function_alias, lam.point_function_alias, lam.invoke_function,
        lam.identify_functions, lam.read_function_aliases, lam.point_function_aliases,
        verdicts.record_verdicts, verdicts.ecs_verdict_of,
        tf.resolve_stack_commits, tf.checkout_stack, tf.plan_stack, tf.apply_stack_plan, tf.validate_stack,
        *_config_activities(aws),
        *_release_activities(aws, catalog_path),
    ]


def _catalog_activities(catalog_path: Path) -> list:
    catalog = CatalogActivities(catalog_path)  # one per worker: it caches the parsed file
    return [catalog.load_catalog, catalog.catalog_for]


def _release_activities(aws: AwsClients, catalog_path: Path) -> list:
    """Releases (workflows/release.py): what one shipped (SSM or the catalog), a site's release prefixes."""
    releases = ReleaseActivities(aws, catalog_path)
    return [releases.find_release, releases.release_prefixes]


def _start_activities(client: Client, task_queue: str, catalog_path: Path, automation_key: SecretStr | None) -> list:
    """Temporal from a workflow: starting a rollback (the auto-rollback check, signed with the automation
    key), its previous report."""
    starts = RollbackStartActivities(client, task_queue, catalog_path, automation_key)
    return [starts.start_or_join_rollback, starts.previous_check]


def _config_activities(aws: AwsClients) -> list:
    """Feature flags (the flag store) and configuration rollbacks (AppConfig, Secrets Manager stages)."""
    flags, ac, stages = FlagActivities(aws), AppConfigActivities(aws), SecretStageActivities(aws)
    return [flags.read_flag, flags.write_flag, flags.deploy_flags, flags.flag_rollout, flags.read_served_flag,
            ac.resolve, ac.history, ac.hosted_versions, ac.hosted_version, ac.start_deployment, ac.deployment,
            ac.served, ac.strategy_id, stages.secret_stages, stages.move_current]


def _incident_activities(settings: Settings) -> list:
    incidents = IncidentActivities(IncidentSettings(
        statuspage_url=settings.statuspage_url, statuspage_token=settings.statuspage_token,
        ticket_url=settings.ticket_url, ticket_token=settings.ticket_token,
        pagerduty_routing_key=settings.pagerduty_routing_key,
        pagerduty_secondary_routing_key=settings.pagerduty_secondary_routing_key, pagerduty_url=settings.pagerduty_url))
    return [incidents.update_status_page, incidents.create_ticket, incidents.page]


def build_worker(client: Client, settings: Settings, catalog_path: Path, task_queue: str | None = None) -> Worker:
    task_queue = task_queue or settings.task_queue
    return Worker(
        with_short_failures(client),  # a bad input fails with a short message and an example to paste
        task_queue=task_queue,
        workflows=WORKFLOWS,
        workflow_runner=WORKFLOW_RUNNER,
        activities=activities(client, settings, catalog_path, task_queue),
        activity_executor=ThreadPoolExecutor(max_workers=ACTIVITY_THREADS),
        max_cached_workflows=CACHED_WORKFLOWS,
        # Bad input from the Web UI / CLI fails the workflow at once instead of hanging.
        workflow_failure_exception_types=[ValidationError],
    )


def identity_line(catalog: Catalog | None, settings: Settings) -> str:
    """How decisions are proven, for the banner: loud when they are not."""
    ident = catalog.identity if catalog else None
    if ident is None or not ident.verified:
        return "[bold red]APPROVALS ARE NOT VERIFIED[/bold red] (identity.mode: unverified): typed names count"
    parts = [f"OIDC tokens from {ident.oidc.issuer}" if ident.oidc else ""]
    if ident.slack:
        parts.append("Slack buttons" + ("" if settings.slack_signing_secret else
                                        " (NOT checkable: set ROLLBACK_SLACK_SIGNING_SECRET)"))
    return "Identity: decisions count only with proof: " + ", ".join(p for p in parts if p)


def banner(settings: Settings, sandbox_info: object | None, catalog: Catalog | None = None) -> None:
    from rich.console import Console
    from rich.panel import Panel

    ui = (f"http://127.0.0.1:{settings.dev_ui_port}" if not settings.temporal_address
          else "your cluster's Web UI")
    mode = "SANDBOX (local moto AWS, nothing real is touched)" if sandbox_info else "REAL AWS"
    lines = [
        f"[bold]{mode}[/bold]",
        f"Temporal: {settings.address} (namespace {settings.temporal_namespace}), task queue "
        f"[bold]{settings.task_queue}[/bold]",
        f"Web UI:   {ui}" + (f"  (rollbacks only: {ui}/namespaces/{settings.temporal_namespace}/workflows?query="
                             f"{quote(ROLLBACKS_ONLY)})" if not settings.temporal_address else ""),
        f"Metrics:  http://127.0.0.1:{settings.metrics_port}/metrics" if settings.metrics_port else "Metrics: off",
        "Auto-rollback: schedule 'auto-rollback' checks services marked auto_rollback every 5 minutes "
        "(starter.py schedule status|pause|resume)",
        identity_line(catalog, settings),
    ]
    if sandbox_info is not None:
        http = getattr(sandbox_info, "http_base", "")
        resumed = getattr(sandbox_info, "resumed", False)
        lines += [
            f"Service:  {http}/api/version  " + (
                "(the sandbox's AWS as the last run left it: rollbacks in flight carry on)" if resumed else
                "(the sandbox's api-service: v1.2.3, elevated error rate)"),
            f"Latency:  {getattr(sandbox_info, 'latency_source', '')}",
            "The sandbox marks api for auto-rollback: left alone, the schedule rolls it back within ~10 min.",
        ]
    console = Console(stderr=True, soft_wrap=True)  # soft wrap: commands stay whole, copy-pasteable
    Console(stderr=True).print(Panel("\n".join(lines), title="rollback worker", border_style="green"))
    if sandbox_info is not None:  # outside the panel, so a narrow terminal cannot break the command
        console.print("In another terminal, prove you are dana (the sandbox's identity provider signs a token for "
                      "any catalog person) and roll 'api' back to its previous version:\n"
                      "  [bold].venv/bin/python starter.py login dana[/bold]\n"
                      "  [bold].venv/bin/python starter.py start api --severity SEV-2 --requested-by dana "
                      "--reason 'error rate after v1.2.3'[/bold]\n"
                      "  .venv/bin/python starter.py status api --watch\n"
                      "dana is on call and her token proves it, so SEV-2 is approved at start; start it with "
                      "--severity SEV-1, then '.venv/bin/python starter.py login alice' and "
                      "'.venv/bin/python starter.py approve api --as alice' to see the approval gate.")
    if sandbox_info is not None:
        console.print("The sandbox's AWS and the rollbacks' history are kept in the data folder across restarts. "
                      "To start over from a clean sandbox: Ctrl-C, then [bold]make reset[/bold] and [bold]make run[/bold].")
    console.print("Ctrl-C stops everything this started.")


def _settings() -> Settings:
    """The settings, or one paragraph naming the bad variable (never a traceback)."""
    try:
        return Settings()
    except ValidationError as e:
        raise StartupError(describe_settings_error(e)) from None


class StartupError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


async def main() -> int:
    try:
        return await serve()
    except StartupError as e:
        print(f"the rollback worker cannot start: {e}", file=sys.stderr)
        return e.code


async def serve() -> int:
    settings = _settings()
    configure(settings.log_format, settings.log_level)
    try:
        mode = resolve_mode(settings)  # the same rule as starter.py and receiver.py
    except ModeError as e:
        raise StartupError(str(e)) from None
    with ExitStack() as stack:
        sandbox_info = None
        leftovers = Leftovers(settings.data_dir)
        try:
            if mode.sandbox or mode.dev_server:  # what a killed worker left running: stopped, ports free
                for what in leftovers.clean_up():
                    log.warning(f"stopped {what}, left running by a worker that did not stop cleanly")
                stack.callback(leftovers.forget)  # last: everything recorded is stopped by then
            if mode.sandbox:
                from sandbox import Sandbox, aws_env

                prom = settings.sandbox_prometheus_port
                sb = Sandbox(port=settings.sandbox_port, http_port=settings.sandbox_http_port,
                             data_dir=settings.data_dir, prometheus_port=None if prom == "off" else prom)
                sandbox_info = sb.start()
                stack.callback(sb.stop)
                for name, pid, marker in sb.processes():
                    leftovers.record(name, pid, marker)
                os.environ.update(aws_env(sandbox_info.endpoint_url))
            if mode.dev_server:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                server_log = settings.data_dir / "temporal.log"
                proc = devserver.start_dev_server(settings.dev_server_port, settings.dev_ui_port,
                                                  settings.data_dir / "temporal.db", log_file=server_log)
                stack.callback(devserver.stop, proc)
                leftovers.record("the Temporal dev server", proc.pid, str(settings.data_dir / "temporal.db"))
                await devserver.wait_until_serving(settings.dev_server_port, log_file=server_log)
        except FolderInUse as e:
            raise StartupError(str(e)) from None
        except (RuntimeError, OSError) as e:  # a port in use, a missing binary
            raise StartupError(f"could not start the local {'sandbox' if mode.sandbox else 'dev server'}: {e}") from None
        # Temporal, namespace, search attributes, catalog, AWS, tools, secrets: each failure one paragraph.
        report = await preflight(settings, mode, "worker", metrics_port=settings.metrics_port or None)
        if not report.ok:
            print(report.render("the rollback worker"), file=sys.stderr)
            return report.exit_code
        client, catalog_path, catalog = report.client, mode.catalog, report.catalog
        assert client is not None
        for line in report.passed:
            log.info(f"preflight: {line}")
        if catalog is not None and catalog.identity is not None and not catalog.identity.verified:
            log.warning("APPROVALS ARE NOT VERIFIED: the catalog says identity.mode: unverified, so any typed "
                        "name counts as that person", catalog=str(catalog_path))
        if settings.automation_secret() is None:
            log.warning("ROLLBACK_AUTOMATION_KEY is not set: the auto-rollback check's and the receiver's rollbacks "
                        "cannot prove they are automation, so they wait for approvals like anyone's")
        try:  # runbook: Automation. Best effort: rollbacks do not depend on it
            schedule = await ensure_auto_rollback_schedule(client, settings.task_queue)
            log.info(f"auto-rollback schedule {schedule}", schedule="auto-rollback", every_minutes=5)
        except RPCError as e:
            log.error("could not create or update the auto-rollback schedule", error=e.message)
        worker = build_worker(client, settings, catalog_path)
        banner(settings, sandbox_info, catalog)
        log.info("worker started", task_queue=settings.task_queue, catalog=str(catalog_path), mode=mode.name)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with worker:
            await stop.wait()
            log.info("shutting down")
    return 0


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything we started is stopped by now (main's ExitStack). Skip interpreter teardown: the
    # SDK's Rust threads can abort it at random ("PyGILState_Release ... finalizing", exit -6;
    # temporalio/sdk-python#300), which would hide the exit code a refused start means.
    os._exit(code)
