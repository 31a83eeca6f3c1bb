"""The fixture app (tests/fixtures/dbapp) is real: its Alembic migrations really change PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.pg import (HEAD, alembic, columns, database_exists, fresh_database, scalar,
                      schema_version, seed_bookings, tables, upgrade)


def test_a_fresh_database_is_empty(pg_database: str) -> None:
    assert pg_database.startswith("postgresql://postgres@127.0.0.1:5432/rb_test_")
    assert tables(pg_database) == set()
    assert schema_version(pg_database) is None


def test_upgrade_to_head_creates_the_tables_and_columns(pg_database: str) -> None:
    upgrade(pg_database)
    assert schema_version(pg_database) == HEAD
    assert tables(pg_database) == {"alembic_version", "bookings", "payments"}
    assert columns(pg_database, "bookings") == ["id", "city", "created_at", "guests"]
    assert columns(pg_database, "payments") == ["id", "booking_id", "amount_cents", "created_at"]


def test_downgrade_one_step_from_0003_drops_payments(pg_database: str) -> None:
    upgrade(pg_database, "0003")
    seed_bookings(pg_database, 5)
    assert schema_version(pg_database) == "0003" and "payments" in tables(pg_database)

    done = alembic(pg_database, "downgrade", "-1")

    assert done.returncode == 0, done.stderr
    assert "Running downgrade 0003 -> 0002" in done.stderr  # alembic logs to stderr
    assert schema_version(pg_database) == "0002"
    assert tables(pg_database) == {"alembic_version", "bookings"}
    assert "guests" in columns(pg_database, "bookings")
    assert scalar(pg_database, "SELECT count(*) FROM bookings") == 5  # additive: no data lost

    assert alembic(pg_database, "downgrade", "-1").returncode == 0
    assert schema_version(pg_database) == "0001"
    assert "guests" not in columns(pg_database, "bookings")


def test_0004_modifies_data_and_its_downgrade_cannot_restore_it(pg_database: str) -> None:
    upgrade(pg_database, "0003")
    seed_bookings(pg_database, 3, city="Lisbon")
    upgrade(pg_database, "0004")
    assert scalar(pg_database, "SELECT DISTINCT city FROM bookings") == "lisbon"

    assert alembic(pg_database, "downgrade", "-1").returncode == 0

    assert schema_version(pg_database) == "0003"
    assert scalar(pg_database, "SELECT DISTINCT city FROM bookings") == "lisbon"  # still lost


def test_a_failing_migration_command_exits_non_zero_with_its_output(pg_database: str) -> None:
    done = alembic(pg_database, "downgrade", "-1")  # nothing applied yet: nothing to go below
    assert done.returncode != 0
    assert "Relative revision -1 didn't produce 1 migrations" in done.stderr + done.stdout
    unreachable = alembic("postgresql://postgres@127.0.0.1:1/nowhere", "current")
    assert unreachable.returncode != 0 and "Connection refused" in unreachable.stderr


def _name(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


@pytest.fixture()
def dropped_after() -> Iterator[list[str]]:
    """Names put in the list must not exist once the test's later fixtures are torn down.

    Requested before ``pg_database`` in a signature, it is set up before and torn down after it.
    """
    names: list[str] = []
    yield names
    assert names, "the test recorded no database to check"
    assert not [n for n in names if database_exists(n)], f"not dropped: {names}"


def test_the_fixture_drops_its_database_even_with_a_connection_open(
        dropped_after: list[str], pg_database: str) -> None:
    dropped_after.append(_name(pg_database))
    assert database_exists(_name(pg_database))
    leaked = psycopg.connect(pg_database)  # e.g. a worker's pool: must not block the drop
    leaked.execute("SELECT 1")


def test_two_databases_do_not_collide_and_all_are_dropped(
        dropped_after: list[str], pg_database: str, pg_database_factory: Callable[..., str]) -> None:
    second, third = pg_database_factory(), pg_database_factory("rb_restored")
    dsns = [pg_database, second, third]
    dropped_after.extend(_name(d) for d in dsns)
    assert len(set(dsns)) == 3 and _name(third).startswith("rb_restored_")

    upgrade(pg_database)
    upgrade(second, "0002")

    assert [schema_version(d) for d in dsns] == [HEAD, "0002", None]
    assert "payments" in tables(pg_database) and "payments" not in tables(second)
    assert tables(third) == set()


def test_fresh_database_drops_on_error_too() -> None:
    with pytest.raises(RuntimeError), fresh_database() as dsn:
        name = _name(dsn)
        raise RuntimeError("test body failed")
    assert not database_exists(name)
