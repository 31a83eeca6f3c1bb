"""Response times with teeth (runbook: Rollback Decision Matrix, "Response Time").

An approval step that passes its severity's response time without a decision pages the
on-call engineer (PagerDuty Events v2 ``trigger``); at the next response time, the secondary.
Both pages carry one dedup key per rollback run and are resolved as soon as the step is decided
(approved, rejected, timed out, cancelled). A severity without a response time (SEV-0: the
standard process) pages nobody. Workflow code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.incidents import IncidentActivities, Page
    from workflows.options import NOTIFY, call

if TYPE_CHECKING:
    from workflows.base import RollbackWorkflow

PD_SEVERITY = {"SEV-4": "critical", "SEV-3": "critical", "SEV-2": "error", "SEV-1": "warning", "SEV-0": "info"}
WHO = ["primary", "secondary"]


class Pager:
    def __init__(self, rollback: "RollbackWorkflow") -> None:
        self.rb = rollback
        self.overdue = 0  # response times passed in the current approval step
        self.paged: list[Page] = []

    @property
    def dedup_key(self) -> str:
        info = workflow.info()
        return f"rollback/{info.workflow_id}/{info.run_id}"

    async def response_time_passed(self, waiting_for: str) -> None:
        """Called at each reminder of an undecided approval step (the reminders come at the response time)."""
        rb = self.rb
        assert rb.catalog is not None
        if rb.catalog.policy.rule(rb.s.severity).response_minutes is None or self.overdue >= len(WHO):
            return
        who = WHO[self.overdue]
        self.overdue += 1
        page = Page(action="trigger", dedup_key=self.dedup_key, secondary=who == "secondary",
                    severity=PD_SEVERITY.get(rb.s.severity, "error"), workflow_id=rb.s.workflow_id,
                    summary=(f"{rb.s.severity} {rb.kind} rollback of {rb.s.target} has had no decision within its "
                             f"response time: waiting for {waiting_for}. Decide: starter.py approve "
                             f"{rb.s.workflow_id} --as <you> (or reject)")[:1024])
        if await rb._act(f"page the {who} on-call", call(IncidentActivities.page, page, options=NOTIFY)):
            self.paged.append(page)

    async def decided(self, how: str) -> None:
        """The approval step is over: resolve every page it sent."""
        for page in self.paged:
            await self.rb._act(f"resolve the {'secondary' if page.secondary else 'primary'} page",
                               call(IncidentActivities.page, page.model_copy(update={
                                   "action": "resolve", "summary": f"{page.summary[:200]} -- {how}"}),
                                    options=NOTIFY))
        self.paged.clear()
        self.overdue = 0
