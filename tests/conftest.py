"""Real servers for every test: PostgreSQL, Redis and a Kafka-protocol broker.

The machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are used
when they answer, otherwise embedded ones are started from the wheels, exactly
as the quick start does. Each run gets its own database and its own broker, and
tests isolate Redis data by unique institution ids, so parallel runs never meet.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.services.kafka import start_kafka
from cli.services.postgres import SUPERUSER, ensure_database, start_postgres
from cli.services.process import free_port, port_open
from cli.services.redis import start_redis

# The operator's declarations every test process and its children start from (core/settings.py): the
# provider key variables the tests' institution files name, and loopback for the test doubles of model
# servers. Tests of the policy itself pass their own settings.
os.environ.setdefault("EDUAIQ_PROVIDER_SECRET_VARS", "OPENAI_API_KEY,CAMPUS_VLLM_KEY,TEST_*")
os.environ.setdefault("EDUAIQ_UPSTREAM_ALLOWED_CIDRS", "127.0.0.0/8,::1/128")


def _drop_database(server_url: str, name: str) -> None:
    import psycopg2
    from psycopg2.extensions import parse_dsn

    dsn = parse_dsn(server_url)
    dsn["dbname"] = "postgres"
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'drop database if exists "{name}" with (force)')
    conn.close()


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def pg_server_url(services_dir: Path) -> Iterator[str]:
    """A PostgreSQL server URL (its `postgres` database); new databases are made from it."""
    explicit = os.environ.get("EDUAIQ_TEST_PG_SERVER")
    if explicit:
        yield explicit
        return
    if port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    port = free_port()
    child = start_postgres(services_dir / "pg", port)
    try:
        yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
    finally:
        child.stop()


def make_database(server_url: str, migrate: bool = True) -> str:
    """A fresh, uniquely named database on the server, migrated to head."""
    from core.migrate import upgrade

    name = f"eduaiq_t_{uuid.uuid4().hex[:10]}"
    url = server_url.rsplit("/", 1)[0] + "/" + name
    ensure_database(url)
    if migrate:
        upgrade(url)
    return url


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """One migrated database for the whole run; tests use their own institution ids inside it."""
    url = make_database(pg_server_url)
    try:
        yield url
    finally:
        _drop_database(pg_server_url, url.rsplit("/", 1)[1])


@pytest.fixture
def fresh_pg_url(pg_server_url: str) -> Iterator[str]:
    """A database of its own, for tests that need an empty ledger or count whole tables."""
    url = make_database(pg_server_url)
    try:
        yield url
    finally:
        _drop_database(pg_server_url, url.rsplit("/", 1)[1])


@pytest.fixture(scope="session")
def redis_url(services_dir: Path) -> Iterator[str]:
    explicit = os.environ.get("EDUAIQ_TEST_REDIS_URL")
    if explicit:
        yield explicit
        return
    if port_open("127.0.0.1", 6379):
        # One database per pytest-xdist worker: a gateway sweeps every institution of its database, and a
        # test's holds must not be billed by another test's gateway running at the same time.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        yield f"redis://127.0.0.1:6379/{int(worker[2:]) + 1 if worker.startswith('gw') else 0}"
        return
    port = free_port()
    child = start_redis(services_dir / "redis", port, persist=False)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        child.stop()


@pytest.fixture
def private_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of the test's own, for tests that flush or stop it."""
    port = free_port()
    child = start_redis(tmp_path / "redis", port, persist=False)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        child.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(services_dir: Path) -> Iterator[str]:
    """A broker per run: topics and consumer groups of one run never meet another's."""
    port = free_port()
    child = start_kafka(services_dir / "kafka", port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        child.stop()


@pytest.fixture
def unique_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
