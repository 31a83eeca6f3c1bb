"""The programmatic API: start, follow and decide rollbacks. One code path for ``starter.py``,
the alert receiver (``receiver.py``), the auto-rollback schedule and any other tool.

    rollbacks = Rollbacks(client, task_queue="rollbacks", catalog_path="catalog.yaml")
    started = await rollbacks.start("service", {"service": "api", "severity": "SEV-2",
                                                "requested_by": "dana", "reason": "errors after v1.2.3"})
    started = await rollbacks.start_or_join("service", fields, Evidence(source="alertmanager", ...))
    status = await rollbacks.status("service", "api")          # or a workflow id
    outcome = await rollbacks.approve("service", "api", approver="alice", comment="go")

Requests are validated exactly as the workflow validates its input, plus the catalog name
when the catalog is readable. Errors are typed (``BadRequest``, ``NoSuchRollback``,
``AlreadyRunning``, ...), each with a message for a person that names the field or thing and
the fix, and ``code``: the exit code ``starter.py`` uses for it.

The one-per-target rule: a rollback started here has the workflow id ``rollback-<kind>-<target>``.
``start`` refuses while one runs; ``start_or_join`` (signal-with-start of ``add_evidence``)
starts it or attaches the evidence to the running one, so any number of concurrent callers
(an alert storm) produce exactly one workflow.

The auto-rollback schedule (runbook "Automation") is managed here too:
``ensure_auto_rollback_schedule`` (called by the worker at start-up), ``pause_schedule``,
``resume_schedule``, ``describe_schedule``.
"""

from __future__ import annotations

import asyncio
import time
from shlex import quote
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel, SecretStr, ValidationError
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client, Schedule, ScheduleActionStartWorkflow, ScheduleAlreadyRunningError, ScheduleIntervalSpec,
    ScheduleOverlapPolicy, SchedulePolicy, ScheduleSpec, ScheduleState, ScheduleUpdate, ScheduleUpdateInput,
    WorkflowExecutionDescription, WorkflowExecutionStatus, WorkflowHandle, WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from common.catalog import Catalog, CatalogError, UnknownTarget, load_catalog
from common.identity import SlackCallback, request_digest
from common.policy import Policy
from common.models import (
    FINAL_PHASES, fleet_target, ConfigRollbackInput, DatabaseRollbackInput, DecisionOutcome, DecisionRequest, Evidence,
    FeatureFlagRollbackInput,
    FrontendRollbackInput, InfraRollbackInput, LambdaRollbackInput, Phase, ReleaseRollbackInput, RollbackStatus,
    ServiceRollbackInput, one_line,
)
from common.settings import Settings, resolve_mode
from common.temporal import KIND, PHASE, SEVERITY, TARGET

# kind -> (workflow type, input model, the input field naming the target)
PROCEDURES: dict[str, tuple[str, type, str]] = {
    "service": ("ServiceRollback", ServiceRollbackInput, "service"),
    "database": ("DatabaseRollback", DatabaseRollbackInput, "database"),
    "frontend": ("FrontendRollback", FrontendRollbackInput, "site"),
    "lambda": ("LambdaRollback", LambdaRollbackInput, "function"),
    "infra": ("InfraRollback", InfraRollbackInput, "stack"),
    "flag": ("FeatureFlagRollback", FeatureFlagRollbackInput, "flag"),
    "config": ("ConfigRollback", ConfigRollbackInput, "target"),
    "release": ("ReleaseRollback", ReleaseRollbackInput, "release"),  # docs/releases.md
}
# kind -> the catalog's lookup method for that kind's targets (its section is the plural); a release
# may be recorded outside the catalog (SSM), so the worker says whether it exists
CATALOG_LOOKUP = {"service": "service", "database": "database", "frontend": "site", "lambda": "function",
                  "infra": "stack", "flag": "flag", "config": "config"}

