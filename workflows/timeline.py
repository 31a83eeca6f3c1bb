"""The step timeline, written once: every runbook step is listed up front as ``pending``
and moves through running -> succeeded / failed / skipped / cancelled, with times."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from temporalio import workflow

from common.models import Event, RollbackStatus, Step, StepState


class StepFailed(Exception):
    """A step found something wrong that a retry will not fix; the message is for people."""


class Refused(StepFailed):
    """The procedure will not act, by rule (e.g. a destructive migration); nothing was changed."""


class Timeline:
    def __init__(self, status: RollbackStatus, names: list[str]) -> None:
        self.status = status
        status.steps = [Step(name=n) for n in names]

    def get(self, name: str) -> Step:
        for step in self.status.steps:
            if step.name == name:
                return step
        raise KeyError(f"unknown step {name!r}")  # a programming error, not a user one

    def _get_or_add(self, name: str) -> Step:
        """Planned steps are listed up front; an unplanned one (a pause) goes after the last started."""
        try:
            return self.get(name)
        except KeyError:
            steps = self.status.steps
            at = max((i + 1 for i, st in enumerate(steps) if st.state != StepState.pending), default=0)
            steps.insert(at, Step(name=name))
            return steps[at]

    def event(self, what: str) -> None:
        self.status.events.append(Event(at=workflow.now(), what=what))

    @asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[Step]:
        async with self.steps([name]) as steps:
            yield steps[0]

    @asynccontextmanager
    async def steps(self, names: list[str]) -> AsyncIterator[list[Step]]:
        """Steps that run together (one batch for a fleet's aliases). Inside, ``fail`` ends one of them
        on its own; the rest end with the block: succeeded, or failed / cancelled with its exception."""
        if getattr(workflow.instance(), "ledger", None) is not None and workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError(f"cancel requested: step {names[0]!r} not started")  # see workflows/changes.py
        steps = [self._get_or_add(name) for name in names]
        for step in steps:
            step.state, step.started_at = StepState.running, workflow.now()
            self.event(f"{step.name}: started")
        try:
            yield steps
        except asyncio.CancelledError:
            for step in self._running(steps):
                self._end(step, StepState.cancelled, step.detail or "cancelled")
            raise
        except GeneratorExit:  # the worker dropped this run from its cache (it stopped, or evicted it): the run
            raise  # goes on elsewhere from its history, and here is no workflow context left to record in
        except BaseException as e:
            for step in self._running(steps):
                self._end(step, StepState.failed, innermost_message(e))
            raise
        else:
            for step in self._running(steps):
                self._end(step, StepState.succeeded, step.detail)

    def fail(self, step: Step, detail: str) -> None:
        """End one step of ``steps`` as failed, the others going on."""
        self._end(step, StepState.failed, detail)

    @staticmethod
    def _running(steps: list[Step]) -> list[Step]:
        return [step for step in steps if step.state == StepState.running]

    def skip(self, name: str, why: str) -> None:
        step = self.get(name)
        now = workflow.now()
        step.state, step.started_at, step.ended_at, step.detail = StepState.skipped, now, now, why
        self.event(f"{name}: skipped ({why})")

    def _end(self, step: Step, state: StepState, detail: str) -> None:
        step.state, step.ended_at, step.detail = state, workflow.now(), detail
        self.event(f"{step.name}: {state.value}" + (f" ({detail})" if detail else ""))


def innermost_message(e: BaseException) -> str:
    """The innermost human message of an activity/child failure."""
    while getattr(e, "cause", None) is not None:
        e = e.cause  # type: ignore[assignment]
    return str(e) or type(e).__name__
