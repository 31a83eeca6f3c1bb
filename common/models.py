"""Models shared by workflows, activities, the CLI and tests.

One input model per workflow (each extends ``RollbackRequest``), one status model for all.
Inputs forbid unknown fields so a typo in the Web UI's JSON is an error, not a silent default.
"""

from __future__ import annotations

import hashlib

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.identity import MAX_TOKEN_CHARS, ProofRecord, SeverityChange, SlackCallback
from common.policy import Severity

# Size limits on what outsiders type or send (the Web UI, CLI, webhooks): a workflow's status and
# result must stay far below Temporal's 2 MB payload limit whatever arrives (see workflows/bounds.py).
MAX_REASON = 4000  # characters: a few KB, a paragraph
MAX_NAME = 200  # a person, a version, a comment's author
MAX_TEXT = 2000  # a comment, a summary
MAX_LABELS = 32  # an alert's labels (they become evidence): 32 x 320 characters at most
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
Label = Annotated[str, Field(max_length=MAX_LABEL_VALUE)]
LabelKey = Annotated[str, Field(max_length=MAX_LABEL_KEY)]


class Input(BaseModel):
    # str_max_length: no text an outsider types can grow a workflow's status without bound.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, str_max_length=MAX_REASON)


class RollbackRequest(Input):
    """Fields every rollback takes."""

    severity: Severity = Field(description='"SEV-0" .. "SEV-4", from the runbook\'s matrix')
    requested_by: str = Field(min_length=1, max_length=MAX_NAME, description="who asks for the rollback")
    reason: str = Field(min_length=1, max_length=MAX_REASON, description="why, in a sentence (at most 4000 characters)")
    dry_run: bool = Field(False, description="resolve everything, return the plan, change nothing")
    monitor_minutes: float | None = Field(
        None, gt=0, le=24 * 60, description="post-rollback monitoring window (default 30)"
    )
    # Proof of who asks (common/identity.py): without one the rollback runs, but requested_by gets no
    # privilege (no on-call auto-approval, no automation_may_proceed, no kill_switch_immediate).
    id_token: str | None = Field(None, max_length=MAX_TOKEN_CHARS, repr=False,
                                 description="requested_by's OIDC ID token (starter.py sends it)")
    automation_token: str | None = Field(None, max_length=MAX_TOKEN_CHARS, repr=False,
                                         description="signed by the alert receiver / auto-rollback check")


class ServiceRollbackInput(RollbackRequest):
    service: str = Field(min_length=1, description="catalog name of the service, e.g. 'api'")
    to_version: str | None = Field(None, description="image tag to return to; default: previous")
    rollout_percentages: list[int] | None = Field(
        None, description="gradual traffic shift for blue/green services, e.g. [50, 100]"
    )

    @field_validator("rollout_percentages")
    @classmethod
    def _increasing_to_100(cls, v: list[int] | None) -> list[int] | None:
        return increasing_to_100(v)


def increasing_to_100(v: list[int] | None) -> list[int] | None:
    """Gradual steps (rollout_percentages, routing_steps): increasing, 1..100, ending at 100."""
    if v is None:
        return v
    if not v or any(p < 1 or p > 100 for p in v) or v != sorted(set(v)) or v[-1] != 100:
        raise ValueError(
            "must be increasing percentages between 1 and 100 that end at 100, e.g. [50, 100]"
        )
    return v


