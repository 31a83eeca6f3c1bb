"""starter.py: the on-call engineer's CLI.

    starter.py login dana                                  (the sandbox: a signed token for dana)
    starter.py start api --severity SEV-2 --requested-by dana --reason "errors after v1.2.3"
    starter.py approve api --as alice [--comment ...]      (tells you at once if it counted)
    starter.py reject api --as alice --reason "..."
    starter.py escalate api --severity SEV-4 --as dana --reason "..."
    starter.py status api [--watch] [--json]
    starter.py list [--all]
    starter.py cancel api
    starter.py schedule pause|resume|status [--note ...]   (the auto-rollback schedule)
    starter.py doctor                                      (the worker's start-up checks, on demand)
    starter.py release record v1.2.3 --service api=v1.2.3 --flag new_feature_enabled   (also: show, list)

A target is a catalog name (``api``) or a workflow id (``rollback-service-api``, or any id
typed in the Web UI that is not a catalog name). Who you are is proven by an OIDC ID token, not by
--as or --requested-by: see common/id_tokens.py for where it is read from (``login`` stores one).
Exit codes:

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
import json
import os
import re
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape as markup_escape
from rich.table import Table
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from common import api, id_tokens, web_ui
from common.api import (PROCEDURES, RollbackError, Rollbacks, catalog_kind, describe_validation, known_names,
                        read_catalog, state)
from common.models import FINAL_PHASES, Escalation, Phase, RollbackStatus
from common.preflight import preflight
from common.settings import ModeError, Settings, describe_settings_error, resolve_mode
from common.temporal import KIND, PHASE, SEVERITY, TARGET, connect

# soft_wrap: a message stays one line in a pipe or log (rich would break it at 80 columns)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# The procedures (kind -> workflow type, input model, target field; PROCEDURES and CATALOG_LOOKUP),
# request validation, starts and decisions live in common/api.py: one code path for this CLI, the
# alert receiver (receiver.py) and the auto-rollback schedule. Add a procedure there.
# input field -> the option a person typed, so errors name what they can fix
FLAGS = {"severity": "--severity", "requested_by": "--requested-by", "reason": "--reason",
         "to_version": "--to-version", "rollout_percentages": "--rollout", "monitor_minutes": "--monitor-minutes",
         "by": "--as", "service": "target"}
ENDED_OK = (Phase.succeeded, Phase.planned)
# --wait-until: the phases at which each is reached (an end is always one; it succeeded or not);
# "changed" is also reached by the first change made (a gradual rollback's first shift)
WAIT_UNTIL = {"changed": {Phase.validating, Phase.monitoring}, "validated": {Phase.monitoring}, "done": set()}
POLL_SECONDS = 1.0
# Terminal control characters (ESC, NUL, BEL, ...): text from outside (a reason, a comment) never reaches the
# terminal with them, so it cannot move the cursor, retitle the window or ring the bell.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape(text: object) -> str:
    """Text for rich: control characters dropped, markup escaped."""
    return markup_escape(CONTROL.sub("", str(text)))


def invocation() -> str:
    """This CLI as it was run (e.g. ``.venv/bin/python starter.py``), so the hints it prints work as printed."""
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("starter.py") else "starter.py"
    python = sys.executable
    rel = os.path.relpath(python)
    return f"{shlex.quote(python if rel.startswith('..') else rel)} {shlex.quote(script)}"


class CliError(RollbackError):
    """A problem with what was typed (exit 2 unless said otherwise); the API's errors carry their own code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message, code)


def catalog_path(settings: Settings) -> Path:
    return resolve_mode(settings).catalog  # the worker's catalog, in every mode (checked in main())


def start_kind(settings: Settings, target: str) -> str:
    """The kind of a catalog name (names are unique across kinds); an unknown name is refused, listing them."""
    catalog = read_catalog(catalog_path(settings))
    if catalog is None:
        return "service"  # unreadable here: the worker's catalog decides, and says why
    kind = catalog_kind(catalog, target)
    if kind is None:
        raise CliError(f"{target!r} is not in the catalog {catalog_path(settings)} ({known_names(catalog)}); "
                       "fix the name, or add it to the catalog")
    return kind


