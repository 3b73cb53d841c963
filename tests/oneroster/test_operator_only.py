"""Who may import a roster: the operator, who holds the database's credentials. The admin API has no route
for it (so no admin, instructor or token can reach it), and the command without working credentials is
refused in one line, writing nothing (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from admin_api.app import create_app
from core.settings import Settings
from tests.oneroster.conftest import query, run_cli, small_set, write_set


def test_the_admin_api_has_no_route_that_imports_a_roster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDUAIQ_SESSION_SECRET", "s" * 40)
    paths = list(create_app(Settings()).openapi()["paths"])
    assert "/api/v1/units/{unit_id}/members/import" in paths  # the course CSV roster: a different feature
    assert [p for p in paths if "oneroster" in p.lower() or "roster" in p.lower()] == []


def test_the_command_without_the_databases_credentials_is_refused_in_one_line(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, _ = institution
    folder = write_set(tmp_path / "set", small_set())
    intruder = pg_url.replace("postgresql://postgres@", "postgresql://not-the-operator@").replace(
        "postgresql://eduaiq@", "postgresql://not-the-operator@"
    )
    assert intruder != pg_url
    done = run_cli(intruder, "roster", "import", "--institution", inst, str(folder))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("eduaiq: database:"), done.stderr
    assert query(
        pg_url, "select count(*) from unit where institution_id = %s and source = 'roster'", inst
    ) == [(0,)]


def test_an_unknown_institution_is_refused(pg_url: str, tmp_path: Path) -> None:
    done = run_cli(
        pg_url, "roster", "import", "--institution", "no-such-place", str(write_set(tmp_path, small_set()))
    )
    assert done.returncode == 1 and "no institution 'no-such-place'" in done.stderr, done.stderr
