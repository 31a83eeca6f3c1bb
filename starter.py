"""starter.py: the on-call engineer's CLI.

    starter.py start api --severity SEV-2 --requested-by dana --reason "errors after v1.2.3"
    starter.py approve api --as alice [--comment ...]      (tells you at once if it counted)
    starter.py reject api --as alice --reason "..."
    starter.py escalate api --severity SEV-4 --as dana
    starter.py status api [--watch] [--json]
    starter.py list [--all]
    starter.py cancel api

A target is a catalog name (``api``) or a workflow id (``rollback-service-api``, or any id
typed in the Web UI that is not a catalog name). Exit codes:

    0  done; for ``status``: the rollback succeeded (or planned) or is still in progress
    1  the action was refused, or the rollback ended without succeeding
       (failed, rejected, timed out, cancelled, refused)
    2  bad input, or no such rollback
    3  cannot reach Temporal, or no worker answered
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowQueryFailedError, WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from common.catalog import CatalogError, UnknownTarget, load_catalog
from common.models import (
    FINAL_PHASES, DatabaseRollbackInput, DecisionOutcome, DecisionRequest, Escalation, FrontendRollbackInput,
    LambdaRollbackInput, Phase, RollbackStatus, ServiceRollbackInput,
)
from common.settings import Settings
from common.temporal import KIND, PHASE, SEVERITY, TARGET, connect

# soft_wrap: a message stays one line in a pipe or log (rich would break it at 80 columns)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# kind -> (workflow type, input model, the input field naming the target)
PROCEDURES: dict[str, tuple[str, type, str]] = {
    "service": ("ServiceRollback", ServiceRollbackInput, "service"),
    "database": ("DatabaseRollback", DatabaseRollbackInput, "database"),
    "frontend": ("FrontendRollback", FrontendRollbackInput, "site"),
    "lambda": ("LambdaRollback", LambdaRollbackInput, "function"),
}
# kind -> the catalog's lookup method for that kind's targets
CATALOG_LOOKUP = {"service": "service", "database": "database", "frontend": "site", "lambda": "function"}
# input field -> the option a person typed, so errors name what they can fix
FLAGS = {"severity": "--severity", "requested_by": "--requested-by", "reason": "--reason",
         "to_version": "--to-version", "rollout_percentages": "--rollout", "monitor_minutes": "--monitor-minutes",
         "by": "--as", "service": "target"}
ENDED_OK = (Phase.succeeded, Phase.planned)
QUERY_TIMEOUT = timedelta(seconds=5)  # a worker answers a query in milliseconds
UPDATE_TIMEOUT = timedelta(seconds=20)
POLL_SECONDS = 1.0
GATE_WAIT_SECONDS = 30


class CliError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def workflow_id(kind: str, target: str) -> str:
    return f"rollback-{kind}-{target}"


def _describe_validation(e: ValidationError, what: str = "rollback request") -> str:
    lines = []
    for x in e.errors():
        field = ".".join(str(p) for p in x["loc"][:1]) or "input"
        flag = FLAGS.get(field, field)
        name = f"{flag} ({field})" if flag.startswith("--") and flag[2:] != field else flag
        lines.append(f"  - {name}: {x['msg'].removeprefix('Value error, ')}")
    return f"invalid {what}:\n" + "\n".join(lines)


def _catalog(settings: Settings):
    try:
        return load_catalog(settings.catalog_path)
    except (CatalogError, ValueError):
        return None  # the worker's catalog decides; it answers with the same message


def check_target(settings: Settings, kind: str, target: str) -> None:
    """Raise CliError if the CLI can read the catalog and ``target`` is not in it."""
    catalog = _catalog(settings)
    if catalog is None or target.startswith("rollback-"):
        return
    try:
        for name in target.split(","):  # a Lambda fleet names several functions
            getattr(catalog, CATALOG_LOOKUP[kind])(name)
    except UnknownTarget as e:
        raise CliError(str(e)) from None


def target_of(request: Any, target_field: str) -> str:
    """What the rollback acts on: the target field, or the model's own ``target`` (a Lambda fleet)."""
    return getattr(request, "target", None) or getattr(request, target_field)


