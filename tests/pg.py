"""The real PostgreSQL on this machine (127.0.0.1:5432, trust auth), for the database tests.

- ``pg_database``: a fresh, uniquely named database per test, dropped afterwards; yields its DSN.
- ``pg_database_factory``: ``new() -> dsn`` for tests that need more than one database.
- ``alembic(dsn, *args)``: the fixture app's own migration tool (tests/fixtures/dbapp), run the
  way a deploy host runs it: a subprocess with ``DATABASE_URL`` in its environment.
- ``schema_version``, ``tables``, ``columns``: what the database really looks like now.
- ``seed_bookings``: rows to roll back over.

Registered in tests/conftest.py. ``ROLLBACK_TEST_PG`` overrides the server's admin DSN.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ADMIN_DSN = os.environ.get("ROLLBACK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DBAPP = Path(__file__).parent / "fixtures" / "dbapp"
MIGRATIONS = DBAPP / "migrations" / "versions"
HEAD = "0004"


def dsn_for(name: str) -> str:
    """The admin DSN (a URL, as the fixture app's DATABASE_URL must be) for database ``name``."""
    return urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_DSN} ({e}); start it, or point "
                    f"ROLLBACK_TEST_PG at a server where this user may CREATE DATABASE")


def create_database(prefix: str = "rb_test") -> str:
    """A new empty database with a unique name; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return dsn_for(name)


def drop_database(dsn: str) -> None:
    """Drop it even if something (a worker, a leaked connection) is still connected."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(name: str) -> bool:
    with _admin() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


@contextmanager
def fresh_database(prefix: str = "rb_test") -> Iterator[str]:
    """A new database for the ``with`` block, dropped at its end; yields its DSN."""
    dsn = create_database(prefix)
    try:
        yield dsn
    finally:
        drop_database(dsn)


@pytest.fixture()
def pg_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped after the test; yields its DSN."""
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture()
def pg_database_factory() -> Iterator[Callable[..., str]]:
    """``new(prefix="rb_test") -> dsn``: as many fresh databases as a test needs (e.g. the
    production one and a stand-in for a restored instance); all dropped after the test."""
    with ExitStack() as stack:
        yield lambda prefix="rb_test": stack.enter_context(fresh_database(prefix))


def alembic(dsn: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m alembic <args>`` in the fixture app against ``dsn``; never raises on failure."""
    env = {**os.environ, "DATABASE_URL": dsn}
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=DBAPP, env=env,
                          capture_output=True, text=True, check=False, timeout=timeout)


def upgrade(dsn: str, target: str = "head") -> None:
    """Migrate up, failing the test with alembic's output if it does not work."""
    done = alembic(dsn, "upgrade", target)
    assert done.returncode == 0, f"alembic upgrade {target} failed:\n{done.stdout}\n{done.stderr}"


def schema_version(dsn: str, table: str = "alembic_version") -> str | None:
    """The version alembic recorded, or None (no version table yet, or an empty one)."""
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
        if exists is None:
            return None
        row = conn.execute(sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(table))).fetchone()
        return row[0] if row else None


def tables(dsn: str) -> set[str]:
    """The tables in the public schema (alembic_version included)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'").fetchall()
    return {r[0] for r in rows}


def columns(dsn: str, table: str) -> list[str]:
    """The table's columns in order; empty if the table does not exist."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT column_name FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND table_name = %s "
                            "ORDER BY ordinal_position", (table,)).fetchall()
    return [r[0] for r in rows]


def seed_bookings(dsn: str, n: int, city: str = "Lisbon") -> None:
    """Insert ``n`` bookings (needs migration 0001); ``guests`` too once 0002 is applied."""
    with psycopg.connect(dsn) as conn:
        with_guests = "guests" in columns(dsn, "bookings")
        with conn.cursor() as cur:
            if with_guests:
                cur.executemany("INSERT INTO bookings (city, guests) VALUES (%s, %s)",
                                [(city, 1 + i % 4) for i in range(n)])
            else:
                cur.executemany("INSERT INTO bookings (city) VALUES (%s)", [(city,)] * n)


def scalar(dsn: str, query: str, params: tuple = ()) -> object:
    """The first column of the first row of a query."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None
