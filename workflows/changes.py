"""Changes: every activity that changes the outside world, and the ledger of those made.

``workflows.options.call`` runs every activity of every procedure; for the ones named in
``CHANGES`` it goes through ``make`` here, which guarantees, in one place:

- **a cancel always wins**: from the moment a cancel is requested, no change starts; a change
  already running when it arrives completes (a half-made change is worse than either state)
  and is recorded as such, then the cancel takes effect;
- **every change is in the status** (``status.changes``), with the equivalent command, so a
  cancelled or failed rollback says exactly what it changed and what it did not.

Any other activity interrupted by the cancel raises ``asyncio.CancelledError`` (not an
``ActivityError``), so no ``except FailureError`` on the way can swallow the cancel.
Workflow code (deterministic): no I/O here.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from temporalio import workflow
from temporalio.exceptions import FailureError, is_cancelled_exception

from common.models import Change, RollbackStatus
from workflows.timeline import innermost_message


def _td(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _weights(w: Any) -> str:
    """Target group ARN ...:targetgroup/<name>/<id> -> "<name> <weight>%"."""
    return ", ".join(f"{tg.split(':targetgroup/')[-1].split('/')[0]} {pct}%" for tg, pct in w.weights.items())


def _alias(to: Any) -> str:
    routing = (" --routing-config AdditionalVersionWeights=" + ",".join(f"{v}={w:g}" for v, w in to.weights.items())
               if to.weights else "")
    return (f"lambda update-alias --function-name {to.function_name} --name {to.alias} "
            f"--function-version {to.function_version}{routing}")


# activity name -> the change it makes, as the command a person would type (from its argument)
CHANGES: dict[str, Callable[[Any], str]] = {
    "deploy_task_definition": lambda r: (f"ecs update-service --cluster {r.ecs.cluster} --service {r.ecs.service} "
                                         f"--task-definition {_td(r.task_definition_arn)}"),
    "set_weights": lambda w: f"elbv2 modify-listener --listener-arn {w.listener_arn}: {_weights(w)}",
    "force_new_deployment": lambda e: (f"ecs update-service --cluster {e.cluster} --service {e.service} "
                                       "--force-new-deployment"),
    "run_one_off": lambda t: f"ecs run-task --cluster {t.ecs.cluster} ({t.ecs.service}'s task definition): "
                             f"{' '.join(t.command)}",
    "run_migration_command": lambda c: f"`{' '.join(c.command)}`",
    "restore_from_snapshot": lambda r: (f"rds restore-db-instance-from-db-snapshot --db-instance-identifier "
                                        f"{r.new_instance} --db-snapshot-identifier {r.snapshot_id}"),
    "point_secret_at": lambda p: f"secretsmanager put-secret-value --secret-id {p.secret_id} ({p.host_key} -> {p.host})",
    "upsert_cname": lambda c: f"route53 change-resource-record-sets UPSERT {c.name} CNAME {c.target}",
    "apply_release_sync": lambda r: f"s3 sync s3://{r.source_bucket}/{r.source_prefix} s3://{r.bucket} --delete",
    "apply_object_versions": lambda r: (f"s3 copy back the object versions of s3://{r.bucket} current at "
                                        f"{r.restore_to:%Y-%m-%d %H:%M:%S} UTC" + (" (exact)" if r.exact else "")),
    "create_invalidation": lambda i: (f"cloudfront create-invalidation --distribution-id {i.distribution_id} "
                                      f"--paths {' '.join(i.paths)}"),
    "point_function_alias": _alias,
    "point_function_aliases": lambda a: f"{len(a.targets)} x " + _listed([_alias(t) for t in a.targets], 3),
    "apply_stack_plan": lambda a: f"terraform apply rollback.plan (sha256 {a.sha256[:12]}) in {a.config_dir}",
    "write_flag": lambda w: f"write a new revision of flag {w.ref.key} (from revision {w.base_revision})",
    "deploy_flags": lambda d: f"deploy flag store revision {d.revision}",
    "start_deployment": lambda s: (f"appconfig start-deployment {s.resolved.where} --configuration-version "
                                   f"{s.version}"),
    # bookkeeping, but an AWS write too: never after a cancel either (activities/known_good.py)
    "record_verdicts": lambda rs: "tag rollback verdicts: " + ", ".join(
        f"{r.place.version or r.place.name.rsplit('/', 1)[-1]} {r.verdict.verdict}" for r in rs[:6])
        + (f" and {len(rs) - 6} more" if len(rs) > 6 else ""),
    "move_current": lambda m: (f"secretsmanager update-secret-version-stage --secret-id {m.secret_id} "
                               f"--version-stage AWSCURRENT --remove-from-version-id {m.from_version} "
                               f"--move-to-version-id {m.to_version}"),
}


def _listed(items: list[str], shown: int) -> str:
    return "; ".join(items[:shown]) + (f"; and {len(items) - shown} more like it" if len(items) > shown else "")


def _each_outcome(results: list[Any]) -> tuple[str, str]:
    """A batch change (one activity for a fleet): made if any item was, saying which failed."""
    failed = [r for r in results if getattr(r, "error", None)]
    if not failed:
        return "made", ""
    return ("failed" if len(failed) == len(results) else "made",
            f"failed for {len(failed)} of {len(results)}: " + _listed([f.error for f in failed], 3))


# activity name -> the state and detail a change reached, from its result, where one activity makes many
OUTCOMES: dict[str, Callable[[Any], tuple[str, str]]] = {
    "point_function_aliases": _each_outcome,
}


class Ledger:
    """The changes a rollback made, kept in its status."""

    def __init__(self, status: RollbackStatus) -> None:
        self.status = status

    def start(self, what: str) -> Change:
        running = [st.name for st in self.status.steps if st.state.value == "running"]
        change = Change(what=what, step=running[-1] if running else "", state="in_flight", at=workflow.now())
        self.status.changes.append(change)
        return change

    @property
    def made(self) -> list[Change]:
        return [c for c in self.status.changes if c.state != "failed"]

    def describe(self) -> str:
        """The changes made, one clause each: for messages and the final report."""
        made = self.made
        if not made:
            return "none"
        return "; ".join(f"{c.what}" + (f" ({c.detail})" if c.detail else "") for c in made)


def ledger() -> Ledger | None:
    """The running rollback's ledger; None for other workflows and for runs from before it existed."""
    return getattr(workflow.instance(), "ledger", None)