QUERY_TIMEOUT = timedelta(seconds=5)  # a worker answers a query in milliseconds
NO_WORKER_GRACE = timedelta(seconds=10)  # how long to ask again before saying no worker answered
UPDATE_TIMEOUT = timedelta(seconds=60)  # the decision's proof is checked first (an identity provider may be slow)
POLL_SECONDS = 1.0
GATE_WAIT_SECONDS = 30
# A running rollback gets no more evidence signals past this many history events (Temporal ends a
# workflow at ~51,200): an alert storm never wedges or kills it.
EVIDENCE_HISTORY_LIMIT = 10_000
COOLDOWN_RUNS = 20  # the target's newest runs looked at for an automatic rollback within the cooldown


# --- errors ------------------------------------------------------------------------------

class RollbackError(Exception):
    """Something a person must know; ``code`` is starter.py's exit code for it."""

    code = 1

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(RollbackError):
    """Invalid input or an unknown target. ``problems``: (field, message) pairs."""

    code = 2

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class NoSuchRollback(RollbackError):
    code = 2


class NotARollback(RollbackError):
    code = 2


class AlreadyRunning(RollbackError):
    def __init__(self, message: str, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


class RollbackEnded(RollbackError):
    """The rollback has ended: there is nothing to steer."""


class NotRecorded(RollbackError):
    """The workflow refused the decision (e.g. no approval pending)."""


class NoWorker(RollbackError):
    """No worker answered: the request may not have been seen."""

    code = 3


# --- requests ----------------------------------------------------------------------------

def workflow_id(kind: str, target: str) -> str:
    return f"rollback-{kind}-{target}"


def target_of(request: Any, target_field: str) -> str:
    """What the rollback acts on: the target field, or the model's own ``target`` (a Lambda fleet)."""
    return getattr(request, "target", None) or getattr(request, target_field)


def names_of(request: Any, target_field: str) -> str:
    """The catalog names a request acts on, joined with ',' (a Lambda fleet's target is bounded, not a list)."""
    names = getattr(request, "names", None)
    return ",".join(names) if names else target_of(request, target_field)


def start_summary(kind: str, target: str, request: Any) -> str:
    """The Web UI's Summary of a rollback we start (its current details say the versions found)."""
    return one_line(kind, target, None, getattr(request, "to_version", None), request.severity, request.requested_by)


def procedure(kind: str) -> tuple[str, type, str]:
    try:
        return PROCEDURES[kind]
    except KeyError:
        raise BadRequest(f"unknown kind {kind!r} (known: {', '.join(sorted(PROCEDURES))})",
                         [("kind", "unknown procedure")]) from None


def describe_validation(e: ValidationError, what: str = "rollback request",
                        names: Mapping[str, str] | None = None) -> BadRequest:
    """A BadRequest naming each bad field (as ``names`` calls it, e.g. a CLI option) and the problem."""
    lines, problems = [], []
    for x in e.errors():
        field = ".".join(str(p) for p in x["loc"][:1]) or "input"
        flag = (names or {}).get(field, field)
        name = f"{flag} ({field})" if flag.startswith("--") and flag[2:] != field else flag
        msg = x["msg"].removeprefix("Value error, ")
        lines.append(f"  - {name}: {msg}")
        problems.append((field, msg))
    return BadRequest(f"invalid {what}:\n" + "\n".join(lines), problems)


_catalog_cache: dict[Path, tuple[int, Catalog]] = {}


def read_catalog(path: str | Path | None, strict: bool = False) -> Catalog | None:
    """The catalog at ``path`` (cached until the file changes); None if it cannot be read,
    or with ``strict`` a CatalogError saying why."""
    if path is None:
        return None
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = None  # load_catalog says why
    cached = _catalog_cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        catalog = load_catalog(path)
    except (OSError, CatalogError, ValueError) as e:
        if strict:
            raise e if isinstance(e, CatalogError) else CatalogError(f"{path}: {e}") from None
        return None  # the worker's catalog decides; it answers with the same message
    if mtime is not None:
        _catalog_cache[path] = (mtime, catalog)
    return catalog


def check_target(catalog_path: str | Path | None, kind: str, target: str) -> None:
    """Raise BadRequest if the catalog is readable and ``target`` is not in it."""
    catalog = read_catalog(catalog_path)
    if catalog is None or target.startswith("rollback-") or kind not in CATALOG_LOOKUP:
        return
    try:
        for name in target.split(","):  # a Lambda fleet names several functions
            getattr(catalog, CATALOG_LOOKUP[kind])(name)
    except UnknownTarget as e:
        raise BadRequest(str(e), [(procedure(kind)[2], str(e))]) from None


def catalog_kind(catalog: Catalog | None, target: str) -> str | None:
    """The kind whose catalog section names ``target`` (every name of a Lambda fleet ``a,b``); names are
    unique across kinds (the catalog checks it), so there is at most one."""
    if catalog is None:
        return None
    names = target.split(",")
    if target in catalog.releases:  # a release the catalog declares (a recorded one needs --kind release)
        return "release"
    return next((kind for kind, lookup in CATALOG_LOOKUP.items()
                 if all(n in getattr(catalog, lookup + "s") for n in names)), None)


def known_names(catalog: Catalog) -> str:
    """Every target name of the catalog by section, e.g. "services: api, api-bg; flags: ..."."""
    return "; ".join(f"{section}: {', '.join(sorted(names))}" for section, names in catalog.sections().items()
                     if names) or "none"


# How hints name the CLI: starter.py sets it to the command it was run as (e.g. ".venv/bin/python starter.py"),
# so every hint it prints works as printed.
CLI = "starter.py"


def build_request(kind: str, fields: Mapping[str, Any] | BaseModel, catalog_path: str | Path | None = None,
                  names: Mapping[str, str] | None = None) -> Any:
    """Validate a request as the workflow will (fields left None are left out), plus the catalog name."""
    _, model, target_field = procedure(kind)
    if isinstance(fields, BaseModel):
        fields = fields.model_dump(exclude_unset=True)
    try:
        request = model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise describe_validation(e, names=names) from None
    check_target(catalog_path, kind, names_of(request, target_field))
    return request


def state(status: WorkflowExecutionStatus | None) -> str:
    """A workflow execution's state as a word ("running", "completed", "cancelled", ...)."""
    return status.name.lower().replace("canceled", "cancelled") if status else "closed"


class Started(BaseModel):
    """What ``start``/``start_or_join`` did."""

    kind: str
    target: str
    workflow_id: str
    run_id: str
    started: bool  # True: this call started the workflow
    # handled: an earlier run ended after `not_before`; declined: automation may not start one now (cooldown)
    outcome: Literal["started", "joined", "handled", "declined"]
    message: str = ""
    cause: str = ""  # handled/declined: the earlier run that answers for it, "<workflow id>/<run id>"


# --- the API -----------------------------------------------------------------------------

class Rollbacks:
    """Start and steer rollbacks on one task queue, validating against one catalog.

    ``names`` maps input fields to what the caller's user typed (starter.py: ``--severity``),
    so error messages name what they can fix.

    ``automation_key`` (the alert receiver, the auto-rollback check): every start is signed with it
    for the worker, bound to the requester, target and request (``via`` names the signer), so
    ``policy.automation_may_proceed`` can trust it. Without it, starts carry only what the caller put in
    (a person's ``id_token``) and automation requesters wait for approvals like anyone.
    """

    def __init__(self, client: Client, task_queue: str, catalog_path: str | Path | None = None, *,
                 names: Mapping[str, str] | None = None, automation_key: SecretStr | None = None,
                 via: str = "") -> None:
        self.client, self.task_queue, self.catalog_path = client, task_queue, catalog_path
        self.names = names
        self.automation_key, self.via = automation_key, via

    def _signed(self, kind: str, target: str, request: Any) -> Any:
        """The request with the automation proof, when this caller holds the key."""
        if self.automation_key is None or request.automation_token or request.id_token:
            return request
        from activities.identity import mint_automation_token

        token = mint_automation_token(self.automation_key, requested_by=request.requested_by, kind=kind,
                                      target=target, digest=request_digest(request), via=self.via or "automation")
        return request.model_copy(update={"automation_token": token})

    @classmethod
    def from_settings(cls, client: Client, settings: Settings | None = None, *,
                      names: Mapping[str, str] | None = None) -> "Rollbacks":
        """The worker's task queue and catalog, resolved as the worker resolves them (sandbox or
        production; ``common.settings.resolve_mode``, which raises ModeError on mixed settings)."""
        settings = settings or Settings()
        return cls(client, settings.task_queue, resolve_mode(settings).catalog, names=names)

    # --- requests and starts ---

    def build_request(self, kind: str, fields: Mapping[str, Any] | BaseModel) -> Any:
        return build_request(kind, fields, self.catalog_path, self.names)

    def check_target(self, kind: str, target: str) -> None:
        check_target(self.catalog_path, kind, target)

    def _search_attributes(self, kind: str, target: str, request: Any) -> TypedSearchAttributes:
        return TypedSearchAttributes([
            SearchAttributePair(KIND, kind), SearchAttributePair(TARGET, target),
            SearchAttributePair(SEVERITY, request.severity), SearchAttributePair(PHASE, Phase.starting.value)])

    async def start(self, kind: str, request: Mapping[str, Any] | BaseModel, *,
                    wf_id: str | None = None) -> Started:
        """Start a rollback with the one-per-target workflow id; AlreadyRunning if one is running."""
        wf_type, model, target_field = procedure(kind)
        if not isinstance(request, model):
            request = self.build_request(kind, request)
        target = target_of(request, target_field)
        self.check_target(kind, names_of(request, target_field))  # a model built elsewhere: still in the catalog
        wf_id = wf_id or workflow_id(kind, target)
        request = self._signed(kind, target, request)
        try:
            handle = await self.client.start_workflow(
                wf_type, request, id=wf_id, task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=self._search_attributes(kind, target, request),
                static_summary=start_summary(kind, target, request))
        except WorkflowAlreadyStartedError:
            raise AlreadyRunning(f"a rollback of {kind} {target!r} is already running as workflow {wf_id}; "
                                 f"follow it with '{CLI} status {quote(target)}' or cancel it first", wf_id) from None
        return Started(kind=kind, target=target, workflow_id=wf_id, run_id=handle.result_run_id or "",
                       started=True, outcome="started", message=f"started {wf_id}")

    async def start_or_join(self, kind: str, request: Mapping[str, Any] | BaseModel, evidence: Evidence, *,
                            not_before: datetime | None = None) -> Started:
        """Start the target's rollback, or attach ``evidence`` to the one running: never two.

        Signal-with-start of ``add_evidence`` on ``rollback-<kind>-<target>``: Temporal serialises
        concurrent calls on the id, so exactly one of them starts the workflow. The evidence is in
        the status either way (the starter's too).

        ``not_before`` (e.g. when an alert began): if the target's last rollback ENDED after it,
        that rollback already answered this alert and nothing is started again (a still-firing
        alert right after a rollback must not roll back a second version).

        This is the automation's way in (the alert receiver, the auto-rollback check): a rollback it
        starts is marked automatic (memo ``automatic``), and within the policy's
        ``auto_rollback_cooldown_minutes`` after an automatic rollback of the target ended, none is
        started (``declined``): only a person can. A running rollback whose history is already long
        gets no more evidence signals (``joined``, not recorded), so an alert storm cannot wedge it.
        """
        wf_type, model, target_field = procedure(kind)
        if not isinstance(request, model):
            request = self.build_request(kind, request)
        target = target_of(request, target_field)
        self.check_target(kind, names_of(request, target_field))  # a model built elsewhere: still in the catalog
        wf_id = workflow_id(kind, target)
        desc = await self._describe(wf_id)
        # A rollback in its final phase (posting its outcome) has answered already: as good as ended.
        running = desc is not None and desc.status == WorkflowExecutionStatus.RUNNING and \
            desc.typed_search_attributes.get(PHASE) not in {p.value for p in FINAL_PHASES}
        if running and (desc.history_length or 0) > EVIDENCE_HISTORY_LIMIT:  # type: ignore[union-attr]
            return Started(kind=kind, target=target, workflow_id=wf_id, run_id=desc.run_id, started=False,  # type: ignore[union-attr]
                           outcome="joined", message=(
                               f"joined {wf_id}: a rollback of {kind} {target!r} is already running; it has received "
                               f"so many events that this alert was not added to its evidence"))
        if not running and desc is not None and not_before is not None:
            handled = self._ended_since(kind, target, desc, not_before)
            if handled is not None:
                return handled
        if not running:
            declined = await self._cooling_down(kind, target, wf_id)
            if declined is not None:
                return declined
        request = self._signed(kind, target, request)
        handle = await self.client.start_workflow(
            wf_type, request, id=wf_id, task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="add_evidence", start_signal_args=[evidence], memo={"automatic": True},
            search_attributes=self._search_attributes(kind, target, request),
            static_summary=start_summary(kind, target, request))
        resp = getattr(handle, "_start_workflow_response", None)
        started = bool(getattr(resp, "started", False))
        return Started(kind=kind, target=target, workflow_id=wf_id, run_id=handle.result_run_id or "",
                       started=started, outcome="started" if started else "joined",
                       message=(f"started {wf_id}" if started else
                                f"joined {wf_id}: a rollback of {kind} {target!r} is already running; "
                                "the alert is recorded as evidence in its status"))

    async def _describe(self, wf_id: str) -> WorkflowExecutionDescription | None:
        try:
            return await self.client.get_workflow_handle(wf_id).describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    async def _cooling_down(self, kind: str, target: str, wf_id: str) -> Started | None:
        """``declined`` if an automatic rollback of the target ended within the policy's cooldown."""
        catalog = read_catalog(self.catalog_path)
        minutes = (catalog.policy if catalog is not None else Policy()).auto_rollback_cooldown_minutes
        if not minutes:
            return None
        now = datetime.now(timezone.utc)
        since = now - timedelta(minutes=minutes)
        final = {p.value for p in FINAL_PHASES}
        try:
            runs = [run async for run in self.client.list_workflows(f"WorkflowId = '{wf_id}'", limit=COOLDOWN_RUNS)]
        except RPCError as e:
            if e.status != RPCStatusCode.UNIMPLEMENTED:
                raise
            return None  # a Temporal without visibility (the time-skipping test server): no cooldown to read
        for run in runs:
            phase = run.typed_search_attributes.get(PHASE) or ""
            ended = run.close_time or (now if phase in final else None)  # ending: posting its outcome
            if ended is None or ended < since:
                continue
            if phase in ("refused", "rejected", "timed_out", "planned") or not (await run.memo()).get("automatic"):
                continue  # not an automatic rollback that went ahead
            until = ended + timedelta(minutes=minutes)
            return Started(kind=kind, target=target, workflow_id=wf_id, run_id=run.run_id, started=False,
                           outcome="declined", cause=f"{wf_id}/{run.run_id}", message=(
                               f"not started: automation rolled back {kind} {target!r} (workflow {wf_id}, ended "
                               f"{phase or state(run.status)} at {ended:%Y-%m-%d %H:%M:%S}Z); within "
                               f"policy.auto_rollback_cooldown_minutes ({minutes:g}), until "
                               f"{until:%Y-%m-%d %H:%M:%S}Z, only a person can start another: "
                               f"'{CLI} start {quote(target)} --kind {kind} --severity <SEV> --requested-by <you> "
                               "--reason <why>'"))
        return None

    def _ended_since(self, kind: str, target: str, desc: WorkflowExecutionDescription,
                     since: datetime) -> Started | None:
        wf_id = desc.id
        ended = desc.close_time or datetime.now(timezone.utc)  # (or it is ending: its final phase is set)
        since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        if ended < since:
            return None
        phase = desc.typed_search_attributes.get(PHASE) or state(desc.status)
        return Started(kind=kind, target=target, workflow_id=wf_id, run_id=desc.run_id, started=False,
                       outcome="handled", cause=f"{wf_id}/{desc.run_id}",
                       message=(f"not started again: {wf_id} ended ({phase}) at {ended:%Y-%m-%d %H:%M:%S}Z, "
                                f"after this alert began at {since.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}Z; "
                                "a new alert (a later start time) starts a new rollback"))

    async def worker_polling(self) -> bool:
        resp = await self.client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=self.client.namespace, task_queue=TaskQueue(name=self.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
        return bool(resp.pollers)

    # --- following ---

    async def resolve(self, kind: str | None, target: str) -> tuple[str, str]:
        """(kind, target) for a target typed without its kind: a workflow id names its kind
        (``rollback-flag-x``); a catalog name has one kind (names are unique across kinds); else a running
        rollback of that target (its workflow id, e.g. one typed in the Web UI); else a service."""
        if kind:
            return kind, target
        if target.startswith("rollback-"):
            return next((k for k in PROCEDURES if target.startswith(f"rollback-{k}-")), "service"), target
        found = catalog_kind(read_catalog(self.catalog_path), target)
        if found:
            return found, target
        if '"' not in target and "\\" not in target:
            try:
                async for wf in self.client.list_workflows(
                        f'{TARGET.name} = "{target}" AND ExecutionStatus = "Running"', limit=1):
                    return wf.typed_search_attributes.get(KIND) or "service", wf.id
            except RPCError:
                pass  # a Temporal without visibility: the catalog decides
        return "service", target

    def handle(self, kind: str, target: str) -> WorkflowHandle:
        """A catalog name means its one-per-target workflow; anything else is a workflow id (e.g. from the Web UI)."""
        catalog = read_catalog(self.catalog_path)
        section = getattr(catalog, CATALOG_LOOKUP[kind] + "s", None) if catalog is not None and kind in CATALOG_LOOKUP \
            else None
        is_name = not target.startswith("rollback-") and (
            catalog is None or section is None or all(n in section for n in target.split(",")))
        names = target.split(",")
        name = fleet_target(names) if len(names) > 1 else target  # a Lambda fleet's bounded target
        return self.client.get_workflow_handle(workflow_id(kind, name) if is_name else target)

    def no_worker(self, what: str) -> NoWorker:
        return NoWorker(f"no worker answered {what} within a few seconds: is the rollback worker running "
                        f"('make run', task queue {self.task_queue!r}, set by ROLLBACK_TASK_QUEUE)?")

    async def not_running(self, handle: WorkflowHandle, kind: str, target: str) -> RollbackError:
        """Why there is no running rollback to act on: it ended (exit 1) or never existed (exit 2)."""
        try:
            desc = await handle.describe()
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            self.check_target(kind, target)  # a typo is the likeliest cause: say so
            return NoSuchRollback(f"no rollback workflow {handle.id!r}; '{CLI} list' shows the running ones")
        return RollbackEnded(f"rollback {handle.id} has already ended ({state(desc.status)}); "
                             f"'{CLI} status {quote(target)}' shows how it ended")

    async def query_status(self, handle: WorkflowHandle) -> RollbackStatus | None:
        """The workflow's status; None if it has not run its first step yet. Raises RPCError NOT_FOUND."""
        try:
            return await handle.query("status", result_type=RollbackStatus, rpc_timeout=QUERY_TIMEOUT)
        except WorkflowQueryFailedError as e:
            raise NotARollback(f"workflow {handle.id} is not a rollback (it has no status): {e.message}") from None
        except RPCError as e:
            if e.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
                raise self.no_worker(f"about {handle.id}") from None
            if e.status == RPCStatusCode.FAILED_PRECONDITION:  # e.g. ended before any worker ran it
                desc = await handle.describe()
                raise RollbackEnded(f"workflow {handle.id} is {state(desc.status)} and has no rollback status: "
                                    f"{e.message}") from None
            raise

    async def fetch_status(self, handle: WorkflowHandle, kind: str, target: str) -> RollbackStatus:
        # A restarted worker takes a few seconds to answer queries (the server first tries the old one's
        # sticky queue): ask again for NO_WORKER_GRACE before saying no worker answered.
        patience = time.monotonic() + NO_WORKER_GRACE.total_seconds()
        for _ in range(10):  # None only for the moment between the start and its first workflow task
            try:
                status = await self.query_status(handle)
            except NoWorker:
                if time.monotonic() > patience:
                    raise
                await asyncio.sleep(POLL_SECONDS)
                continue
            except RPCError as e:
                if e.status == RPCStatusCode.NOT_FOUND:
                    raise await self.not_running(handle, kind, target) from None
                raise
            if status is not None:
                return status
            await asyncio.sleep(0.5)
        raise RollbackError(f"workflow {handle.id} has not started its first step yet; try again in a moment")

    async def status(self, kind: str, target_or_id: str) -> RollbackStatus:
        """Where a rollback stands: a catalog name (its one-per-target workflow) or a workflow id."""
        return await self.fetch_status(self.handle(kind, target_or_id), kind, target_or_id)

    # --- deciding ---

    async def wait_for_approval_step(self, handle: WorkflowHandle, kind: str, target: str,
                                     on_wait: Callable[[str], None] | None = None) -> None:
        """An approver can be quicker than the first steps: wait a little for the approval step to open."""
        deadline, said = time.monotonic() + GATE_WAIT_SECONDS, False
        while True:
            try:
                s = await self.query_status(handle)
            except RPCError as e:
                if e.status == RPCStatusCode.NOT_FOUND:
                    raise await self.not_running(handle, kind, target) from None
                raise
            if (s is not None and s.phase != Phase.starting) or time.monotonic() > deadline:
                return  # the workflow itself says whether the decision can be taken now
            if not said and on_wait is not None:
                step = next((st.name for st in s.steps if st.state.value == "running"), "") if s else ""
                on_wait(f"{handle.id} is still starting{f' ({step})' if step else ''}; waiting up to "
                        f"{GATE_WAIT_SECONDS:g}s for its approval step ...")
            said = True
            await asyncio.sleep(POLL_SECONDS / 2)

    async def decide(self, kind: str, target: str, decision: Literal["approve", "reject"], approver: str,
                     comment: str = "", reason: str = "",
                     on_wait: Callable[[str], None] | None = None, *, id_token: str | None = None,
                     slack: SlackCallback | None = None) -> DecisionOutcome:
        """Approve or reject through the ``decide`` update; the outcome says whether it counted (a decision
        without a valid proof, ``id_token`` or ``slack``, never does, and is recorded as refused)."""
        handle = self.handle(kind, target)
        try:
            req = DecisionRequest(decision=decision, approver=approver, comment=comment or "", reason=reason or "",
                                  id_token=id_token or None, slack=slack)
        except ValidationError as ve:
            raise describe_validation(ve, "decision", self.names) from None
        await self.wait_for_approval_step(handle, kind, target, on_wait)
        return await self.decide_on(handle, req, kind, target)

    async def decide_on(self, handle: WorkflowHandle, req: DecisionRequest, kind: str = "",
                        target: str = "") -> DecisionOutcome:
        """The ``decide`` update on one workflow (e.g. the one a Slack button names), errors typed."""
        target = target or handle.id
        try:
            return await handle.execute_update("decide", req, result_type=DecisionOutcome,
                                               rpc_timeout=UPDATE_TIMEOUT)
        except WorkflowUpdateFailedError as e:
            # A rollback in its final phase is only posting its outcome before it closes: it has ended.
            status = await self.query_status(handle)
            if status is not None and status.phase in FINAL_PHASES:
                raise RollbackEnded(f"rollback {handle.id} has already ended ({status.phase.value}); "
                                    f"'{CLI} status {quote(target)}' shows how it ended") from None
            raise NotRecorded(f"not recorded: {e.cause.message if e.cause else e}") from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise NoWorker(f"no answer from the workflow within {UPDATE_TIMEOUT.seconds}s, so the {req.decision} may NOT "
                           f"be recorded: check '{CLI} status {quote(target)}' (is the worker running?)") from None
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise await self.not_running(handle, kind, target) from None
            raise

    async def approve(self, kind: str, target: str, approver: str, comment: str = "", **kw: Any) -> DecisionOutcome:
        return await self.decide(kind, target, "approve", approver, comment, **kw)

    async def reject(self, kind: str, target: str, approver: str, comment: str = "", reason: str = "",
                     **kw: Any) -> DecisionOutcome:
        return await self.decide(kind, target, "reject", approver, comment, reason, **kw)


# --- the auto-rollback schedule (runbook "Automation": every 5 minutes) --------------------

AUTO_ROLLBACK_SCHEDULE = "auto-rollback"
AUTO_ROLLBACK_WORKFLOW = "AutoRollbackCheck"
AUTO_ROLLBACK_EVERY = timedelta(minutes=5)
# A freshly created schedule first fires after this grace, so a worker (re)started on an incident
# (the sandbox starts at one) gives people a moment before automation acts.
AUTO_ROLLBACK_FIRST_AFTER = timedelta(minutes=5)


def auto_rollback_schedule(task_queue: str, every: timedelta = AUTO_ROLLBACK_EVERY,
                           start_at: datetime | None = None, paused: bool = False, note: str = "") -> Schedule:
    from common.models import AutoRollbackCheckInput

    return Schedule(
        action=ScheduleActionStartWorkflow(AUTO_ROLLBACK_WORKFLOW, AutoRollbackCheckInput(),
                                           id="auto-rollback-check", task_queue=task_queue,
                                           execution_timeout=timedelta(minutes=4)),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)], start_at=start_at),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(paused=paused, note=note),
    )