class DatabaseRollbackInput(RollbackRequest):
    database: str = Field(min_length=1, description="catalog name of the database")
    mode: Literal["migration", "snapshot_restore", "post_migration"]
    steps: int = Field(1, ge=1, le=50, description="migrations to roll back (migration modes)")
    snapshot_id: str | None = Field(None, description="snapshot_restore: this snapshot")
    restore_before: datetime | None = Field(
        None, description="snapshot_restore: the newest manual snapshot taken before this time")
    include_automatic: bool = Field(False, description="also consider automatic snapshots")
    new_instance: str | None = Field(None, description="default: <instance>-rollback")
    instance_class: str | None = Field(None, description="default: the source instance's")
    multi_az: bool | None = Field(None, description="default: the source instance's")
    rollback_migration: bool = Field(
        False, description="post_migration: after the app, also undo the migration if it is safe")
    to_version: str | None = Field(None, description="post_migration: the app version to return to")

    @model_validator(mode="after")
    def _consistent(self) -> "DatabaseRollbackInput":
        if self.snapshot_id and self.restore_before:
            raise ValueError("give snapshot_id or restore_before, not both")
        if self.mode != "snapshot_restore" and (self.snapshot_id or self.restore_before):
            raise ValueError(f"snapshot_id/restore_before only apply to mode snapshot_restore, not {self.mode}")
        if self.restore_before is not None and self.restore_before.tzinfo is None:
            raise ValueError("restore_before needs a timezone, e.g. 2025-11-18T14:00:00Z")
        return self


class FrontendRollbackInput(RollbackRequest):
    site: str = Field(min_length=1, description="catalog name of the site, e.g. 'web'")
    strategy: Literal["object_versions", "release_sync"]
    to_release: str | None = Field(None, description="release_sync: the release prefix, e.g. 'v1.2.2'")
    restore_to: datetime | None = Field(None, description="object_versions: restore what was current then")
    keys: list[str] | None = Field(None, max_length=5000, description="object_versions: only these keys (default: all)")
    exact: bool = Field(False, description="object_versions: also delete objects created after restore_to")

    @model_validator(mode="after")
    def _strategy_fields(self) -> "FrontendRollbackInput":
        if self.strategy == "release_sync":
            if not self.to_release:
                raise ValueError("strategy release_sync needs to_release, e.g. \"v1.2.2\"")
            if self.restore_to or self.keys or self.exact:
                raise ValueError("restore_to, keys and exact apply to strategy object_versions only")
        else:
            if self.restore_to is None:
                raise ValueError("strategy object_versions needs restore_to, e.g. \"2025-11-18T14:00:00Z\"")
            if self.restore_to.tzinfo is None:
                raise ValueError("restore_to needs a timezone, e.g. 2025-11-18T14:00:00Z")
            if self.to_release:
                raise ValueError("to_release applies to strategy release_sync; use restore_to with object_versions")
        return self


