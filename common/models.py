"""Models shared by workflows, activities, the CLI and tests.

One input model per workflow (each extends ``RollbackRequest``), one status model for all.
Inputs forbid unknown fields so a typo in the Web UI's JSON is an error, not a silent default.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.policy import Severity


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RollbackRequest(Input):
    """Fields every rollback takes."""

    severity: Severity = Field(description='"SEV-0" .. "SEV-4", from the runbook\'s matrix')
    requested_by: str = Field(min_length=1, description="who asks for the rollback")
    reason: str = Field(min_length=1, description="why, in a sentence")
    dry_run: bool = Field(False, description="resolve everything, return the plan, change nothing")
    monitor_minutes: float | None = Field(
        None, gt=0, le=24 * 60, description="post-rollback monitoring window (default 30)"
    )


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
    keys: list[str] | None = Field(None, description="object_versions: only these keys (default: all)")
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
        None, description="fleet form: several catalog names rolled back together (instead of function)")
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
        """The name of the lock, the RollbackTarget search attribute and the CLI's workflow id."""
        return self.function if self.function is not None else ",".join(sorted(self.names))


# --- decisions (signal and update payloads: one JSON object each, for the Web UI) ---


class Decision(Input):
    approver: str = Field(min_length=1)
    comment: str = ""
    reason: str = ""


class Escalation(Input):
    severity: Severity
    by: str = Field(min_length=1)
    comment: str = ""


class Evidence(Input):
    """Why someone (an alert, a check) thinks this target needs rolling back; repeats are kept."""

    source: str = Field(min_length=1, description="e.g. alertmanager, grafana, auto-rollback")
    summary: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
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


class Refusal(BaseModel):
    approver: str
    at: datetime
    reason: str


class Requirement(BaseModel):
    label: str  # e.g. "approver", "database administrator"
    count: int
    eligible: list[str]
    met_by: list[str] = Field(default_factory=list)


class Approvals(BaseModel):
    required: list[Requirement] = Field(default_factory=list)
    eligible: list[str] = Field(default_factory=list, description="who could approve now")
    received: list[ApprovalRecord] = Field(default_factory=list)
    refused: list[Refusal] = Field(default_factory=list)
    rejected_by: ApprovalRecord | None = None
    satisfied: bool = False
    context: str = Field("", description="what the approvers are asked to approve")


class CheckResult(BaseModel):
    name: str
    ok: bool | None  # None: could not be checked (no data)
    value: float | str | None = None
    baseline: float | str | None = None
    limit: float | None = None
    detail: str = ""
    at: datetime | None = None


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
    approvals: Approvals = Field(default_factory=Approvals)
    steps: list[Step] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    regressions: list[CheckResult] = Field(default_factory=list)
    plan: list[str] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list, description="alerts that asked for this rollback")
    events: list[Event] = Field(default_factory=list)
    message: str = ""
    report: str = Field("", description="the final report (Markdown), set when the rollback ends")
    started_at: datetime | None = None
    ended_at: datetime | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


DecisionOutcome.model_rebuild()