def rollbacks(client: Client, settings: Settings) -> Rollbacks:
    return Rollbacks.from_settings(client, settings, names=FLAGS)


def proof_for(settings: Settings, person: str) -> str | None:
    """``person``'s ID token from the configured source, saying on stderr when there is none."""
    try:
        token, where = id_tokens.find(settings, person)
    except id_tokens.TokenError as e:
        raise CliError(str(e)) from None
    if token is None:
        err.print(f"[yellow]warning:[/yellow] no token proves you are {escape(person)}: the workflow will not count "
                  f"this as {escape(person)}'s. Get one with {escape(id_tokens.HOW)}.")
        return None
    note = id_tokens.expiry_note(token)
    if note:
        err.print(f"[yellow]warning:[/yellow] the token from {escape(where)} is stale ({note}); refresh it "
                  f"(e.g. 'starter.py login {escape(person)}' in the sandbox).")
    return token


def not_proven_hint(message: str, person: str) -> str:
    return (f"\nto prove you are {person}: {id_tokens.HOW}" if "identity not proven" in message else "")


def exit_code(s: RollbackStatus) -> int:
    return 1 if s.phase in FINAL_PHASES and s.phase not in ENDED_OK else 0


# --- rendering -------------------------------------------------------------------------

STATE_STYLE = {"succeeded": "green", "failed": "red", "running": "yellow", "skipped": "dim",
               "pending": "dim", "cancelled": "magenta"}
PHASE_STYLE = {"succeeded": "bold green", "failed": "bold red", "rejected": "bold red", "timed_out": "bold red",
               "cancelled": "bold magenta", "refused": "bold red", "awaiting_approval": "bold yellow",
               "paused": "bold yellow"}


def waiting_for(s: RollbackStatus) -> str:
    return "; ".join(r.missing() for r in s.approvals.required if len(r.met_by) < r.count)


def render(s: RollbackStatus) -> Table:
    e = escape
    outer = Table.grid(padding=(0, 1))
    outer.add_row(f"[bold]{e(s.kind)} rollback of {e(s.target)}[/bold]  "
                  f"[{PHASE_STYLE.get(s.phase.value, 'bold cyan')}]{s.phase.value}[/]  ({e(s.workflow_id)})")
    outer.add_row(f"{e(s.severity)} · requested by {e(s.requested_by)}"
                  + (f" ({e(s.requester_proof.describe())})" if s.requester_proof else
                     f" [yellow](not proven: {e(s.requester_not_proven)})[/yellow]" if s.requester_not_proven else "")
                  + f" · {e(s.reason)}")
    if not s.verified:
        outer.add_row("[bold red]approvals are not verified[/bold red] (identity.mode: unverified)")
    outer.add_row(f"version: {e(s.from_version or '?')} -> {e(s.to_version or '?')}"
                  + ("  [dim](dry run)[/dim]" if s.dry_run else ""))
    a = s.approvals
    for r in a.required:
        outer.add_row(f"approval: {e(r.label)}: {len(r.met_by)}/{r.count}"
                      + (f" (by {e(', '.join(r.met_by))})" if r.met_by else "")
                      + (f"  eligible: {e(', '.join(r.eligible) or 'nobody listed')}" if len(r.met_by) < r.count else ""))
    for rec in a.received:
        outer.add_row(f"approved by {e(rec.approver)} at {rec.at:%H:%M:%S}"
                      + (f" ({e(rec.proof.describe())})" if rec.proof else ""))
    for ref in a.refused:
        outer.add_row(f"[red]refused {e(ref.action or 'approval')}[/red] {e(ref.approver)}: {e(ref.reason)}")
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
    if progress(s):
        outer.add_row(f"monitoring: {e(progress(s))}")
    if s.regressions:
        outer.add_row(f"[bold red]{len(s.regressions)} regression(s) while monitoring[/]")
    for p in s.plan if s.dry_run else []:
        outer.add_row(f"plan: {e(p)}")
    if s.message:
        outer.add_row(e(s.message))
    return outer


