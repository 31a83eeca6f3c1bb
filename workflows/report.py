"""Markdown renderings of a status: the one-screen summary shown in the Web UI (current
details) and the final report with the whole timeline. Pure functions."""

from __future__ import annotations

from common.models import RollbackStatus, one_line

ICON = {"pending": "·", "running": "▶", "succeeded": "✔", "failed": "✘", "skipped": "↷", "cancelled": "■"}


def _t(dt) -> str:
    return dt.strftime("%H:%M:%S") if dt else "--:--:--"


def _requester(s: RollbackStatus) -> str:
    """Who asked, and how that is proven (or why it is not: then the request has no privilege)."""
    if s.requester_proof is not None:
        return f"{s.requested_by} ({s.requester_proof.describe()})"
    return f"{s.requested_by} (not proven: {s.requester_not_proven})" if s.requester_not_proven else s.requested_by


def render_summary(s: RollbackStatus) -> str:
    """The Web UI's current details: the one-line summary and phase first, then what a person
    needs on one screen (approvals, refused decisions, steps, failed checks)."""
    lines = [
        f"**{one_line(s.kind, s.target, s.from_version, s.to_version, s.severity, s.requested_by)}** "
        f"— **{s.phase.value}**",
        f"{s.severity} · requested by {_requester(s)} · {s.reason}",
    ]
    if not s.verified:
        lines.append("**approvals are not verified** (the catalog's identity.mode is unverified)")
    if s.from_version or s.to_version:
        lines.append(f"version: {s.from_version or '?'} → {s.to_version or '?'}")
    a = s.approvals
    if a.required:
        need = "; ".join(f"{r.label}: {len(r.met_by)}/{r.count}" for r in a.required)
        lines.append(f"approvals: {need}" + (f" · eligible now: {', '.join(a.eligible)}" if a.eligible and not a.satisfied else ""))
    lines += [f"**refused**: {r.action or 'decision'} by {r.approver} at {_t(r.at)}: {r.reason}"
              for r in a.refused[-3:]]  # the latest: a refusal shows where people look
    lines.append("")
    lines += [f"- {ICON[st.state.value]} {st.name}" + (f": {st.detail}" if st.detail else "") for st in s.steps]
    if s.components:
        lines += ["", "| component | phase | from | to |", "|---|---|---|---|"]
        lines += [f"| {c.kind} {c.name} | {c.phase} | {c.from_version or ''} | {c.to_version or ''} |"
                  for c in s.components]
    bad = [c for c in s.checks if c.ok is False]
    if bad:
        lines.append("")
        lines += [f"- ✘ check {c.name}: {c.detail}" for c in bad]
    if s.regressions:
        lines.append(f"\n**{len(s.regressions)} regression(s) during monitoring**")
    if s.message:
        lines.append(f"\n{s.message}")
    return "\n".join(lines)


def render_report(s: RollbackStatus) -> str:
    lines = [
        f"# Rollback report: {s.kind} {s.target}",
        "",
        f"- Outcome: **{s.phase.value}**" + (f" — {s.message}" if s.message else ""),
        f"- Severity: {s.severity}; requested by {_requester(s)}: {s.reason}",
        f"- Versions: {s.from_version or '?'} → {s.to_version or '?'}",
        f"- Workflow: {s.workflow_id}; started {s.started_at}; ended {s.ended_at}",
    ]
    if not s.verified:
        lines.append("- **Approvals are not verified** (the catalog's identity.mode is unverified)")
    if s.approvals.received:
        lines.append("- Approved by: " + ", ".join(
            f"{r.approver} at {_t(r.at)}" + (f" [{r.proof.describe()}]" if r.proof else "")
            + (f" ({r.note})" if r.note else "") for r in s.approvals.received))
    lines += [f"- Severity changed {c.from_severity} → {c.to_severity} at {_t(c.at)} by {c.by}"
              + (f" [{c.proof.describe()}]" if c.proof else "") + f": {c.reason}" for c in s.severity_changes]
    if s.approvals.refused:
        lines.append("- Refused decisions: " + "; ".join(f"{r.approver}" + (f" ({r.action})" if r.action else "")
                                                        + f": {r.reason}" for r in s.approvals.refused))
    lines += ["", "## Steps", "", "| step | state | started | ended | detail |", "|---|---|---|---|---|"]
    lines += [f"| {st.name} | {st.state.value} | {_t(st.started_at)} | {_t(st.ended_at)} | {st.detail} |"
              for st in s.steps]
    if s.plan:
        lines += ["", "## Plan", ""] + [f"- {p}" for p in s.plan]
    if s.components:
        lines += ["", "## Components", "", "| component | phase | from | to | workflow | outcome |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c.kind} {c.name} | {c.phase} | {c.from_version or ''} | {c.to_version or ''} | "
                  f"{c.workflow_id} | {c.message} |" for c in s.components]
    if s.checks:
        lines += ["", "## Latest checks", ""] + [
            f"- {'passed' if c.ok else 'not checked' if c.ok is None else 'FAILED'}: {c.name}: {c.detail}"
            for c in s.checks]
    if s.checklist:
        lines += ["", "## Rollback validation checklist", ""] + [
            f"- [{'x' if i.state == 'passed' else ' '}] {i.item}: **{i.state}**" + (f" — {i.evidence}" if i.evidence else "")
            for i in s.checklist]
    if s.actions:
        lines += ["", "## Post-rollback actions", ""] + [f"- {a.action}: {a.state}" + (f" ({a.detail})" if a.detail else "")
                                                       for a in s.actions]
    if s.regressions:
        lines += ["", "## Regressions during monitoring", ""] + [f"- {_t(c.at)} {c.name}: {c.detail}"
                                                                for c in s.regressions]
    lines += ["", "## Timeline", ""] + [f"- {_t(e.at)} {e.what}" for e in s.events]
    return "\n".join(lines)
