"""Policy as data: the runbook's Rollback Decision Matrix and its thresholds.

The defaults below ARE the runbook (``rollback-runbook.md`` > Rollback Decision Matrix,
Common Rollback Scenarios). A catalog may override any of it under ``policy:``.
This module is pure (no I/O, no clocks) so workflows can use it directly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["SEV-0", "SEV-1", "SEV-2", "SEV-3", "SEV-4"]
SEVERITIES: tuple[str, ...] = ("SEV-0", "SEV-1", "SEV-2", "SEV-3", "SEV-4")
# The runbook's scale runs UP with impact (not down, as at many companies): said wherever a severity
# is configured, because reading it backwards changes who must approve.
SEVERITY_SCALE = ("runbook scale, higher is worse: SEV-0 informational, no impact (2 approvers); SEV-1 minor "
                  "degradation, < 5 % of users (1 approver); SEV-2 significant degradation, 5-25 % (the on-call "
                  "engineer); SEV-3 major outage, > 25 % (on-call); SEV-4 complete outage or security breach "
                  "(on-call, immediate)")
# What the auto-rollback schedule (workflows/auto.py) puts in requested_by.
AUTO_ROLLBACK_REQUESTER = "auto-rollback:error-rate"

# Roles are the list names under ``people:`` in the catalog.
Role = Literal["approvers", "on_call", "dbas", "security"]
ROLE_LABEL = {
    "approvers": "approver",
    "on_call": "on-call engineer",
    "dbas": "database administrator",
    "security": "security engineer",
}


class SeverityRule(BaseModel):
    """One row of the Rollback Decision Matrix."""

    model_config = ConfigDict(extra="forbid")

    trigger: str
    response_minutes: float | None = Field(
        description="the matrix's response time; drives approval reminders (None: standard process)"
    )
    approvals: int = Field(ge=1)
    approver_role: Role
    requester_may_approve: bool = Field(
        description="True: a requester holding the role is approved at start (SEV-2+)"
    )


DEFAULT_MATRIX: dict[str, SeverityRule] = {
    "SEV-0": SeverityRule(trigger="Informational, no impact", response_minutes=None,
                          approvals=2, approver_role="approvers", requester_may_approve=False),
    "SEV-1": SeverityRule(trigger="Minor degradation, < 5% users", response_minutes=30,
                          approvals=1, approver_role="approvers", requester_may_approve=False),
    "SEV-2": SeverityRule(trigger="Significant degradation, 5-25% users", response_minutes=15,
                          approvals=1, approver_role="on_call", requester_may_approve=True),
    "SEV-3": SeverityRule(trigger="Major outage, > 25% users", response_minutes=5,
                          approvals=1, approver_role="on_call", requester_may_approve=True),
    "SEV-4": SeverityRule(trigger="Complete outage, security breach", response_minutes=0,
                          approvals=1, approver_role="on_call", requester_may_approve=True),
}


class Thresholds(BaseModel):
    """When a metric check fails (runbook: Common Rollback Scenarios), against each metric's baseline."""

    model_config = ConfigDict(extra="forbid")

    # Scenario 1: "Error rate > 0.5% above baseline" (percentage points).
    error_rate_pp_above_baseline: float = 0.5
    # Scenario 2: "Latency p95 > 25% above baseline".
    latency_p95_pct_above_baseline: float = 25.0
    # Scenario 4: "... drops > 10%".
    business_metric_drop_pct: float = 10.0


