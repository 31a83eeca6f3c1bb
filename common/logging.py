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
from temporalio import workflow

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


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """Renders records logged from inside the workflow sandbox too: the SDK logs there (e.g. a malformed
    signal it drops, with its traceback), and rendering a traceback reads source files (``os.path``,
    ``linecache``), which the sandbox forbids; the failure would print "--- Logging error ---" instead.
    Formatting is not workflow code, so it runs unrestricted (and imports nothing into the sandbox)."""

    def format(self, record: logging.LogRecord) -> str:
        with workflow.unsafe.sandbox_unrestricted(), workflow.unsafe.imports_passed_through():
            return super().format(record)


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
    handler.setFormatter(_Formatter(
        foreign_pre_chain=[*shared, _temporal_context, structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