async def ensure_auto_rollback_schedule(client: Client, task_queue: str, *,
                                        schedule_id: str = AUTO_ROLLBACK_SCHEDULE,
                                        every: timedelta = AUTO_ROLLBACK_EVERY) -> str:
    """Create the schedule, or bring an existing one's action/spec/policy up to date (keeping
    whether people paused it). Idempotent; returns "created" or "updated"."""
    start_at = datetime.now(timezone.utc) + AUTO_ROLLBACK_FIRST_AFTER
    try:
        await client.create_schedule(schedule_id, auto_rollback_schedule(
            task_queue, every, start_at=start_at, note="created by the rollback worker"))
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def update(inp: ScheduleUpdateInput) -> ScheduleUpdate:
        old = inp.description.schedule
        new = auto_rollback_schedule(task_queue, every, start_at=old.spec.start_at,
                                     paused=old.state.paused, note=old.state.note)
        return ScheduleUpdate(schedule=new)

    await client.get_schedule_handle(schedule_id).update(update)
    return "updated"


class ScheduleInfo(BaseModel):
    schedule_id: str
    paused: bool
    note: str
    every: list[timedelta]
    overlap: str
    next_runs: list[datetime]
    recent: list[tuple[datetime, str]]  # (when it ran, workflow id)


def _no_schedule(schedule_id: str) -> NoSuchRollback:
    return NoSuchRollback(f"no schedule {schedule_id!r}: the worker creates it at start-up ('make run'); "
                          "is it connected to this Temporal namespace?")