class LambdaRollbackInput(RollbackRequest):
    """One function (``function``) or a fleet of them (``functions``, one approval for the lot).

    Workflow id for the CLI: ``rollback-lambda-<target>``, where ``target`` is the function's
    catalog name, or for a fleet the sorted names joined with ',' (also the lock's name).
    """

    function: str | None = Field(None, min_length=1, description="catalog name of the function")
    functions: list[str] | None = Field(
        None, max_length=2000, description="fleet form: several catalog names rolled back together (instead of function)")
    alias: str = Field("production", min_length=1, description="the alias to move back")
    to_version: str | None = Field(
        None, description="published version to return to (one function only); default: the published "
                          "version just below the one the alias points at")
    routing_steps: list[int] | None = Field(
        None, description="gradual shift via the alias' routing weights, e.g. [50, 100]")

    @field_validator("to_version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # 3 from JSON means "3"

    @field_validator("to_version")
    @classmethod
    def _published(cls, v: str | None) -> str | None:
        if v is not None and not v.isdigit():
            raise ValueError(f"{v!r} is not a published version: those are numbers, e.g. \"3\"")
        return v

    @field_validator("routing_steps")
    @classmethod
    def _steps(cls, v: list[int] | None) -> list[int] | None:
        return increasing_to_100(v)

    @model_validator(mode="after")
    def _one_form(self) -> "LambdaRollbackInput":
        if (self.function is None) == (self.functions is None):
            raise ValueError("give function (one) or functions (a fleet), not both and not neither")
        if self.functions is not None:
            if not self.functions or any(not n for n in self.functions):
                raise ValueError("functions must list at least one non-empty catalog name")
            if len(set(self.functions)) != len(self.functions):
                raise ValueError("functions lists a name twice")
            if self.to_version is not None:
                raise ValueError("to_version applies to one function (versions are numbered per function); "
                                 "leave it out for a fleet: each function goes back to its previous version")
        return self

    @property
    def names(self) -> list[str]:
        """The catalog names, in the order given."""
        return [self.function] if self.function is not None else list(self.functions or [])

    @property
    def target(self) -> str:
        """The RollbackTarget search attribute and the CLI's workflow id: bounded whatever the fleet."""
        return self.function if self.function is not None else fleet_target(self.names)


FLEET_NAMES_SHOWN = 200  # a fleet's sorted names joined, up to this length; beyond it a digest stands in


def fleet_target(names: list[str]) -> str:
    """A fleet's name for ids and people: its sorted names joined with ',' while that stays short, else
    the first name, the count and a digest of all of them (a 200-function fleet joined was 1,615
    characters, over Temporal's 1,000 for a workflow id). The full list is in the input."""
    joined = ",".join(sorted(names))
    if len(joined) <= FLEET_NAMES_SHOWN:
        return joined
    first = sorted(names)[0][:60]
    return f"{first}-and-{len(names) - 1}-more-{hashlib.sha256(joined.encode()).hexdigest()[:12]}"


class InfraRollbackInput(RollbackRequest):
    """Terraform stack back to an earlier commit of its repository (runbook section 3)."""

    stack: str = Field(min_length=1, description="catalog name of the Terraform stack")
    to_commit: str = Field(
        "previous", min_length=1,
        description='commit sha or ref to return to; "previous" (default): the commit before the branch\'s HEAD')

    @field_validator("to_commit")
    @classmethod
    def _a_revision(cls, v: str) -> str:
        if v.startswith("-") or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a commit: give a sha or ref, e.g. \"3f2a9c1\", or \"previous\"")
        return v


class FeatureFlagRollbackInput(RollbackRequest):
    """Runbook section 4, "Feature Flag Rollback". Workflow id for the CLI: ``rollback-flag-<flag>``.

    ``disable`` with ``all_cities`` turns the flag off (runbook: --all-cities); with ``cities``
    it sets their rollout to 0. ``percentage`` sets the rollout of ``cities`` (or every city the
    catalog lists, with ``all_cities``). ``kill_switch`` enables a kill-switch flag everywhere.
    """

    flag: str = Field(min_length=1, description="catalog name of the flag, e.g. new_feature_enabled")
    action: Literal["disable", "percentage", "kill_switch"]
    cities: list[str] | None = Field(None, max_length=500, description="disable / percentage: only these cities")
    all_cities: bool = Field(False, description="disable: the flag off everywhere; percentage: every city")
    percentage: int | None = Field(None, ge=0, le=100, description="percentage: the rollout, 0..100")

    @model_validator(mode="after")
    def _action_fields(self) -> "FeatureFlagRollbackInput":
        if self.action == "kill_switch":
            if self.cities is not None or self.all_cities or self.percentage is not None:
                raise ValueError("kill_switch turns the flag on everywhere: leave out cities, all_cities and percentage")
            return self
        if (self.cities is None) == (not self.all_cities):
            raise ValueError(f"{self.action} needs cities (a list) or all_cities: true, not both and not neither")
        if self.cities is not None:
            if not self.cities or any(not c for c in self.cities):
                raise ValueError("cities must list at least one non-empty city, e.g. [\"los-angeles\"]")
            if len(set(self.cities)) != len(self.cities):
                raise ValueError("cities lists a city twice")
        if self.action == "percentage" and self.percentage is None:
            raise ValueError("action percentage needs percentage (0..100; 0 turns the flag off there)")
        if self.action == "disable" and self.percentage is not None:
            raise ValueError("disable sets no percentage; use action percentage")
        return self