def cancel_requested() -> bool:
    """A cancel was requested of this workflow (it wins even if an ``except`` swallowed it)."""
    return workflow.cancellation_reason() is not None


def cancel_wins() -> bool:
    """Cancel requested, in a run that records its changes (older runs replay as they ran)."""
    return ledger() is not None and cancel_requested()


def cancelled(e: BaseException) -> BaseException:
    """An activity failure caused by the workflow's cancel becomes ``CancelledError``, so that no
    ``except FailureError`` on the way (a best-effort notification, a check) can swallow it."""
    if isinstance(e, FailureError) and is_cancelled_exception(e) and cancel_wins():
        return asyncio.CancelledError(f"cancel requested: {e}")
    return e  # (runs from before the ledger: exactly as they ran then)


async def make(fn_name: str, arg: Any, start: Callable[[], "asyncio.Future[Any]"]) -> Any:
    """Run a change: never after a cancel; recorded; finished even if the cancel arrives meanwhile."""
    book = ledger()
    if book is None:  # a run from before the ledger: exactly as it ran then
        return await start()
    what = CHANGES[fn_name](arg)
    if cancel_requested():
        raise asyncio.CancelledError(f"cancel requested: not started: {what}")
    change = book.start(what)
    handle = start()
    try:
        result = await asyncio.shield(handle)
    except asyncio.CancelledError:
        # The cancel arrived while this change ran: let it finish, record it, then cancel.
        try:
            await handle
        except FailureError as e:
            change.state, change.detail = "failed", innermost_message(e)
        else:
            change.state, change.detail = "made", "it was under way when the cancel arrived"
        raise
    except FailureError as e:
        change.state, change.detail = "failed", innermost_message(e)
        raise
    change.state, change.detail = OUTCOMES[fn_name](result) if fn_name in OUTCOMES else ("made", "")
    return result