def build_request(kind: str, fields: dict[str, Any], settings: Settings) -> Any:
    """Validate a request as the workflow will, plus the catalog name when the catalog is readable."""
    _, model, target_field = PROCEDURES[kind]
    try:
        request = model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise CliError(_describe_validation(e)) from None
    check_target(settings, kind, target_of(request, target_field))
    return request


def no_worker(settings: Settings, what: str) -> CliError:
    return CliError(f"no worker answered {what} within a few seconds: is the rollback worker running "
                    f"('make run', task queue {settings.task_queue!r}, set by ROLLBACK_TASK_QUEUE)?", 3)


async def start_rollback(client: Client, kind: str, request: Any, task_queue: str,
                         wf_id: str | None = None) -> WorkflowHandle:
    """Start a rollback with the one-per-target workflow id; refuse if one is running."""
    wf_type, _, target_field = PROCEDURES[kind]
    target = target_of(request, target_field)
    wf_id = wf_id or workflow_id(kind, target)
    try:
        return await client.start_workflow(
            wf_type, request, id=wf_id, task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes([
                SearchAttributePair(KIND, kind), SearchAttributePair(TARGET, target),
                SearchAttributePair(SEVERITY, request.severity), SearchAttributePair(PHASE, Phase.starting.value)]),
        )
    except WorkflowAlreadyStartedError:
        raise CliError(f"a rollback of {kind} {target!r} is already running as workflow {wf_id}; "
                       f"follow it with 'starter.py status {target}' or cancel it first", code=1) from None


def resolve(client: Client, settings: Settings, target: str, kind: str) -> WorkflowHandle:
    """A catalog name means its one-per-target workflow; anything else is a workflow id (e.g. from the Web UI)."""
    catalog = _catalog(settings)
    is_name = not target.startswith("rollback-") and (catalog is None or target in getattr(catalog, f"{kind}s"))
    return client.get_workflow_handle(workflow_id(kind, target) if is_name else target)


async def not_running(handle: WorkflowHandle, settings: Settings, kind: str, target: str) -> CliError:
    """Why there is no running rollback to act on: it ended (exit 1) or never existed (exit 2)."""
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise
        check_target(settings, kind, target)  # a typo is the likeliest cause: say so
        return CliError(f"no rollback workflow {handle.id!r}; 'starter.py list' shows the running ones")
    return CliError(f"rollback {handle.id} has already ended ({state(desc.status)}); "
                    f"'starter.py status {target}' shows how it ended", 1)


async def query_status(handle: WorkflowHandle, settings: Settings) -> RollbackStatus | None:
    """The workflow's status; None if it has not run its first step yet. Raises RPCError NOT_FOUND."""
    try:
        return await handle.query("status", result_type=RollbackStatus, rpc_timeout=QUERY_TIMEOUT)
    except WorkflowQueryFailedError as e:
        raise CliError(f"workflow {handle.id} is not a rollback (it has no status): {e.message}") from None
    except RPCError as e:
        if e.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
            raise no_worker(settings, f"about {handle.id}") from None
        if e.status == RPCStatusCode.FAILED_PRECONDITION:  # e.g. ended before any worker ran it
            desc = await handle.describe()
            raise CliError(f"workflow {handle.id} is {state(desc.status)} and has no rollback status: "
                           f"{e.message}", 1) from None
        raise


async def fetch_status(handle: WorkflowHandle, settings: Settings, kind: str, target: str) -> RollbackStatus:
    for _ in range(10):  # None only for the moment between the start and its first workflow task
        try:
            status = await query_status(handle, settings)
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise await not_running(handle, settings, kind, target) from None
            raise
        if status is not None:
            return status
        await asyncio.sleep(0.5)
    raise CliError(f"workflow {handle.id} has not started its first step yet; try again in a moment", 1)


def state(status: WorkflowExecutionStatus | None) -> str:
    """A workflow execution's state as a word ("running", "completed", "cancelled", ...)."""
    return status.name.lower().replace("canceled", "cancelled") if status else "closed"


