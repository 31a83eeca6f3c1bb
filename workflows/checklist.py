"""The runbook's "Rollback Validation Checklist", evaluated from the checks a rollback ran.

Each item is ``passed``, ``failed`` or ``not_checked`` with the evidence, so nobody reads
"all green" into an item nothing looked at. Pure functions (workflow-safe).
"""

from __future__ import annotations

from common.models import CheckResult, ChecklistItem, RollbackStatus

# (runbook wording, check kinds that answer it, names that must appear: each one a flow/integration)
CHECKLIST: list[tuple[str, set[str], tuple[str, ...]]] = [
    ("Service health checks passing", {"health", "ready"}, ()),
    ("Version endpoint returns expected version", {"version"}, ()),
    ("Error rates at or below baseline", {"error_rate"}, ()),
    ("Latency at or below baseline", {"latency_p95"}, ()),
    ("Business metrics stable", {"business"}, ()),
    ("No new alerts triggered", {"alarms"}, ()),
    ("Smoke tests passing", {"smoke"}, ()),
    ("Key user flows validated (search, booking, payment)", {"smoke", "http"}, ("search", "booking", "payment")),
    ("Database connections healthy", {"integrity", "database"}, ()),
    ("External integrations working (Stripe, Twilio, etc.)", {"smoke", "http"}, ("stripe", "twilio")),
]


MEASURED = {"error_rate", "latency_p95", "business"}  # their detail says what "at baseline" meant: the rule


def _evidence(checks: list[CheckResult]) -> str:
    return "; ".join(f"{c.name}: {'ok' if c.ok else 'FAILED' if c.ok is False else 'not checked'}"
                     + (f" ({c.detail})" if c.detail and (c.ok is not True or c.kind in MEASURED) else "")
                     for c in checks)


def _judge(item: str, checks: list[CheckResult]) -> ChecklistItem:
    if any(c.ok is False for c in checks):
        return ChecklistItem(item=item, state="failed", evidence=_evidence([c for c in checks if c.ok is False]))
    if checks and all(c.ok for c in checks):
        return ChecklistItem(item=item, state="passed", evidence=_evidence(checks))
    return ChecklistItem(item=item, state="not_checked",
                         evidence=_evidence(checks) if checks else "no check of this kind ran")


def evaluate(s: RollbackStatus) -> list[ChecklistItem]:
    seen = [*s.checks, *s.regressions]  # a regression while monitoring fails its item
    items = []
    for item, kinds, names in CHECKLIST:
        relevant = [c for c in seen if c.kind in kinds]
        if not names:
            items.append(_judge(item, relevant))
            continue
        per_name = {n: [c for c in relevant if n in c.name.lower()] for n in names}
        covered = [c for cs in per_name.values() for c in cs]
        missing = [n for n, cs in per_name.items() if not cs]
        judged = _judge(item, covered)
        if judged.state == "passed" and missing and item.startswith("Key user flows"):
            judged = ChecklistItem(item=item, state="not_checked",
                                   evidence=f"{judged.evidence}; not checked: {', '.join(missing)}")
        items.append(judged)
    return items
