"""Nothing wedges: a rollback's status, result and Web UI details stay far below Temporal's
payload limits (a workflow task whose result or query answer is over ~2 MB fails forever,
TMPRL1103; the warning is at 512 KB), whatever outsiders send.

Inputs are bounded where they enter (common/models.py: reason, labels, comments); evidence keeps
the first ``MAX_EVIDENCE`` alerts verbatim and counts the rest; and ``fit`` trims what still grows
with time (the timeline, refused approvals, regressions, long details) from what is shown,
saying in ``trimmed`` how much it left out. Pure functions (workflow code).
"""

from __future__ import annotations

from pydantic_core import to_json

from common.models import RollbackStatus

MAX_EVIDENCE = 10  # alerts kept verbatim in a status (~12 KB each at most); the rest are counted
MAX_STATUS = 256 * 1024  # bytes of JSON: a status (query answer, result) is trimmed beyond this
MAX_REPORT = 64 * 1024  # characters of the final report (also sent as the ticket's description)
MAX_DETAILS = 16 * 1024  # characters of the Web UI's current details
KEEP_FIRST, KEEP_LAST = 50, 150  # timeline events kept when trimming: how it began and how it stands
KEEP_ITEMS = 20  # refused approvals, regressions kept when trimming
MAX_FIELD = 2000  # characters of one detail kept when trimming


def text(s: str, limit: int) -> str:
    """``s`` cut to ``limit`` characters, saying so."""
    if len(s) <= limit:
        return s
    note = f"\n… ({len(s) - limit} more characters left out)"
    return s[: max(0, limit - len(note))] + note


def report(s: str) -> str:
    return text(s, MAX_REPORT)


def fit(status: RollbackStatus) -> RollbackStatus:
    """``status`` itself if small enough, else a trimmed copy (the workflow keeps the full one)."""
    if len(status.model_dump_json()) <= MAX_STATUS:
        return status
    s = status.model_copy(deep=True)
    trimmed: dict[str, int] = dict(s.trimmed)

    def keep(name: str, items: list, first: int, last: int = 0) -> list:
        if len(items) <= first + last:
            return items
        trimmed[name] = trimmed.get(name, 0) + len(items) - first - last
        return items[:first] + (items[-last:] if last else [])

    s.events = keep("events", s.events, KEEP_FIRST, KEEP_LAST)
    s.approvals.refused = keep("approvals.refused", s.approvals.refused, KEEP_ITEMS)
    s.regressions = keep("regressions", s.regressions, 0, KEEP_ITEMS)
    s.plan = keep("plan", s.plan, 100)
    s.changes = keep("changes", s.changes, 100, 100)
    for item in [*s.events, *s.steps, *s.checks, *s.regressions, *s.changes]:
        for field in ("what", "detail"):
            value = getattr(item, field, None)
            if isinstance(value, str) and len(value) > MAX_FIELD:
                setattr(item, field, text(value, MAX_FIELD))
    for key, value in list(s.extra.items()):
        size = len(to_json(value, serialize_unknown=True))
        if size > MAX_FIELD * 4:
            s.extra[key] = f"({size} bytes, left out of the status)"
            trimmed[f"extra.{key}"] = size
    s.report = text(s.report, MAX_REPORT // 2)
    s.trimmed = trimmed
    return s