class Policy(BaseModel):
    """The runbook's policy; every key is optional and overrides the runbook's value shown."""

    model_config = ConfigDict(extra="forbid")

    matrix: dict[Severity, SeverityRule] = Field(
        default_factory=lambda: dict(DEFAULT_MATRIX),
        description="the Rollback Decision Matrix per severity; " + SEVERITY_SCALE)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    approval_timeout_minutes: float = Field(240, gt=0)
    # Runbook "Automation": the auto-rollback job rolls back on a high error rate without waiting.
    # Requesters listed here skip the severity's approval (extra requirements, e.g. a DBA, still apply).
    # Empty unless the catalog lists them: copying an alert rule must never make it automation.
    automation_may_proceed: list[str] = Field(
        default_factory=list,
        description="requesters whose rollbacks proceed without waiting for the severity's approvals (extra "
                    "requirements such as a DBA still apply): '<source>:<alert rule name>' (e.g. "
                    f"alertmanager:high-error-rate) or '{AUTO_ROLLBACK_REQUESTER}' (the auto-rollback schedule). "
                    "Default: none, so every rollback waits for people unless listed here")
    # Runbook "Automation": every 5 minutes, roll back a service marked auto_rollback when its
    # 5-minute error rate (percent, the deployed version's) exceeds this. Started at this severity.
    auto_rollback_error_rate: float = Field(0.5, gt=0, description="runbook: ERROR_RATE > 0.5",
                                            json_schema_extra={"unit": "percent"})
    auto_rollback_severity: Severity = "SEV-2"
    # Never a cascade: after an automatic rollback of a target, automation (alerts, the check) may
    # not start another of it for this long; only a person can (common/api.py start_or_join).
    auto_rollback_cooldown_minutes: float = Field(
        60, ge=0, description="after an automatic rollback of a target, only a person may start another for this "
                              "long (alerts and the auto-rollback check are declined); 0: no cooldown")
    # Reminder cadence while waiting when the matrix says "Immediate" (0) or nothing.
    min_reminder_minutes: float = Field(1, gt=0)
    standard_reminder_minutes: float = Field(60, gt=0)
    gradual_step_wait_minutes: float = Field(5, ge=0, description="runbook: 'Wait 5 minutes'")
    monitor_minutes: float = Field(30, gt=0, description="runbook: 'Monitor for 30 minutes'")
    monitor_interval_minutes: float = Field(5, gt=0)
    metric_window_minutes: float = Field(5, gt=0, description="runbook: --window=5m")
    # Verdicts (workflows/verdicts.py, docs/verdicts.md). A metric check fails only after
    # failure_limit consecutive failing readings, reading_interval_minutes apart (Argo Rollouts'
    # failureLimit); fewer than min_samples samples in a window is inconclusive, never a pass.
    failure_limit: int = Field(2, ge=1, le=10, description="consecutive failing readings before a check fails")
    reading_interval_minutes: float = Field(1, gt=0, description="between consecutive readings of a failing check")
    min_samples: int = Field(3, ge=1, description="samples a window needs to be judged at all")
    # Mann-Whitney U (Kayenta's judge) on top of the thresholds, where both windows have this many samples:
    # a reading beyond the threshold fails only if the difference is significant at this confidence.
    mann_whitney_min_samples: int = Field(5, ge=3, description="samples each side needs for the test")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="of the Mann-Whitney U test (one-sided)")
    validation_attempts: int = Field(3, ge=1, description="tries before validation fails")
    validation_retry_seconds: float = Field(20, ge=0)
    db_restore_timeout_minutes: float = Field(60, gt=0, description="runbook: 10-15 minutes")
    db_poll_seconds: float = Field(30, gt=0)
    invalidation_timeout_minutes: float = Field(30, gt=0, description="runbook: 5-10 minutes")
    invalidation_poll_seconds: float = Field(20, gt=0)
    settle_timeout_minutes: float = Field(30, gt=0)
    fleet_concurrency: int = Field(16, ge=1, le=200, description="functions of a Lambda fleet read and "
                                                                  "changed at the same time")
    settle_poll_seconds: float = Field(15, gt=0)
    # Feature flags (runbook section 4, "Fastest rollback method"): a kill switch requested by an
    # on-call engineer at these severities proceeds at once, whatever the matrix above says; a
    # kill switch requested by anyone else waits for the on-call engineer as the matrix says.
    kill_switch_immediate: list[Severity] = Field(default_factory=lambda: ["SEV-3", "SEV-4"])
    appconfig_deploy_timeout_minutes: float = Field(60, gt=0, description="deploy + bake of the slowest strategy")
    appconfig_poll_seconds: float = Field(5, gt=0)
    # Terraform (runbook section 3): a plan that destroys anything needs this many approvers
    # (people.approvers, never the requester), whatever the severity; the severity's own approvers count.
    destroy_requires_approvals: int = Field(2, ge=1)

    # Who may change a rollback's severity (with proof and a reason). A change toward SEV-4 lowers the
    # approvals needed: it also needs someone the matrix accepts as approver at the new severity.
    severity_setters: list[Role] = Field(default_factory=lambda: ["on_call", "approvers"],
                                         description="roles that may change a rollback's severity (with proof)")

    def rule(self, severity: str) -> SeverityRule:
        return self.matrix.get(severity) or DEFAULT_MATRIX[severity]  # type: ignore[index]

    def reminder_minutes(self, severity: str) -> float:
        minutes = self.rule(severity).response_minutes
        if minutes is None:
            return self.standard_reminder_minutes
        return max(minutes, self.min_reminder_minutes)
