"""Replay guard: histories of completed rollbacks (tests/histories/*.json, recorded by
tests/record_histories.py) must replay against the current workflow code. A change that
breaks this needs `workflow.patched(...)`, not a re-recording."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory

from tests.helpers import replayer

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_present():
    assert len(HISTORIES) >= 5, "tests/histories/ lost its recorded histories"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_on_current_code(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await replayer().replay_workflow(history)