class ConfigRollbackInput(RollbackRequest):
    """Runbook section 3, "Configuration Changes". Workflow id for the CLI: ``rollback-config-<target>``."""

    target: str = Field(min_length=1, description="catalog name under configs:, e.g. app-settings or api-key")
    to_version: str | None = Field(
        None, description="appconfig: the hosted configuration version number; secret: the VersionId; "
                          "default: the version before the current one")

    @field_validator("to_version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # 1 from JSON means "1"



class ReleaseRollbackInput(RollbackRequest):
    """Every component of a release, in the runbook's order, under one approval (docs/releases.md).
    Workflow id for the CLI: ``rollback-release-<release>``."""

    release: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                         description="the release's name, e.g. v1.2.3 (recorded, or under releases: in the catalog)")
    leave_out: list[str] = Field(default_factory=list, max_length=100,
                                 description="components (catalog names) of the release not to roll back")


# --- decisions (signal and update payloads: one JSON object each, for the Web UI) ---


class Decision(Input):
    approver: str = Field(min_length=1, max_length=MAX_NAME)
    comment: str = Field("", max_length=MAX_TEXT)
    reason: str = Field("", max_length=MAX_TEXT)
    # The proof (common/identity.py); a decision without one is refused and recorded.
    id_token: str | None = Field(None, max_length=MAX_TOKEN_CHARS, repr=False, description="approver's OIDC ID token")
    slack: SlackCallback | None = Field(None, repr=False, description="a signed Slack callback (the receiver sends it)")


class Escalation(Input):
    severity: Severity
    by: str = Field(min_length=1, max_length=MAX_NAME)
    reason: str = Field("", max_length=MAX_TEXT, description="why: required for the change to count")
    comment: str = Field("", max_length=MAX_TEXT)
    id_token: str | None = Field(None, max_length=MAX_TOKEN_CHARS, repr=False, description="by's OIDC ID token")


class Evidence(Input):
    """Why someone (an alert, a check) thinks this target needs rolling back; repeats are kept."""

    source: str = Field(min_length=1, max_length=MAX_NAME, description="e.g. alertmanager, grafana, auto-rollback")
    summary: str = Field("", max_length=MAX_TEXT)
    labels: dict[LabelKey, Label] = Field(default_factory=dict, max_length=MAX_LABELS,
                                          description=f"at most {MAX_LABELS}, each value at most {MAX_LABEL_VALUE} characters")
    at: datetime | None = None


class DecisionRequest(Decision):
    """Update payload: approve or reject and learn at once whether it counted."""

    decision: Literal["approve", "reject"]


class DecisionOutcome(BaseModel):
    counted: bool
    message: str
    approvals: "Approvals"


# --- status ---


class Phase(StrEnum):
    starting = "starting"
    planned = "planned"  # dry run finished
    awaiting_approval = "awaiting_approval"
    rolling_back = "rolling_back"
    paused = "paused"  # a gradual step's check failed: a human decides
    validating = "validating"
    monitoring = "monitoring"
    succeeded = "succeeded"
    failed = "failed"
    rejected = "rejected"
    timed_out = "timed_out"
    cancelled = "cancelled"
    refused = "refused"  # another rollback of the same target is in flight


FINAL_PHASES = {
    Phase.planned, Phase.succeeded, Phase.failed, Phase.rejected,
    Phase.timed_out, Phase.cancelled, Phase.refused,
}


