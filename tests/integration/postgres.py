"""The embedded PostgreSQL 15 with pgaudit (collector_ext.embedded_postgres) for the database source's
tests: a missing installation or a server that misbehaves fails the test with the reason (never a
silent skip)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from collector_ext import embedded_postgres
from collector_ext.embedded_postgres import (
    APP_DATABASE as TEST_DATABASE,
)
from collector_ext.embedded_postgres import (
    APP_PASSWORD as TEST_PASSWORD,
)
from collector_ext.embedded_postgres import (
    APP_ROLE as TEST_ROLE,
)
from collector_ext.embedded_postgres import (
    PACKAGES,
    SERVER_SETTINGS,
    EmbeddedPostgres,
    EmbeddedPostgresError,
)

__all__ = [
    "PACKAGES",
    "SERVER_SETTINGS",
    "TEST_DATABASE",
    "TEST_PASSWORD",
    "TEST_ROLE",
    "PostgresServer",
    "embedded_postgres",
    "running_postgres",
]


class PostgresServer(EmbeddedPostgres):
    """EmbeddedPostgres whose errors fail the test with their message."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except EmbeddedPostgresError as exc:
            pytest.fail(str(exc), pytrace=False)

    def start(self) -> PostgresServer:
        try:
            super().start()
        except EmbeddedPostgresError as exc:
            pytest.fail(str(exc), pytrace=False)
        return self

    def wait_for_log(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15) -> list[str]:
        try:
            return super().wait_for_log(predicate, timeout)
        except EmbeddedPostgresError as exc:
            pytest.fail(str(exc), pytrace=False)


def running_postgres() -> Iterator[PostgresServer]:
    """Generator body for a fixture: a started server, stopped and removed afterwards."""
    with PostgresServer() as server:
        yield server