def progress(s: RollbackStatus) -> str:
    """While monitoring: the round, the latest values against their limits, the next check and the end."""
    m = s.monitoring
    if m is None or s.phase != Phase.monitoring:
        return ""
    values = ", ".join(f"{c.name} {fmt(c.value)}" + (f" (limit {fmt(c.limit)})" if c.limit is not None else
                                                     f" (baseline {fmt(c.baseline)})" if c.baseline is not None else "")
                       for c in s.checks if c.value is not None)
    when = lambda t: f"{t.astimezone():%H:%M:%S}" if t else "?"  # noqa: E731
    return (f"round {m.round} of {m.rounds}" + (f"; latest: {values}" if values else "")
            + (f"; next check at {when(m.next_check_at)}" if m.next_check_at else "")
            + f"; monitoring ends at {when(m.ends_at)}")


def fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def step_lines(s: RollbackStatus, seen: dict[str, str]) -> list[str]:
    """A line for each step that started or ended since the last call (``seen``: step -> state)."""
    lines = []
    for st in s.steps:
        if seen.get(st.name) != st.state.value:
            seen[st.name] = st.state.value
            lines.append(f"{s.target}: {st.name}: {st.state.value}" + (f" - {st.detail}" if st.detail else ""))
    return lines


def one_line(s: RollbackStatus) -> str:
    """A line per phase change (and monitoring round), for `status --watch` into a file or pipe."""
    extra = (progress(s) or s.message
             or (f"waiting for {waiting_for(s)}" if s.phase == Phase.awaiting_approval else ""))
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


