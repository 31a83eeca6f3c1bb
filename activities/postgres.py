"""PostgreSQL: read-only SQL for schema validation and data-integrity checks.

DSNs are secrets: workflows pass a ``DsnRef`` (an env var name or a template whose
credentials come from ``${VAR}`` in the worker env); the DSN itself exists only here.
"""

from __future__ import annotations

import os
from datetime import datetime

import psycopg
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError


class DsnRef(BaseModel):
    env: str | None = None  # name of an env var holding the DSN
    template: str | None = None  # e.g. "postgresql://app:${DB_PASSWORD}@{host}:{port}/rastup"
    host: str | None = None
    port: int | None = None

    def resolve(self) -> str:
        if self.env:
            dsn = os.environ.get(self.env)
            if not dsn:
                raise ApplicationError(f"env var {self.env} (the database DSN) is not set on the worker",
                                       non_retryable=True, type="InvalidRequest")
            return dsn
        if self.template:
            dsn = self.template.replace("{host}", self.host or "").replace("{port}", str(self.port or 5432))
            return os.path.expandvars(dsn)
        raise ApplicationError("no DSN configured", non_retryable=True, type="InvalidRequest")


class SqlQueries(BaseModel):
    dsn: DsnRef
    queries: list[str]


Scalar = float | str | None


def scalar(value: object) -> Scalar:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return str(value)


@activity.defn
def sql_values(req: SqlQueries) -> list[Scalar]:
    """The first column of the first row of each query (None when no row), read-only."""
    try:
        with psycopg.connect(req.dsn.resolve(), connect_timeout=10, autocommit=True) as conn:
            conn.read_only = True
            out: list[Scalar] = []
            for sql in req.queries:
                row = conn.execute(sql).fetchone()
                out.append(scalar(row[0]) if row else None)
            return out
    except psycopg.OperationalError as e:
        # Connection problems are transient; the message has no password (psycopg masks it).
        raise ApplicationError(f"cannot reach the database: {str(e).splitlines()[0]}",
                               type="DatabaseUnavailable") from None
    except psycopg.Error as e:
        raise ApplicationError(f"SQL failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                               non_retryable=True, type="InvalidRequest") from None
