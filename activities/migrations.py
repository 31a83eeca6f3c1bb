"""The application's migrations: planning a rollback (which migrations, destructive or not)
and running the app's own migration command on a deploy host.

Alembic scripts are read as text: a revision's ``upgrade()`` that modifies or deletes data
makes its rollback unsafe (runbook: "If migration modified/deleted data: DO NOT use
migrate:rollback").
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.postgres import DsnRef, SqlQueries, sql_values
from common.catalog import Migrations

REVISION = re.compile(r"^revision\s*(?::\s*\w+)?\s*=\s*['\"]([^'\"]+)['\"]", re.M)
DOWN = re.compile(r"^down_revision\s*(?::[^=]+)?=\s*(None|['\"]([^'\"]+)['\"])", re.M)


class Migration(BaseModel):
    revision: str
    down_revision: str | None
    file: str
    destructive: list[str] = []  # why it is considered data-modifying


class PlanRequest(BaseModel):
    migrations: Migrations
    current: str
    steps: int


class MigrationPlan(BaseModel):
    to_undo: list[Migration]
    expected_version: str | None  # None: no migration left


def _scan(m: Migrations) -> dict[str, Migration]:
    folder = Path(m.directory)
    versions = folder / "versions" if (folder / "versions").is_dir() else folder
    if not versions.is_dir():
        raise ApplicationError(f"migrations directory {m.directory} not found on the worker; fix "
                               "migrations.directory in the catalog", non_retryable=True, type="InvalidRequest")
    found: dict[str, Migration] = {}
    patterns = [re.compile(p, re.I) for p in m.destructive_patterns]
    for path in sorted(versions.glob("*.py")):
        text = path.read_text()
        rev, down = REVISION.search(text), DOWN.search(text)
        if not rev:
            continue
        upgrade = text.split("def upgrade", 1)[-1].split("def downgrade", 1)[0]
        reasons = sorted({p.pattern for p in patterns if p.search(upgrade) or
                          ("rollback:" in p.pattern and p.search(text))})
        found[rev.group(1)] = Migration(revision=rev.group(1), down_revision=down.group(2) if down else None,
                                        file=path.name, destructive=reasons)
    return found


@activity.defn
def plan_migration_rollback(req: PlanRequest) -> MigrationPlan:
    """The last ``steps`` migrations from ``current`` back, and the version expected after."""
    known = _scan(req.migrations)
    undo, rev = [], req.current
    for _ in range(req.steps):
        if rev is None:
            raise ApplicationError(f"cannot roll back {req.steps} migration(s) from {req.current}: only "
                                   f"{len(undo)} exist before it", non_retryable=True, type="InvalidRequest")
        m = known.get(rev)
        if m is None:
            raise ApplicationError(f"the database is at migration {rev!r}, which is not in "
                                   f"{req.migrations.directory} (known: {', '.join(sorted(known))}); "
                                   "is the worker's copy of the migrations current?",
                                   non_retryable=True, type="InvalidRequest")
        undo.append(m)
        rev = m.down_revision
    return MigrationPlan(to_undo=undo, expected_version=rev)


class LocalCommand(BaseModel):
    command: list[str]
    cwd: str | None = None
    env: dict[str, str] = {}
    timeout_minutes: float = 30
    # Idempotency guard: run only while the database is still at ``run_if_version``;
    # if it is already at ``done_if_version`` the command ran before (a retry) and is skipped.
    dsn: DsnRef
    version_sql: str
    run_if_version: str | None
    done_if_version: str | None


class CommandResult(BaseModel):
    exit_code: int
    output: str
    skipped: bool = False


def _tail(text: str, secrets: list[str], lines: int = 40) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return "\n".join(text.strip().splitlines()[-lines:])


@activity.defn
def run_migration_command(cmd: LocalCommand) -> CommandResult:
    """Run the app's migration command once. Non-zero exit fails (non-retryably) with its output."""
    current = sql_values(SqlQueries(dsn=cmd.dsn, queries=[cmd.version_sql]))[0]
    if current == cmd.done_if_version and current != cmd.run_if_version:
        return CommandResult(exit_code=0, output=f"already at {current}; not run again", skipped=True)
    if current != cmd.run_if_version:
        raise ApplicationError(f"the database is at {current!r}, expected {cmd.run_if_version!r}: someone else "
                               "changed it; not running the migration command", non_retryable=True,
                               type="InvalidRequest")
    env = {**os.environ, **{k: os.path.expandvars(v) for k, v in cmd.env.items()}}
    secrets = [env[k] for k in cmd.env]
    try:
        proc = subprocess.run(cmd.command, cwd=cmd.cwd, env=env, capture_output=True, text=True,
                              timeout=cmd.timeout_minutes * 60)
    except FileNotFoundError:
        raise ApplicationError(f"migration command not found: {cmd.command[0]!r}; fix migrations.rollback.command",
                               non_retryable=True, type="InvalidRequest") from None
    except subprocess.TimeoutExpired:
        raise ApplicationError(f"migration command ran over {cmd.timeout_minutes:g} min and was stopped",
                               non_retryable=True, type="MigrationFailed") from None
    output = _tail(proc.stdout + proc.stderr, secrets)
    if proc.returncode != 0:
        raise ApplicationError(f"migration command exited {proc.returncode}:\n{output}", non_retryable=True,
                               type="MigrationFailed")
    return CommandResult(exit_code=0, output=output)