def exit_code(s: RollbackStatus) -> int:
    return 1 if s.phase in FINAL_PHASES and s.phase not in ENDED_OK else 0


# --- rendering -------------------------------------------------------------------------

STATE_STYLE = {"succeeded": "green", "failed": "red", "running": "yellow", "skipped": "dim",
               "pending": "dim", "cancelled": "magenta"}
PHASE_STYLE = {"succeeded": "bold green", "failed": "bold red", "rejected": "bold red", "timed_out": "bold red",
               "cancelled": "bold magenta", "refused": "bold red", "awaiting_approval": "bold yellow",
               "paused": "bold yellow"}


def waiting_for(s: RollbackStatus) -> str:
    return "; ".join(f"{r.count - len(r.met_by)} {r.label} of {', '.join(r.eligible) or 'nobody listed'}"
                     for r in s.approvals.required if len(r.met_by) < r.count)


def render(s: RollbackStatus) -> Table:
    e = escape
    outer = Table.grid(padding=(0, 1))
    outer.add_row(f"[bold]{e(s.kind)} rollback of {e(s.target)}[/bold]  "
                  f"[{PHASE_STYLE.get(s.phase.value, 'bold cyan')}]{s.phase.value}[/]  ({e(s.workflow_id)})")
    outer.add_row(f"{e(s.severity)} · requested by {e(s.requested_by)} · {e(s.reason)}")
    outer.add_row(f"version: {e(s.from_version or '?')} -> {e(s.to_version or '?')}"
                  + ("  [dim](dry run)[/dim]" if s.dry_run else ""))
    a = s.approvals
    for r in a.required:
        outer.add_row(f"approval: {e(r.label)}: {len(r.met_by)}/{r.count}"
                      + (f" (by {e(', '.join(r.met_by))})" if r.met_by else "")
                      + (f"  eligible: {e(', '.join(r.eligible) or 'nobody listed')}" if len(r.met_by) < r.count else ""))
    for ref in a.refused:
        outer.add_row(f"[red]refused approval[/red] {e(ref.approver)}: {e(ref.reason)}")
    if a.rejected_by:
        outer.add_row(f"[red]rejected by[/red] {e(a.rejected_by.approver)}: {e(a.rejected_by.comment)}")
    steps = Table("step", "state", "started", "ended", "detail", box=None, pad_edge=False)
    for st in s.steps:
        steps.add_row(e(st.name), f"[{STATE_STYLE.get(st.state.value, '')}]{st.state.value}[/]",
                      st.started_at.strftime("%H:%M:%S") if st.started_at else "",
                      st.ended_at.strftime("%H:%M:%S") if st.ended_at else "", e(st.detail))
    outer.add_row(steps)
    if s.checks:
        checks = Table("check", "result", "value", "baseline", "detail", box=None, pad_edge=False)
        for c in s.checks:
            res = "[green]passed[/]" if c.ok else "[dim]not checked[/]" if c.ok is None else "[red]FAILED[/]"
            checks.add_row(e(c.name), res, "" if c.value is None else e(str(c.value)),
                           "" if c.baseline is None else e(str(c.baseline)), e(c.detail))
        outer.add_row(checks)
    if s.regressions:
        outer.add_row(f"[bold red]{len(s.regressions)} regression(s) while monitoring[/]")
    for p in s.plan if s.dry_run else []:
        outer.add_row(f"plan: {e(p)}")
    if s.message:
        outer.add_row(e(s.message))
    return outer


def one_line(s: RollbackStatus) -> str:
    """A line per phase change, for `status --watch` into a file or pipe."""
    extra = s.message or (f"waiting for {waiting_for(s)}" if s.phase == Phase.awaiting_approval else "")
    return f"{s.target}: {s.phase.value}" + (f" - {extra}" if extra else "")


# --- commands --------------------------------------------------------------------------

