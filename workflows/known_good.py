"""Last known good, from a rollback's side (the store and the chooser: activities/known_good.py).

Every procedure whose default target is "the previous version" chooses it with
``activities.known_good.choose`` (never a version a rollback left as bad), records after its
change that the old version is ``bad`` and the target ``restored``, and once monitoring or
verification passes that the target is ``good``. Automation never rolls a target back past
the version automation itself returned it to (``refuse_automation``). Workflow code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.known_good import KnownGoodActivities, Place, Record, Verdict, describe
    from workflows import changes
    from workflows.options import BATCH, call
    from workflows.timeline import Refused, innermost_message

if TYPE_CHECKING:
    from workflows.base import RollbackWorkflow


Judgement = Literal["bad", "restored", "good"]


async def remember(rb: "RollbackWorkflow", *verdicts: tuple[Place, Judgement]) -> None:
    """Record verdicts (one activity for all): best effort (a rollback never fails for it), never
    after a cancel, and not in runs from before verdicts existed (they replay as they ran)."""
    if rb.ledger is None or changes.cancel_requested() or not verdicts:
        return
    records = [Record(place=place, verdict=Verdict(verdict=v, at=workflow.now(), by=rb.s.workflow_id,
                                                   automatic=rb.s.automatic)) for place, v in verdicts]
    what = ", ".join(f"{p.version or p.name.rsplit('/', 1)[-1]} {v}" for p, v in verdicts[:10]) + (
        f" and {len(verdicts) - 10} more" if len(verdicts) > 10 else "")
    try:
        await call(KnownGoodActivities.record_verdicts, records, options=BATCH)
    except FailureError as e:
        rb._event(f"could not record the verdicts ({what}): {innermost_message(e)}")
        return
    rb._event(f"recorded (rollback-verdict tags): {what}")


def refuse_automation(rb: "RollbackWorkflow", current_label: str, current: Verdict | None) -> None:
    """Automation never rolls a target back past the version automation already returned it to:
    if what serves now is such a version, an automatic rollback is refused (a person may still)."""
    if not rb.s.automatic or current is None or not current.automatic or current.verdict == "bad":
        return
    raise Refused(f"automation already returned {rb.s.target} to {describe(current_label, current)}; "
                  "automation never rolls a target back further on its own. A person decides: start the "
                  "rollback yourself (e.g. 'starter.py start ...') if it must go further back")
