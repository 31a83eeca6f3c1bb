"""starter.py: the on-call engineer's CLI.

    starter.py start api --severity SEV-2 --requested-by dana --reason "errors after v1.2.3"
    starter.py approve api --as alice [--comment ...]      (tells you at once if it counted)
    starter.py reject api --as alice --reason "..."
    starter.py escalate api --severity SEV-4 --as dana
    starter.py status api [--watch] [--json]
    starter.py list
    starter.py cancel api

A target is a catalog name (``api``) or a workflow id (``rollback-service-api`` or any id
typed in the Web UI). Exit codes: 0 ok, 1 the action was refused or the rollback failed,
2 bad input or nothing to act on, 3 cannot reach Temporal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from common.catalog import CatalogError, UnknownTarget, load_catalog
from common.models import (
    FINAL_PHASES, DecisionOutcome, DecisionRequest, Escalation, Phase, RollbackStatus, ServiceRollbackInput,
)
from common.settings import Settings
from common.temporal import KIND, PHASE, SEVERITY, TARGET, connect

console = Console()
err = Console(stderr=True)

# kind -> (workflow type, input model, the input field naming the target)
PROCEDURES: dict[str, tuple[str, type, str]] = {
    "service": ("ServiceRollback", ServiceRollbackInput, "service"),
}


class CliError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def workflow_id(kind: str, target: str) -> str:
    return f"rollback-{kind}-{target}"


def _describe_validation(e: ValidationError) -> str:
    return "invalid rollback request:\n" + "\n".join(
        f"  - {'.'.join(str(p) for p in x['loc']) or 'input'}: {x['msg']}" for x in e.errors())


def build_request(kind: str, fields: dict[str, Any], settings: Settings) -> Any:
    """Validate a request as the workflow will, plus the catalog name when the catalog is readable."""
    _, model, target_field = PROCEDURES[kind]
    try:
        request = model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise CliError(_describe_validation(e)) from None
    try:
        catalog = load_catalog(settings.catalog_path)
    except (CatalogError, ValueError):
        return request  # the worker's catalog decides; it answers with the same message
    try:
        getattr(catalog, kind)(getattr(request, target_field))
    except UnknownTarget as e:
        raise CliError(str(e)) from None
    return request


async def start_rollback(client: Client, kind: str, request: Any, task_queue: str,
                         wf_id: str | None = None) -> WorkflowHandle:
    """Start a rollback with the one-per-target workflow id; refuse if one is running."""
    wf_type, _, target_field = PROCEDURES[kind]
    target = getattr(request, target_field)
    wf_id = wf_id or workflow_id(kind, target)
    try:
        return await client.start_workflow(
            wf_type, request, id=wf_id, task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes([
                KIND.value_set(kind), TARGET.value_set(target), SEVERITY.value_set(request.severity),
                PHASE.value_set(Phase.starting.value)]),
        )
    except WorkflowAlreadyStartedError:
        raise CliError(f"a rollback of {kind} {target!r} is already running as workflow {wf_id}; "
                       f"follow it with 'starter.py status {target}' or cancel it first", code=1) from None


def resolve(client: Client, target: str, kind: str) -> WorkflowHandle:
    return client.get_workflow_handle(target if target.startswith("rollback-") else workflow_id(kind, target))


async def fetch_status(handle: WorkflowHandle) -> RollbackStatus:
    try:
        status = await handle.query("status", result_type=RollbackStatus)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no rollback workflow {handle.id!r}; 'starter.py list' shows the running ones") from None
        raise
    if status is None:
        raise CliError(f"workflow {handle.id} has not started its first step yet; try again in a moment", 1)
    return status


# --- rendering -------------------------------------------------------------------------

STATE_STYLE = {"succeeded": "green", "failed": "red", "running": "yellow", "skipped": "dim",
               "pending": "dim", "cancelled": "magenta"}
PHASE_STYLE = {"succeeded": "bold green", "failed": "bold red", "rejected": "bold red", "timed_out": "bold red",
               "cancelled": "bold magenta", "refused": "bold red", "awaiting_approval": "bold yellow",
               "paused": "bold yellow"}


def render(s: RollbackStatus) -> Table:
    outer = Table.grid(padding=(0, 1))
    outer.add_row(f"[bold]{s.kind} rollback of {s.target}[/bold]  "
                  f"[{PHASE_STYLE.get(s.phase.value, 'bold cyan')}]{s.phase.value}[/]  ({s.workflow_id})")
    outer.add_row(f"{s.severity} · requested by {s.requested_by} · {s.reason}")
    outer.add_row(f"version: {s.from_version or '?'} -> {s.to_version or '?'}" + ("  [dim](dry run)[/dim]" if s.dry_run else ""))
    a = s.approvals
    for r in a.required:
        outer.add_row(f"approval: {r.label}: {len(r.met_by)}/{r.count}"
                      + (f" (by {', '.join(r.met_by)})" if r.met_by else "")
                      + (f"  eligible: {', '.join(r.eligible)}" if len(r.met_by) < r.count else ""))
    for ref in a.refused:
        outer.add_row(f"[red]refused approval[/red] {ref.approver}: {ref.reason}")
    steps = Table("step", "state", "started", "ended", "detail", box=None, pad_edge=False)
    for st in s.steps:
        steps.add_row(st.name, f"[{STATE_STYLE.get(st.state.value, '')}]{st.state.value}[/]",
                      st.started_at.strftime("%H:%M:%S") if st.started_at else "",
                      st.ended_at.strftime("%H:%M:%S") if st.ended_at else "", st.detail)
    outer.add_row(steps)
    if s.checks:
        checks = Table("check", "result", "value", "baseline", "detail", box=None, pad_edge=False)
        for c in s.checks:
            res = "[green]passed[/]" if c.ok else "[dim]not checked[/]" if c.ok is None else "[red]FAILED[/]"
            checks.add_row(c.name, res, "" if c.value is None else str(c.value),
                           "" if c.baseline is None else str(c.baseline), c.detail)
        outer.add_row(checks)
    if s.regressions:
        outer.add_row(f"[bold red]{len(s.regressions)} regression(s) while monitoring[/]")
    for p in s.plan if s.dry_run else []:
        outer.add_row(f"plan: {p}")
    if s.message:
        outer.add_row(s.message)
    return outer


# --- commands --------------------------------------------------------------------------

async def cmd_start(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    fields = dict(service=a.target, to_version=a.to_version, severity=a.severity, requested_by=a.requested_by,
                  reason=a.reason, dry_run=a.dry_run or None, monitor_minutes=a.monitor_minutes,
                  rollout_percentages=[int(p) for p in a.rollout.split(",")] if a.rollout else None)
    request = build_request("service", fields, settings)
    handle = await start_rollback(client, "service", request, settings.task_queue)
    console.print(f"started [bold]{handle.id}[/bold]; follow it: starter.py status {a.target} --watch")
    if a.wait:
        return await cmd_status(client, settings, argparse.Namespace(target=handle.id, kind="service",
                                                                     watch=True, json=False))
    return 0


async def cmd_decide(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    handle = resolve(client, a.target, a.kind)
    req = DecisionRequest(decision=a.command, approver=a.as_, comment=a.comment or "", reason=a.reason or "")
    try:
        outcome = await handle.execute_update("decide", req, result_type=DecisionOutcome)
    except WorkflowUpdateFailedError as e:
        raise CliError(f"not recorded: {e.cause.message if e.cause else e}", code=1) from None
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no running rollback {handle.id!r}; 'starter.py list' shows the running ones") from None
        raise
    style = "green" if outcome.counted else "red"
    console.print(f"[{style}]{'counted' if outcome.counted else 'NOT counted'}[/]: {outcome.message}")
    return 0 if outcome.counted else 1


async def cmd_escalate(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    try:
        e = Escalation(severity=a.severity, by=a.as_, comment=a.comment or "")
    except ValidationError as ve:
        raise CliError(_describe_validation(ve)) from None
    await resolve(client, a.target, a.kind).signal("escalate", e)
    console.print(f"severity of {a.target} set to {a.severity}; the approval requirement follows it")
    return 0


async def cmd_status(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    handle = resolve(client, a.target, a.kind)
    if not a.watch:
        s = await fetch_status(handle)
        console.print_json(s.model_dump_json()) if a.json else console.print(render(s))
        return 1 if s.phase in (Phase.failed, Phase.rejected, Phase.timed_out, Phase.refused) else 0
    from rich.live import Live

    with Live(console=console, refresh_per_second=2) as live:
        while True:
            s = await fetch_status(handle)
            live.update(render(s))
            if s.phase in FINAL_PHASES:
                return 0 if s.phase in (Phase.succeeded, Phase.planned) else 1
            await asyncio.sleep(2)


async def cmd_list(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    query = 'RollbackKind IS NOT NULL' + ('' if a.all else ' AND ExecutionStatus="Running"')
    table = Table("workflow id", "kind", "target", "severity", "phase", "started")
    n = 0
    async for wf in client.list_workflows(query):
        sa = wf.typed_search_attributes
        table.add_row(wf.id, sa.get(KIND) or "", sa.get(TARGET) or "", sa.get(SEVERITY) or "",
                      sa.get(PHASE) or "", wf.start_time.strftime("%Y-%m-%d %H:%M:%S"))
        n += 1
    console.print(table if n else "no rollbacks in flight" if not a.all else "no rollbacks found")
    return 0


async def cmd_cancel(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    handle = resolve(client, a.target, a.kind)
    await handle.cancel()
    console.print(f"cancel requested for {handle.id}: no further changes will be made; "
                  "traffic is not moved back to the bad version")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="starter.py", description="Start and steer rollbacks from the runbook.")
    sub = p.add_subparsers(dest="command", required=True)

    def targeted(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("target", help="catalog name (e.g. api) or workflow id")
        sp.add_argument("--kind", default="service", choices=sorted(PROCEDURES), help="procedure (default service)")
        return sp

    s = targeted("start", "start a service rollback")
    s.add_argument("--severity", required=True, help="SEV-0 .. SEV-4")
    s.add_argument("--requested-by", required=True)
    s.add_argument("--reason", required=True)
    s.add_argument("--to-version", help="image tag to return to (default: the previous version)")
    s.add_argument("--rollout", help="gradual percentages for blue/green services, e.g. 50,100")
    s.add_argument("--monitor-minutes", type=float)
    s.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    s.add_argument("--wait", action="store_true", help="follow it until it ends")
    for name in ("approve", "reject"):
        d = targeted(name, f"{name} a rollback waiting for approval")
        d.add_argument("--as", dest="as_", required=True, help="your name as listed in the catalog")
        d.add_argument("--comment")
        d.add_argument("--reason")
    e = targeted("escalate", "change the severity of a rollback")
    e.add_argument("--severity", required=True)
    e.add_argument("--as", dest="as_", required=True)
    e.add_argument("--comment")
    st = targeted("status", "where the rollback stands")
    st.add_argument("--watch", action="store_true", help="follow it live until it ends")
    st.add_argument("--json", action="store_true")
    ls = sub.add_parser("list", help="rollbacks in flight")
    ls.add_argument("--all", action="store_true", help="include finished ones")
    targeted("cancel", "stop a rollback: no further changes are made")
    return p


COMMANDS = {"start": cmd_start, "approve": cmd_decide, "reject": cmd_decide, "escalate": cmd_escalate,
            "status": cmd_status, "list": cmd_list, "cancel": cmd_cancel}


async def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings()
    try:
        client = await connect(settings)
    except RuntimeError as e:
        err.print(f"[red]cannot reach Temporal at {settings.address}[/red]: {e}\n"
                  "Is 'make run' running? Or set TEMPORAL_ADDRESS.")
        return 3
    try:
        return await COMMANDS[args.command](client, settings, args)
    except CliError as e:
        err.print(f"[red]error:[/red] {e}")
        return e.code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