class StepState(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"


class Step(BaseModel):
    name: str
    state: StepState = StepState.pending
    started_at: datetime | None = None
    ended_at: datetime | None = None
    detail: str = ""


class Event(BaseModel):
    at: datetime
    what: str


class ApprovalRecord(BaseModel):
    approver: str
    at: datetime
    comment: str = ""
    note: str = ""
    proof: ProofRecord | None = Field(None, description="how the approver was proven (None: before proofs)")


class Refusal(BaseModel):
    approver: str
    at: datetime
    reason: str
    action: str = Field("", description="approve, reject, escalate")


class Requirement(BaseModel):
    label: str  # e.g. "approver", "database administrator"
    count: int
    eligible: list[str]
    met_by: list[str] = Field(default_factory=list)

    def missing(self) -> str:
        """Who is still needed, e.g. "2 approvers (SEV-0) of alice, bob"."""
        n = self.count - len(self.met_by)
        noun, sep, rest = self.label.partition(" (")
        return (f"{n} {noun}{'' if n == 1 else 's'}{sep}{rest} of "
                f"{', '.join(self.eligible) or 'nobody listed'}")


class Approvals(BaseModel):
    required: list[Requirement] = Field(default_factory=list)
    eligible: list[str] = Field(default_factory=list, description="who could approve now")
    received: list[ApprovalRecord] = Field(default_factory=list)
    refused: list[Refusal] = Field(default_factory=list)
    rejected_by: ApprovalRecord | None = None
    satisfied: bool = False
    context: str = Field("", description="what the approvers are asked to approve")
    step: str = Field("", description="the step this gate decided (Approval, or a paused step)")


Verdict = Literal["passed", "failed", "inconclusive"]


class CheckResult(BaseModel):
    """One check's verdict. ``ok`` is kept for older readers: True passed, False failed, None inconclusive."""

    name: str
    ok: bool | None  # None: inconclusive (no data, too few samples, query error): never a pass
    kind: str = Field("", description="what it checks: health, ready, version, smoke, error_rate, latency_p95, "
                                      "business, alarms, integrity, database, http")
    value: float | str | None = None
    baseline: float | str | None = None
    limit: float | None = None
    detail: str = ""
    at: datetime | None = None
    verdict: Verdict | None = Field(None, description="passed, failed or inconclusive (set from ok if absent)")
    optional: bool = Field(False, description="an inconclusive verdict of it does not block a step")
    version: str | None = Field(None, description="the version measured (the serving one)")
    samples: int | None = Field(None, description="samples in the measured window")
    window: str | None = Field(None, description="the measured window, e.g. 14:00-14:05 UTC")
    baseline_source: str | None = Field(None, description="e.g. v1.2.2 over 13:00-14:00 before the v1.2.3 "
                                                          "deploy, 60 samples; or the catalog's constant")
    rule: str | None = Field(None, description="the rule applied, e.g. at most 0.5 points above baseline")
    p_value: float | None = Field(None, description="Mann-Whitney U, one-sided, where applied")
    effect_size: float | None = Field(None, description="P(a serving sample is worse than a baseline sample)")
    readings: int | None = Field(None, description="consecutive readings that made this verdict")

    @model_validator(mode="after")
    def _verdict(self) -> "CheckResult":
        if self.verdict is None:
            self.verdict = "passed" if self.ok else "inconclusive" if self.ok is None else "failed"
        return self


class ChecklistItem(BaseModel):
    item: str  # the runbook's wording
    state: Literal["passed", "failed", "not_checked"]
    evidence: str = ""


class ActionResult(BaseModel):
    action: str  # e.g. "post to #incidents", "update status page", "create incident ticket"
    state: Literal["done", "failed", "not_configured", "skipped"]
    detail: str = ""
    at: datetime | None = None


class Change(BaseModel):
    """One change a rollback made to the outside world (written by workflows/changes.py)."""

    what: str = Field(description="the change as the equivalent command, e.g. 'ecs update-service ...'")
    step: str = ""
    state: Literal["made", "failed", "in_flight"]
    at: datetime | None = None
    detail: str = ""


class ComponentState(BaseModel):
    """One component of a release rollback, as its child rollback reports it."""

    kind: str = Field(description="flag, kill_switch, service, lambda, frontend, database")
    name: str
    phase: str = Field("planned", description="planned, left_out, running, then the child's final phase, or "
                                              "not_started")
    from_version: str | None = None
    to_version: str | None = None
    workflow_id: str = ""
    message: str = ""


class MonitoringProgress(BaseModel):
    """The post-rollback monitoring window as it goes (the latest values are in ``checks``)."""

    round: int = Field(0, description="rounds of checks done")
    rounds: int = Field(0, description="rounds planned in the window")
    next_check_at: datetime | None = Field(None, description="when the next round of checks runs")
    ends_at: datetime | None = Field(None, description="when the window ends")


class RollbackStatus(BaseModel):
    kind: str
    target: str
    phase: Phase = Phase.starting
    workflow_id: str = ""
    from_version: str | None = None
    to_version: str | None = None
    severity: str
    requested_by: str
    reason: str
    dry_run: bool = False
    requester_proof: ProofRecord | None = Field(None, description="how requested_by was proven; None: not proven")
    requester_not_proven: str = Field("", description="why requested_by is not proven (then it has no privilege)")
    verified: bool = Field(True, description="False: identity.mode unverified, approvals are not verified")
    severity_changes: list[SeverityChange] = Field(default_factory=list)
    approvals: Approvals = Field(default_factory=Approvals)
    earlier_approvals: list[Approvals] = Field(default_factory=list, description=(
        "gates decided before the current one (e.g. the start's approval once a paused step asks again)"))
    steps: list[Step] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    regressions: list[CheckResult] = Field(default_factory=list)
    readings: list[CheckResult] = Field(default_factory=list, description="every metric reading, newest last "
                                                                          "(the last 200; readings_dropped counts older)")
    readings_dropped: int = 0
    plan: list[str] = Field(default_factory=list)
    components: list["ComponentState"] = Field(default_factory=list, description="a release rollback: each "
                                               "component's rollback, in order (docs/releases.md)")
    evidence: list[Evidence] = Field(default_factory=list, description="alerts that asked for this rollback "
                                                                        "(the first ones; evidence_received counts all)")
    evidence_received: int = 0
    automatic: bool = Field(False, description="started by automation (an alert or the auto-rollback check)")
    changes: list[Change] = Field(default_factory=list, description="every change made, in order")
    checklist: list["ChecklistItem"] = Field(default_factory=list, description="runbook: Rollback Validation Checklist")
    actions: list["ActionResult"] = Field(default_factory=list, description="runbook: Post-Rollback Actions")
    events: list[Event] = Field(default_factory=list)
    message: str = ""
    report: str = Field("", description="the final report (Markdown), set when the rollback ends")
    started_at: datetime | None = None
    ended_at: datetime | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    monitoring: MonitoringProgress | None = Field(None, description="while monitoring: round, next check, end")
    trimmed: dict[str, int] = Field(default_factory=dict, description="items left out to keep the status small")


def one_line(kind: str, target: str, from_version: str | None, to_version: str | None, severity: str,
             requested_by: str) -> str:
    """The Web UI's summary of a rollback: kind, target, from -> to, severity, requester."""
    return (f"{kind} rollback of {target}: {from_version or 'current'} -> {to_version or 'previous'}, "
            f"{severity}, requested by {requested_by}")


DecisionOutcome.model_rebuild()
RollbackStatus.model_rebuild()


# --- the auto-rollback schedule (runbook: Automation) ---


class AutoRollbackCheckInput(Input):
    """``AutoRollbackCheck``'s input: nothing needed; ``services`` narrows the check."""

    services: list[str] | None = Field(
        None, description="only these catalog services (default: every service with auto_rollback: true)")


class ServiceCheck(BaseModel):
    service: str
    version: str | None = None  # the deployed version whose error rate was read
    error_rate: float | None = None
    threshold: float
    # declined: automation may not act (cooldown, or it already returned the service to this version)
    outcome: Literal["below", "started", "joined", "handled", "declined", "not_checked", "error"]
    workflow_id: str = ""
    detail: str = ""
    decline_key: str = ""  # declined: what it is about; a decline is announced once per key
    announced: bool = False  # declined: posted to #incidents by this check (False: an earlier one did)


class AutoRollbackReport(BaseModel):
    checked_at: datetime
    window_minutes: float
    threshold: float
    services: list[ServiceCheck] = Field(default_factory=list)