async def describe_schedule(client: Client, schedule_id: str = AUTO_ROLLBACK_SCHEDULE) -> ScheduleInfo:
    try:
        d = await client.get_schedule_handle(schedule_id).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise _no_schedule(schedule_id) from None
        raise
    s = d.schedule
    return ScheduleInfo(
        schedule_id=schedule_id, paused=s.state.paused, note=s.state.note,
        every=[i.every for i in s.spec.intervals],
        overlap=(s.policy.overlap.name if s.policy.overlap is not None else "SKIP"),
        next_runs=list(d.info.next_action_times[:3]),
        recent=[(a.started_at, getattr(a.action, "workflow_id", "")) for a in d.info.recent_actions[-5:]])


async def pause_schedule(client: Client, note: str, schedule_id: str = AUTO_ROLLBACK_SCHEDULE) -> None:
    await _set_paused(client, schedule_id, note, paused=True)


async def resume_schedule(client: Client, note: str, schedule_id: str = AUTO_ROLLBACK_SCHEDULE) -> None:
    await _set_paused(client, schedule_id, note, paused=False)


async def _set_paused(client: Client, schedule_id: str, note: str, paused: bool) -> None:
    handle = client.get_schedule_handle(schedule_id)
    try:
        await (handle.pause(note=note) if paused else handle.unpause(note=note))
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise _no_schedule(schedule_id) from None
        raise
