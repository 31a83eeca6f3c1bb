"""What the Web UI needs to be usable on its own (docs/web-ui.md):

- each procedure's input as the Start Workflow form takes it (one JSON object): its JSON Schema
  generated from the pydantic model (``schema``; ``starter.py schema KIND``) and a minimal valid
  example to paste (``example``);
- the short message a bad input fails with (``explain``, via the worker's ``ShortFailures``): the
  fields and the problem, then the example; never pydantic's raw text or its URLs;
- the list filter that shows one row per rollback (``ROLLBACKS_ONLY``: lock workflows and the
  auto-rollback checks set no RollbackKind).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pydantic import ValidationError
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client
from temporalio.converter import DefaultFailureConverter, PayloadConverter
from temporalio.exceptions import ApplicationError

from common.api import PROCEDURES, BadRequest, procedure

# The smallest input that starts each procedure on the sandbox's catalog (sandbox/catalog.yaml):
# the fields every rollback needs, the target, and what the procedure cannot guess.
_COMMON = {"severity": "SEV-2", "requested_by": "dana", "reason": "errors after the last release"}
EXAMPLES: dict[str, dict[str, Any]] = {
    "service": {"service": "api", **_COMMON},
    "database": {"database": "rastup-prod", "mode": "snapshot_restore", **_COMMON},
    "frontend": {"site": "web", "strategy": "release_sync", "to_release": "v1.2.2", **_COMMON},
    "lambda": {"function": "rastup-search-indexer", **_COMMON},
    "infra": {"stack": "network", **_COMMON},
    "flag": {"flag": "payments_disabled", "action": "kill_switch", **_COMMON},
    "config": {"target": "app-settings", **_COMMON},
    "release": {"release": "v1.2.3", **_COMMON},
}
# The gradual blue/green rollback (runbook: 50 % -> 100 %), for the docs and the Web UI test.
GRADUAL_EXAMPLE = {"service": "api-bg", "rollout_percentages": [50, 100], **_COMMON}

# The Workflows list filtered to rollbacks: one row each (save it as a view in the Web UI).
ROLLBACKS_ONLY = "RollbackKind IS NOT NULL"

_KIND_OF_MODEL = {model.__name__: kind for kind, (_, model, _) in PROCEDURES.items()}
_KIND_OF_TYPE = {wf_type: kind for kind, (wf_type, _, _) in PROCEDURES.items()}


def kind_of(name: str) -> str:
    """A kind from itself, its workflow type (``ServiceRollback``) or its input model's name."""
    kind = _KIND_OF_TYPE.get(name) or _KIND_OF_MODEL.get(name) or name
    procedure(kind)  # BadRequest naming the known kinds
    return kind


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of ``kind``'s input (what the Web UI's Start Workflow form takes)."""
    wf_type, model, _ = procedure(kind_of(kind))
    out = model.model_json_schema()
    out["title"] = f"{wf_type} input"
    out["examples"] = [example(kind)]
    return out


def example(kind: str) -> dict[str, Any]:
    return dict(EXAMPLES[kind_of(kind)])


def problems(e: ValidationError) -> list[tuple[str, str]]:
    """(field, problem) pairs in a person's words: pydantic's message without its URL or input echo."""
    out = []
    for x in e.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in x["loc"]) or "input"
        msg = x["msg"].removeprefix("Value error, ")
        if x["type"] == "extra_forbidden":
            msg = "not a field of this input (a typo?)"
        elif x["type"] == "missing":
            msg = "required"
        out.append((field, msg))
    return out


def explain(e: ValidationError) -> str:
    """One short paragraph: what is wrong with which field, and a minimal valid input to paste."""
    kind = _KIND_OF_MODEL.get(e.title)
    found = problems(e)
    what = "; ".join(f"'{field}': {msg}" for field, msg in found[:5])
    more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    if kind is None:
        return f"bad input: {what}{more}"
    wf_type = PROCEDURES[kind][0]
    return (f"bad {wf_type} input: {what}{more}. A minimal valid input to paste: {json.dumps(example(kind))} "
            f"(every field: 'starter.py schema {kind}')")


def bad_request(e: ValidationError) -> BadRequest:
    return BadRequest(explain(e), problems(e))


class ShortFailures(DefaultFailureConverter):
    """The worker's failure converter: an input that fails validation (a Web UI start, a webhook)
    fails the workflow with ``explain``'s paragraph (type ``BadInput``) instead of pydantic's text,
    its URLs and a stack trace. Every other failure converts as by default."""

    def to_failure(self, exception: BaseException, payload_converter: PayloadConverter,
                   failure: Failure) -> None:
        if isinstance(exception, ValidationError):
            exception = ApplicationError(explain(exception), type="BadInput", non_retryable=True)
        super().to_failure(exception, payload_converter, failure)


def with_short_failures(client: Client) -> Client:
    """``client`` whose data converter fails bad inputs with ``ShortFailures`` (for the worker)."""
    config = client.config()
    converter = config["data_converter"]
    if converter.failure_converter_class is ShortFailures:
        return client
    config["data_converter"] = dataclasses.replace(converter, failure_converter_class=ShortFailures)
    return Client(**config)