async def cmd_start(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    request = a.request  # validated in main(), before connecting
    if not request.id_token and not request.automation_token:
        token = proof_for(settings, request.requested_by)
        request = request.model_copy(update={"id_token": token}) if token else request
    rb = rollbacks(client, settings)
    started = await rb.start(a.kind, request)
    console.print(f"started [bold]{started.workflow_id}[/bold] ({escape(request.severity)}, requested by "
                  f"{escape(request.requested_by)}{', with proof' if request.id_token else ', NOT proven'}); "
                  f"follow it: {escape(api.CLI)} status {escape(shlex.quote(a.target))} --watch")
    if not await rb.worker_polling():
        err.print(f"[yellow]warning:[/yellow] no worker is polling task queue {settings.task_queue!r}; the rollback "
                  "will not move until one does. Start it with 'make run' or check ROLLBACK_TASK_QUEUE.")
    if a.wait or a.wait_until:
        return await cmd_status(client, settings, argparse.Namespace(
            target=a.target, kind=a.kind, watch=True, json=False, until=a.wait_until or "done"))
    return 0


async def cmd_decide(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    if a.command == "reject" and not (a.reason or "").strip():
        raise CliError('a rejection needs a reason, recorded and shown to everyone: --reason "why not"')
    outcome = await rollbacks(client, settings).decide(
        a.kind, a.target, a.command, a.as_, a.comment or "", a.reason or "",
        on_wait=lambda message: err.print(escape(message)), id_token=proof_for(settings, a.as_))
    if not outcome.counted:
        console.print(f"[red]NOT counted[/red]: {escape(outcome.message)}"
                      + escape(not_proven_hint(outcome.message, a.as_)))
        return 1
    console.print(f"[green]{'counted' if a.command == 'approve' else 'recorded'}[/green]: {escape(outcome.message)}")
    return 0


async def running_status(rb: Rollbacks, handle: WorkflowHandle, a: argparse.Namespace) -> RollbackStatus:
    """The status of a rollback that can still be steered; CliError otherwise."""
    s = await rb.fetch_status(handle, a.kind, a.target)
    if s.phase in FINAL_PHASES:
        raise CliError(f"rollback {handle.id} has already ended ({s.phase.value}); nothing to {a.command}", 1)
    return s


async def cmd_escalate(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    try:
        e = Escalation(severity=a.severity, by=a.as_, reason=a.reason or "", comment=a.comment or "")
    except ValidationError as ve:
        raise describe_validation(ve, "escalation", FLAGS) from None
    rb = rollbacks(client, settings)
    handle = rb.handle(a.kind, a.target)
    before = await running_status(rb, handle, a)
    seen = len(before.approvals.refused)
    await handle.signal("escalate", e.model_copy(update={"id_token": proof_for(settings, a.as_)}))
    for _ in range(20):  # a signal does not answer: read back what it changed (or why not)
        s = await rb.fetch_status(handle, a.kind, a.target)
        if s.severity == e.severity:
            need = waiting_for(s) if s.phase == Phase.awaiting_approval else ""
            console.print(f"severity of {escape(s.target)}: {escape(before.severity)} -> {escape(s.severity)}; "
                          + (f"now waiting for {escape(need)}" if need else f"phase: {s.phase.value}"))
            return 0
        refused = [r for r in s.approvals.refused[seen:] if r.action == "escalate" and r.approver == a.as_]
        if refused:
            console.print(f"[red]NOT applied[/red]: {escape(refused[-1].reason)}"
                          + escape(not_proven_hint(refused[-1].reason, a.as_)))
            return 1
        await asyncio.sleep(0.5)
    console.print(f"escalation to {escape(e.severity)} sent; not confirmed yet: check "
                  f"'{escape(api.CLI)} status {escape(shlex.quote(a.target))}'")
    return 0


async def cmd_status(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    rb = rollbacks(client, settings)
    handle = rb.handle(a.kind, a.target)
    if not a.watch:
        s = await rb.fetch_status(handle, a.kind, a.target)
        if a.json:
            sys.stdout.write(s.model_dump_json(indent=2) + "\n")
        else:
            console.print(render(s))
        return exit_code(s)
    return await watch(rb, handle, settings, a)


async def watch(rb: Rollbacks, handle: WorkflowHandle, settings: Settings, a: argparse.Namespace) -> int:
    """Follow a rollback until it ends; wait for it if it has not started yet."""
    from rich.live import Live

    said, last = "", ""
    until = getattr(a, "until", "done")
    steps_seen: dict[str, str] = {}
    live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
    try:
        if live:
            live.start()
        while True:
            s, problem = None, ""
            try:
                s = await rb.query_status(handle)
            except RPCError as e:
                if e.status == RPCStatusCode.NOT_FOUND:
                    rb.check_target(a.kind, a.target)  # a typo would wait forever
                    problem = f"waiting for {handle.id} to start (Ctrl-C to stop) ..."
                elif e.status == RPCStatusCode.UNAVAILABLE:
                    problem = f"lost Temporal at {settings.address} ({e.message}); still trying ..."
                else:
                    raise
            except RollbackError as e:  # a worker restarting must not end the watch
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
                if not live:  # a pipe or file: a line per step as it happens, and per change of phase or round
                    for line in step_lines(s, steps_seen) + [one_line(s)]:
                        if line != last:
                            console.print(f"{datetime.now():%H:%M:%S} {escape(line)}")
                            last = line
                if s.phase in WAIT_UNTIL.get(until, ()) or (
                        until == "changed" and any(c.state == "made" for c in s.changes)):
                    if live:
                        live.stop()
                        live = None
                    console.print(f"{escape(s.target)}: {until} ({escape(s.from_version or '?')} -> "
                                  f"{escape(s.to_version or '?')}, now {s.phase.value}); it goes on: "
                                  f"{escape(api.CLI)} status {escape(shlex.quote(a.target))} --watch")
                    return 0
            await asyncio.sleep(POLL_SECONDS)
    finally:
        if live:
            live.stop()


async def cmd_list(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    query = 'RollbackKind IS NOT NULL' + ('' if a.all else ' AND ExecutionStatus="Running"')
    table = Table("workflow id", "kind", "target", "severity", "phase", "status", "started")
    table.columns[0].no_wrap = True  # an id is copied into the next command: never cut or wrapped
    ids: list[str] = []
    async for wf in client.list_workflows(query, limit=a.limit):
        ids.append(wf.id)
        sa = wf.typed_search_attributes
        table.add_row(escape(wf.id), sa.get(KIND) or "", escape(sa.get(TARGET) or ""), sa.get(SEVERITY) or "",
                      sa.get(PHASE) or "", state(wf.status),
                      wf.start_time.strftime("%Y-%m-%d %H:%M:%S"))
    n = len(ids)
    if n:  # as wide as it takes, even in a pipe or a narrow terminal (rich would cut the ids to fit)
        # (print(width=) is capped at the console's width: measure and print on a console as wide as it takes)
        wide = Console(file=console.file, width=10_000, force_terminal=console.is_terminal)
        Console(file=console.file, width=max(console.width, wide.measure(table).maximum),
                force_terminal=console.is_terminal).print(table)
    else:
        console.print("no rollbacks in flight" if not a.all else "no rollbacks found")
    if n == a.limit:
        console.print(f"(the newest {n} only; --limit shows more)")
    return 0


async def cmd_cancel(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    rb = rollbacks(client, settings)
    handle = rb.handle(a.kind, a.target)
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise await rb.not_running(handle, a.kind, a.target) from None
        raise
    if desc.status != WorkflowExecutionStatus.RUNNING:  # cancelling an ended workflow "succeeds" silently
        raise CliError(f"rollback {handle.id} has already ended ({state(desc.status)}); nothing to cancel", 1)
    # Temporal takes one cancel and ignores the rest: say which this is, then what really happened.
    earlier = await cancel_requested_at(handle)
    if earlier is not None:
        console.print(f"{handle.id} is already cancelling: a cancel was requested at {earlier:%Y-%m-%d %H:%M:%S}Z; "
                      "no change starts after it")
    else:
        await handle.cancel()
        console.print(f"cancel requested for {handle.id}: no change starts after it; a change under way "
                      "finishes first (never half made); traffic is not moved back to the bad version")
    deadline = time.monotonic() + a.wait
    while desc.status == WorkflowExecutionStatus.RUNNING:  # what really happened: wait for it to end
        if time.monotonic() > deadline:
            console.print(f"not confirmed yet: {handle.id} has not stopped within {a.wait:g}s (is the worker "
                          f"running?); no change starts after the cancel. Check '{escape(api.CLI)} status "
                          f"{escape(shlex.quote(a.target))}'")
            return 0
        await asyncio.sleep(POLL_SECONDS / 2)
        desc = await handle.describe()
    try:
        s = await rb.query_status(handle)
    except RollbackError as e:
        console.print(f"{handle.id} has ended ({state(desc.status)}): {escape(str(e))}")
        return 0 if desc.status == WorkflowExecutionStatus.CANCELED else 1
    if s is None or s.phase == Phase.cancelled:
        console.print(f"{escape(s.target if s else handle.id)}: cancelled" + (f" - {escape(s.message)}" if s and s.message else ""))
        return 0
    console.print(f"{escape(s.target)}: it had already finished before the cancel took effect: {s.phase.value}"
                  + (f" - {escape(s.message)}" if s.message else ""))
    return 1


async def cancel_requested_at(handle: WorkflowHandle) -> datetime | None:
    """When a cancel was requested of this run, if one was (the history says; no worker needed)."""
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
            return event.event_time.ToDatetime()
    return None


async def cmd_login(settings: Settings, a: argparse.Namespace) -> int:
    """A token for a catalog person from the sandbox's identity provider, stored for later commands."""
    try:
        catalog = read_catalog(catalog_path(settings), strict=True)
    except Exception as e:
        raise CliError(f"cannot read the catalog to find its identity provider: {e}") from None
    ident = catalog.identity if catalog else None
    if ident is None or ident.oidc is None:
        raise CliError("the catalog names no OIDC identity provider (identity.oidc): nothing to log in to")
    if a.person not in catalog.people.directory:  # type: ignore[union-attr]
        raise CliError(f"{a.person!r} is not a person of the catalog (people: "
                       f"{', '.join(sorted(catalog.people.directory)) or 'none'})")  # type: ignore[union-attr]
    try:
        token = id_tokens.sandbox_login(ident.oidc.issuer, a.person)
    except id_tokens.TokenError as e:
        raise CliError(str(e), 1) from None
    path = id_tokens.store(settings, a.person, token)
    console.print(f"logged in as [bold]{escape(a.person)}[/bold] with {escape(ident.oidc.issuer)}; the token (valid "
                  f"30 min) is in {escape(str(path))}: 'start --requested-by {escape(a.person)}' and "
                  f"'approve/reject/escalate --as {escape(a.person)}' send it")
    return 0


async def cmd_schedule(client: Client, settings: Settings, a: argparse.Namespace) -> int:
    """The runbook's auto-rollback job (a Temporal Schedule the worker keeps up to date)."""
    if a.action in ("pause", "resume"):
        note = a.note or f"{a.action}d with starter.py"
        await (api.pause_schedule if a.action == "pause" else api.resume_schedule)(client, note)
    info = await api.describe_schedule(client)
    every = ", ".join(f"{d.total_seconds() / 60:g} min" for d in info.every)
    console.print(f"auto-rollback schedule [bold]{info.schedule_id}[/bold]: "
                  + ("[bold yellow]PAUSED[/bold yellow]" if info.paused else "[bold green]active[/bold green]")
                  + f" (every {every}, overlap: {info.overlap.lower()})"
                  + (f"; note: {escape(info.note)}" if info.note else ""))
    if not info.paused and info.next_runs:
        console.print("next checks: " + ", ".join(f"{t.astimezone():%H:%M:%S}" for t in info.next_runs))
    for at, wf in info.recent:
        console.print(f"ran {at.astimezone():%Y-%m-%d %H:%M:%S}: {escape(wf)}")
    return 0


def percentages(text: str) -> list[int]:
    try:
        return [int(p) for p in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole percentages separated by commas, "
                                         "e.g. 50,100") from None


# --- releases (docs/releases.md): what a release shipped, recorded where it outlives the worker -------

def _pairs(option: str, items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, version = item.partition("=")
        if not sep or not name.strip() or not version.strip():
            raise CliError(f"{option} {item!r}: expected NAME=VERSION, e.g. {option} api=v1.2.3")
        out[name.strip()] = version.strip()
    return out


def _ssm(settings: Settings) -> Any:
    """Parameter Store: the sandbox's moto (unless AWS_ENDPOINT_URL says otherwise), else boto3's chain."""
    import boto3

    if resolve_mode(settings).sandbox and not os.environ.get("AWS_ENDPOINT_URL"):
        from sandbox import aws_env

        env = aws_env(f"http://127.0.0.1:{settings.sandbox_port}")
        return boto3.client("ssm", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    return boto3.client("ssm")


def cmd_release(settings: Settings, a: argparse.Namespace) -> int:
    """record / show / list releases (no Temporal needed: the deploy pipeline calls ``record``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from activities.releases import ReleaseNotFound, find, recorded_names, write_release
    from common.catalog import release_problems
    from common.releases import Release, valid_name

    catalog = read_catalog(catalog_path(settings))
    in_catalog = catalog.releases if catalog is not None else {}
    try:
        ssm = _ssm(settings)
        if a.action == "list":
            recorded = recorded_names(ssm)
            for name in sorted(set(recorded) | set(in_catalog)):
                console.print(f"{escape(name)}  ({'recorded' if name in recorded else 'catalog'})")
            return 0
        if not a.name or not valid_name(a.name):
            raise CliError(f"release name {a.name!r}: letters, digits and . _ - (e.g. v1.2.3)")
        if a.action == "show":
            try:
                found = find(ssm, in_catalog, a.name)
            except ReleaseNotFound as e:
                raise CliError(str(e)) from None
            console.print(f"release [bold]{escape(a.name)}[/bold] ({escape(found.source)})")
            for n, c in enumerate(found.release.components(), 1):
                console.print(f"{n}. {c.kind} {escape(c.name)}" + (f" {escape(c.version)}" if c.version else ""))
            kept = [d for d, v in found.release.databases.items() if not v.required]
            if kept:
                console.print(f"database(s) not rolled back with it: {escape(', '.join(kept))}")
            return 0
        try:
            release = Release(services=_pairs("--service", a.service), functions=_pairs("--function", a.function),
                              sites=_pairs("--site", a.site), flags=a.flag or [], kill_switches=a.kill_switch or [],
                              databases={d: {"required": True} for d in a.database or []},
                              recorded_by=a.recorded_by, recorded_at=datetime.now().astimezone())
        except ValidationError as e:
            raise describe_validation(e, "release") from None
        if not release.names():
            raise CliError("a release needs at least one component: --service, --function, --site, --flag, "
                           "--kill-switch or --database")
        if catalog is not None:
            problems = release_problems(catalog.model_copy(update={"releases": {a.name: release}}))
            if problems:
                raise CliError("not recorded:\n" + "\n".join(f"  - {p}" for p in problems))
        where = write_release(ssm, a.name, release)
    except (ClientError, BotoCoreError) as e:
        raise CliError(f"AWS SSM Parameter Store: {e}", 3) from None
    console.print(f"recorded release [bold]{escape(a.name)}[/bold] in {escape(where)}: "
                  + ", ".join(f"{c.kind} {escape(c.name)}" for c in release.components()))
    return 0


def add_release_parser(sub: Any) -> None:
    r = sub.add_parser("release", help="record, show or list releases (what a release shipped: docs/releases.md)")
    r.add_argument("action", choices=["record", "show", "list"])
    r.add_argument("name", nargs="?", help="the release, e.g. v1.2.3")
    r.add_argument("--service", action="append", metavar="NAME=VERSION", help="a service and the image tag shipped")
    r.add_argument("--function", action="append", metavar="NAME=VERSION", help="a Lambda function and its version")
    r.add_argument("--site", action="append", metavar="NAME=RELEASE", help="a site and its release prefix")
    r.add_argument("--flag", action="append", metavar="NAME", help="a flag the release turned on")
    r.add_argument("--kill-switch", action="append", metavar="NAME", help="a kill switch to enable on rollback")
    r.add_argument("--database", action="append", metavar="NAME",
                   help="a database whose migration must be rolled back with the release")
    r.add_argument("--recorded-by", default="starter.py", help="who records it (e.g. the pipeline's name)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="starter.py", description="Start and steer rollbacks from the runbook.",
                                epilog="exit codes: 0 ok/in progress, 1 refused or rollback did not succeed, "
                                       "2 bad input or no such rollback, 3 cannot reach Temporal or the worker")
    sub = p.add_subparsers(dest="command", required=True)

    def targeted(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("target", help="catalog name (e.g. api) or workflow id")
        sp.add_argument("--kind", choices=sorted(PROCEDURES),
                        help="procedure (default: the catalog's, names are unique across kinds; else a running "
                             "rollback's)")
        return sp

    s = targeted("start", "start a rollback (--kind service|database|frontend|lambda|infra)")
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
    s.add_argument("--wait", action="store_true", help="follow it until it ends (= --wait-until done)")
    s.add_argument("--wait-until", choices=list(WAIT_UNTIL), help="follow it until the change is made (changed), "
                   "validated (validated: monitoring begins) or it ends (done)")
    for name in ("approve", "reject"):
        d = targeted(name, f"{name} a rollback waiting for approval")
        d.add_argument("--as", dest="as_", required=True, help="your name as listed in the catalog")
        d.add_argument("--comment")
        d.add_argument("--reason")
    e = targeted("escalate", "change the severity of a rollback")
    e.add_argument("--severity", required=True)
    e.add_argument("--as", dest="as_", required=True)
    e.add_argument("--reason", required=True, help="why: recorded and announced in #incidents")
    e.add_argument("--comment")
    st = targeted("status", "where the rollback stands")
    st.add_argument("--watch", action="store_true", help="follow it until it ends (waits for it to start)")
    st.add_argument("--json", action="store_true", help="the full status as JSON")
    ls = sub.add_parser("list", help="rollbacks in flight")
    ls.add_argument("--all", action="store_true", help="include finished ones")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    c = targeted("cancel", "stop a rollback: no change starts after the cancel; says what was changed")
    c.add_argument("--wait", type=float, default=30, help="seconds to wait for it to stop and say how (default 30)")
    lg = sub.add_parser("login", help="get a token proving you are NAME from the sandbox's identity provider")
    lg.add_argument("person", metavar="NAME", help="a person of the catalog, e.g. alice")
    sc = sub.add_parser("schedule", help="the auto-rollback schedule (every 5 minutes; runbook: Automation)")
    sc.add_argument("action", choices=["pause", "resume", "status"])
    sc.add_argument("--note", help="why (kept on the schedule, shown by status)")
    add_release_parser(sub)
    sub.add_parser("doctor", help="check the configuration as the worker does at start (Temporal, namespace, "
                                  "search attributes, catalog, AWS, tools, secrets)")
    sch = sub.add_parser("schema", help="the JSON Schema of KIND's input (what the Web UI's Start Workflow takes)")
    sch.add_argument("kind", metavar="KIND", choices=sorted(api.PROCEDURES), help=", ".join(sorted(api.PROCEDURES)))
    return p


async def cmd_doctor(settings: Settings, a: argparse.Namespace) -> int:
    """The worker's preflight, on demand: what passes, and each problem with its fix."""
    mode = resolve_mode(settings)
    report = await preflight(settings, mode, "doctor")
    console.print(f"mode: [bold]{mode.name}[/bold] (catalog {escape(str(mode.catalog))}, task queue "
                  f"{escape(settings.task_queue)})")
    for line in report.passed:
        console.print(f"[green]ok[/green]   {escape(line)}")
    for p in report.problems:
        console.print(f"[red]FAIL[/red] {escape(f'[{p.check}] {p.text}')}")
    if not (settings.receiver_token or settings.receiver_hmac_secret):
        console.print("note: ROLLBACK_RECEIVER_TOKEN / ROLLBACK_RECEIVER_HMAC_SECRET are not set here; the alert "
                      "receiver refuses to start without one")
    console.print("all checks passed" if report.ok else f"{len(report.problems)} problem(s)")
    return report.exit_code


COMMANDS = {"start": cmd_start, "approve": cmd_decide, "reject": cmd_decide, "escalate": cmd_escalate,
            "status": cmd_status, "list": cmd_list, "cancel": cmd_cancel, "schedule": cmd_schedule}


def _short(e: BaseException) -> str:
    """The useful tail of the SDK's connection error (it nests transport errors)."""
    text = str(e)
    for marker in ('message: "', 'error: "', 'ConnectError("'):
        if marker in text:
            return text.split(marker, 1)[1].split('"', 1)[0]
    return text


async def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "schema":  # needs no settings and no Temporal (common/web_ui.py)
        print(json.dumps(web_ui.schema(args.kind), indent=2))
        return 0
    try:
        settings = Settings()
        resolve_mode(settings)  # the same rule as the worker's: a cluster without ROLLBACK_AWS=real is refused
    except (ValidationError, ModeError) as e:
        err.print(f"[red]error:[/red] {escape(describe_settings_error(e) if isinstance(e, ValidationError) else str(e))}")
        return 2
    if args.command == "doctor":
        return await cmd_doctor(settings, args)
    try:
        if args.command == "login":  # needs no Temporal
            return await cmd_login(settings, args)
        if args.command == "release":  # needs no Temporal
            return cmd_release(settings, args)
        api.CLI = invocation()
        if args.command == "start":  # bad input is reported even when Temporal is down
            args.kind = args.kind or start_kind(settings, args.target)
            args.request = api.build_request(args.kind, start_fields(args), catalog_path(settings), FLAGS)
        try:
            client = await connect(settings)
        except RuntimeError as e:  # what Client.connect raises when nothing answers
            fix = (f"check that the Temporal frontend at TEMPORAL_ADDRESS={settings.temporal_address} is up and "
                   "that the address is right" if settings.temporal_address else
                   "TEMPORAL_ADDRESS is not set, so this is the local dev server: start it with 'make run', "
                   "or set TEMPORAL_ADDRESS to your cluster's host:port")
            raise CliError(f"cannot reach Temporal at {settings.address} (namespace {settings.temporal_namespace}): "
                           f"{_short(e)}.\nTo fix: {fix}.", 3) from None
        if getattr(args, "target", None) is not None and args.command != "start":
            args.kind, args.target = await rollbacks(client, settings).resolve(args.kind, args.target)
        return await COMMANDS[args.command](client, settings, args)
    except RollbackError as e:  # CliError and the API's typed errors, each with its exit code
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