def start_fields(a: argparse.Namespace) -> dict[str, Any]:
    """The request as the workflow takes it: common flags, the kind's own flags, then --set K=V."""
    _, _, target_field = PROCEDURES[a.kind]
    fields: dict[str, Any] = {target_field: a.target, "severity": a.severity, "requested_by": a.requested_by,
                              "reason": a.reason, "dry_run": a.dry_run or None,
                              "monitor_minutes": a.monitor_minutes, "to_version": a.to_version,
                              "rollout_percentages": a.rollout}
    for item in a.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set {item!r}: expected KEY=VALUE, e.g. --set mode=snapshot_restore")
        fields[key.strip()] = yaml.safe_load(value) if value else None
    return fields


async def worker_polling(client: Client, task_queue: str) -> bool:
    resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    return bool(resp.pollers)


async def cmd_start(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    request = a.request  # validated in main(), before connecting
    handle = await start_rollback(client, a.kind, request, settings.task_queue)
    console.print(f"started [bold]{handle.id}[/bold] ({escape(request.severity)}, requested by "
                  f"{escape(request.requested_by)}); follow it: starter.py status {escape(a.target)} --watch")
    if not await worker_polling(client, settings.task_queue):
        err.print(f"[yellow]warning:[/yellow] no worker is polling task queue {settings.task_queue!r}; the rollback "
                  "will not move until one does. Start it with 'make run' or check ROLLBACK_TASK_QUEUE.")
    if a.wait:
        return await cmd_status(client, settings, argparse.Namespace(target=a.target, kind=a.kind,
                                                                     watch=True, json=False))
    return 0


async def approval_step(handle: WorkflowHandle, settings: Settings, a: argparse.Namespace) -> None:
    """An approver can be quicker than the first steps: wait a little for the approval step to open."""
    deadline, said = time.monotonic() + GATE_WAIT_SECONDS, False
    while True:
        try:
            s = await query_status(handle, settings)
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise await not_running(handle, settings, a.kind, a.target) from None
            raise
        if (s is not None and s.phase != Phase.starting) or time.monotonic() > deadline:
            return  # the workflow itself says whether the decision can be taken now
        if not said:
            step = next((st.name for st in s.steps if st.state.value == "running"), "") if s else ""
            err.print(f"{handle.id} is still starting{f' ({step})' if step else ''}; waiting up to "
                      f"{GATE_WAIT_SECONDS:g}s for its approval step ...")
            said = True
        await asyncio.sleep(POLL_SECONDS / 2)


async def cmd_decide(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    handle = resolve(client, settings, a.target, a.kind)
    try:
        req = DecisionRequest(decision=a.command, approver=a.as_, comment=a.comment or "", reason=a.reason or "")
    except ValidationError as ve:
        raise CliError(_describe_validation(ve, "decision")) from None
    await approval_step(handle, settings, a)
    try:
        outcome = await handle.execute_update("decide", req, result_type=DecisionOutcome, rpc_timeout=UPDATE_TIMEOUT)
    except WorkflowUpdateFailedError as e:
        raise CliError(f"not recorded: {e.cause.message if e.cause else e}", code=1) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise CliError(f"no answer from the workflow within {UPDATE_TIMEOUT.seconds}s, so the {a.command} may NOT "
                       f"be recorded: check 'starter.py status {a.target}' (is the worker running?)", 3) from None
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise await not_running(handle, settings, a.kind, a.target) from None
        raise
    if not outcome.counted:
        console.print(f"[red]NOT counted[/red]: {escape(outcome.message)}")
        return 1
    console.print(f"[green]{'counted' if a.command == 'approve' else 'recorded'}[/green]: {escape(outcome.message)}")
    return 0


async def running_status(handle: WorkflowHandle, settings: Settings, a: argparse.Namespace) -> RollbackStatus:
    """The status of a rollback that can still be steered; CliError otherwise."""
    s = await fetch_status(handle, settings, a.kind, a.target)
    if s.phase in FINAL_PHASES:
        raise CliError(f"rollback {handle.id} has already ended ({s.phase.value}); nothing to {a.command}", 1)
    return s


async def cmd_escalate(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    try:
        e = Escalation(severity=a.severity, by=a.as_, comment=a.comment or "")
    except ValidationError as ve:
        raise CliError(_describe_validation(ve, "escalation")) from None
    handle = resolve(client, settings, a.target, a.kind)
    before = await running_status(handle, settings, a)
    await handle.signal("escalate", e)
    for _ in range(10):  # a signal does not answer: read back what it changed
        s = await fetch_status(handle, settings, a.kind, a.target)
        if s.severity == e.severity:
            need = waiting_for(s) if s.phase == Phase.awaiting_approval else ""
            console.print(f"severity of {escape(s.target)}: {escape(before.severity)} -> {escape(s.severity)}; "
                          + (f"now waiting for {escape(need)}" if need else f"phase: {s.phase.value}"))
            return 0
        await asyncio.sleep(0.5)
    console.print(f"escalation to {escape(e.severity)} sent; not confirmed yet: check 'starter.py status {a.target}'")
    return 0


async def cmd_status(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    handle = resolve(client, settings, a.target, a.kind)
    if not a.watch:
        s = await fetch_status(handle, settings, a.kind, a.target)
        if a.json:
            sys.stdout.write(s.model_dump_json(indent=2) + "\n")
        else:
            console.print(render(s))
        return exit_code(s)
    return await watch(handle, settings, a)


async def watch(handle: WorkflowHandle, settings: Settings, a: argparse.Namespace) -> int:
    """Follow a rollback until it ends; wait for it if it has not started yet."""
    from rich.live import Live

    said, last = "", ""
    live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
    try:
        if live:
            live.start()
        while True:
            s, problem = None, ""
            try:
                s = await query_status(handle, settings)
            except RPCError as e:
                if e.status == RPCStatusCode.NOT_FOUND:
                    check_target(settings, a.kind, a.target)  # a typo would wait forever
                    problem = f"waiting for {handle.id} to start (Ctrl-C to stop) ..."
                elif e.status == RPCStatusCode.UNAVAILABLE:
                    problem = f"lost Temporal at {settings.address} ({e.message}); still trying ..."
                else:
                    raise
            except CliError as e:  # a worker restarting must not end the watch
                if e.code != 3:
                    raise
                problem = f"{e}; still trying ..."
            if problem and problem != said:
                err.print(escape(problem))
            said = problem
            if s is not None:
                if live:
                    live.update(render(s))
                if s.phase in FINAL_PHASES:
                    if not live:
                        console.print(render(s))
                    return exit_code(s)
                if not live and (line := one_line(s)) != last:  # a pipe or file: a line per change
                    console.print(f"{datetime.now():%H:%M:%S} {escape(line)}")
                    last = line
            await asyncio.sleep(POLL_SECONDS)
    finally:
        if live:
            live.stop()


async def cmd_list(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    query = 'RollbackKind IS NOT NULL' + ('' if a.all else ' AND ExecutionStatus="Running"')
    table = Table("workflow id", "kind", "target", "severity", "phase", "status", "started")
    n = 0
    async for wf in client.list_workflows(query, limit=a.limit):
        sa = wf.typed_search_attributes
        table.add_row(escape(wf.id), sa.get(KIND) or "", escape(sa.get(TARGET) or ""), sa.get(SEVERITY) or "",
                      sa.get(PHASE) or "", state(wf.status),
                      wf.start_time.strftime("%Y-%m-%d %H:%M:%S"))
        n += 1
    console.print(table if n else "no rollbacks in flight" if not a.all else "no rollbacks found")
    if n == a.limit:
        console.print(f"(the newest {n} only; --limit shows more)")
    return 0


async def cmd_cancel(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    handle = resolve(client, settings, a.target, a.kind)
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise await not_running(handle, settings, a.kind, a.target) from None
        raise
    if desc.status != WorkflowExecutionStatus.RUNNING:  # cancelling an ended workflow "succeeds" silently
        raise CliError(f"rollback {handle.id} has already ended ({state(desc.status)}); nothing to cancel", 1)
    await handle.cancel()
    console.print(f"cancel requested for {handle.id}: no further changes will be made; "
                  "traffic is not moved back to the bad version")
    for _ in range(20):  # confirm, with the state reached
        await asyncio.sleep(0.5)
        try:
            s = await query_status(handle, settings)
        except CliError as e:  # the cancellation is recorded; the worker acts on it when it can
            console.print(f"not confirmed yet: {escape(str(e))}")
            return 0
        if s is not None and s.phase in FINAL_PHASES:
            console.print(f"{escape(s.target)}: {s.phase.value}" + (f" - {escape(s.message)}" if s.message else ""))
            return 0
    console.print(f"not confirmed yet: check 'starter.py status {escape(a.target)}'")
    return 0


def percentages(text: str) -> list[int]:
    try:
        return [int(p) for p in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole percentages separated by commas, "
                                         "e.g. 50,100") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="starter.py", description="Start and steer rollbacks from the runbook.",
                                epilog="exit codes: 0 ok/in progress, 1 refused or rollback did not succeed, "
                                       "2 bad input or no such rollback, 3 cannot reach Temporal or the worker")
    sub = p.add_subparsers(dest="command", required=True)

    def targeted(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("target", help="catalog name (e.g. api) or workflow id")
        sp.add_argument("--kind", default="service", choices=sorted(PROCEDURES), help="procedure (default service)")
        return sp

    s = targeted("start", "start a rollback (--kind service|database|frontend|lambda)")
    s.add_argument("--severity", required=True, help="SEV-0 .. SEV-4")
    s.add_argument("--requested-by", required=True)
    s.add_argument("--reason", required=True)
    s.add_argument("--to-version", help="image tag to return to (default: the previous version)")
    s.add_argument("--rollout", type=percentages, help="gradual percentages for blue/green services, e.g. 50,100")
    s.add_argument("--monitor-minutes", type=float)
    s.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other input field of the procedure, e.g. --set mode=snapshot_restore "
                        "--set snapshot_id=pre-deploy-20251118-140000 (values are YAML)")
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
    st.add_argument("--watch", action="store_true", help="follow it until it ends (waits for it to start)")
    st.add_argument("--json", action="store_true", help="the full status as JSON")
    ls = sub.add_parser("list", help="rollbacks in flight")
    ls.add_argument("--all", action="store_true", help="include finished ones")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    targeted("cancel", "stop a rollback: no further changes are made")
    return p


COMMANDS = {"start": cmd_start, "approve": cmd_decide, "reject": cmd_decide, "escalate": cmd_escalate,
            "status": cmd_status, "list": cmd_list, "cancel": cmd_cancel}


def _short(e: BaseException) -> str:
    """The useful tail of the SDK's connection error (it nests transport errors)."""
    text = str(e)
    for marker in ('message: "', 'error: "', 'ConnectError("'):
        if marker in text:
            return text.split(marker, 1)[1].split('"', 1)[0]
    return text


async def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as e:
        err.print(f"[red]error:[/red] bad setting in the environment:\n{escape(str(e))}")
        return 2
    try:
        if args.command == "start":  # bad input is reported even when Temporal is down
            args.request = build_request(args.kind, start_fields(args), settings)
        try:
            client = await connect(settings)
        except RuntimeError as e:  # what Client.connect raises when nothing answers
            fix = (f"check that the Temporal frontend at TEMPORAL_ADDRESS={settings.temporal_address} is up and "
                   "that the address is right" if settings.temporal_address else
                   "TEMPORAL_ADDRESS is not set, so this is the local dev server: start it with 'make run', "
                   "or set TEMPORAL_ADDRESS to your cluster's host:port")
            raise CliError(f"cannot reach Temporal at {settings.address} (namespace {settings.temporal_namespace}): "
                           f"{_short(e)}.\nTo fix: {fix}.", 3) from None
        return await COMMANDS[args.command](client, settings, args)
    except CliError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return e.code
    except RPCError as e:
        if e.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            err.print(f"[red]error:[/red] lost Temporal at {settings.address}: {escape(e.message)}")
            return 3
        err.print(f"[red]error:[/red] Temporal refused the request ({e.status.name if e.status else '?'}): "
                  f"{escape(e.message)}")
        return 1


if __name__ == "__main__":
    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the SDK's Rust threads can abort it at random
    # ("PyGILState_Release ... finalizing", exit 134/-11; temporalio/sdk-python#300).
    os._exit(code)
