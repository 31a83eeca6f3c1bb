"""structlog JSON logs (console rendering on a TTY), with Temporal context on every line.

Workflow and activity code log through the SDK's stdlib loggers (``workflow.logger`` skips
replays); this formatter renders those records through structlog and lifts the SDK's
``temporal_workflow`` / ``temporal_activity`` extras into flat fields.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_CONTEXT = {
    "temporal_workflow": ("workflow_id", "run_id", "workflow_type"),
    "temporal_activity": ("activity_type", "activity_id", "workflow_id", "workflow_run_id", "attempt"),
}


def _temporal_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    record = event.get("_record")
    for attr, keys in _CONTEXT.items():
        ctx = getattr(record, attr, None) or event.pop(attr, None)
        if isinstance(ctx, dict):
            for k in keys:
                if k in ctx:
                    event.setdefault("run_id" if k == "workflow_run_id" else k, ctx[k])
    return event


def configure(fmt: str = "auto", level: str = "INFO") -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _temporal_context],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
