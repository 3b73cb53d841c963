"""`eduaiq org import/export` as an IT admin runs them, against a real database."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import yaml

from tests.orgfile.conftest import run_cli

TABLES = ["institution", "unit", "budget_rule", "extra", "app_user", "membership", "admin_scope", "api_key",
          "provider", "model_offer", "audit_entry"]  # fmt: skip


def table_counts(url: str) -> dict[str, int]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        counts = {}
        for t in TABLES:
            cur.execute(f"select count(*) from {t}")
            counts[t] = cur.fetchone()[0]  # type: ignore[index]
    conn.close()
    return counts


def test_stateu_imports_then_reimport_reports_no_changes(fresh_pg_url: str, stateu_file: Path) -> None:
    first = run_cli(fresh_pg_url, "org", "import", str(stateu_file))
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout and "9 unit" in first.stdout
    second = run_cli(fresh_pg_url, "org", "import", str(stateu_file))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "no changes"


def test_three_mistakes_are_three_messages_and_nothing_is_written(
    fresh_pg_url: str, stateu_file: Path, tmp_path: Path
) -> None:
    assert run_cli(fresh_pg_url, "org", "import", str(stateu_file)).returncode == 0
    before = table_counts(fresh_pg_url)
    doc = yaml.safe_load(stateu_file.read_text())
    eng = doc["units"][0]["children"][0]
    eng["budget"]["cost"] = {"percent": 140}  # 1: percent out of range
    eng["children"][0]["children"][0]["members"] = [
        {"user": "nobody-here", "role": "student"}
    ]  # 2: unknown user
    research = eng["children"][0]["children"][0]["children"][1]
    research["extras"][0]["valid_to"] = "2026-01-01"  # 3: window ends before it starts
    research["extras"][0]["cost"] = 999
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))

    result = run_cli(fresh_pg_url, "org", "import", str(bad))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("eduaiq:")]
    assert lines == [
        "units[0].children[0].budget.cost.percent: must be 0..100",
        "units[0].children[0].children[0].children[0].members[0].user: unknown user 'nobody-here'",
        "units[0].children[0].children[0].children[0].children[1].extras[0]: valid_from must not be after valid_to",
    ]
    assert "3 problem(s); nothing was written" in result.stderr
    assert table_counts(fresh_pg_url) == before


def test_edited_file_applies_only_the_difference(
    fresh_pg_url: str, stateu_file: Path, tmp_path: Path
) -> None:
    assert run_cli(fresh_pg_url, "org", "import", str(stateu_file)).returncode == 0
    doc = yaml.safe_load(stateu_file.read_text())
    cs101 = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][0]["children"][0]
    assert cs101["id"] == "cs101"
    cs101["budget"]["cost"] = {"percent": 50}
    cs101["members"] = [m for m in cs101["members"] if m["user"] != "prof-ada"]
    doc["units"][0]["children"].pop()  # the College of Humanities leaves the file
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(doc))

    result = run_cli(fresh_pg_url, "org", "import", str(edited))
    assert result.returncode == 0, result.stderr
    changes = sorted(result.stdout.splitlines()[:-1])
    assert changes == [
        "archive unit:stateu/hum",
        "remove budget_rule:stateu/hum/cost/unit",
        "remove membership:stateu/cs101/prof-ada",
        "update budget_rule:stateu/cs101/cost/unit",
    ]
    conn = psycopg2.connect(fresh_pg_url)
    with conn.cursor() as cur:
        cur.execute("select mode, ratio from budget_rule where unit_id='cs101' and scope='unit'")
        assert cur.fetchone() == ("percent", 50)
        cur.execute("select count(*) from audit_entry where action like 'org.%%' and target like '%%cs101%%'")
        assert cur.fetchone()[0] >= 2  # type: ignore[index]
    conn.close()
    assert run_cli(fresh_pg_url, "org", "import", str(edited)).stdout.strip() == "no changes"


def test_export_then_import_round_trips(fresh_pg_url: str, stateu_file: Path, tmp_path: Path) -> None:
    assert run_cli(fresh_pg_url, "org", "import", str(stateu_file)).returncode == 0
    exported = run_cli(fresh_pg_url, "org", "export")
    assert exported.returncode == 0, exported.stderr
    out = tmp_path / "exported.yaml"
    out.write_text(exported.stdout)
    again = run_cli(fresh_pg_url, "org", "import", str(out))
    assert again.stdout.strip() == "no changes", again.stdout
    doc = yaml.safe_load(exported.stdout)
    assert doc["units"][0]["children"][0]["budget"] == {"cost": {"percent": 40}}
    assert "keys" not in doc  # only hashes are stored


def test_unreadable_and_non_yaml_files_are_clear_errors(fresh_pg_url: str, tmp_path: Path) -> None:
    missing = run_cli(fresh_pg_url, "org", "import", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("institution: [unclosed\n")
    result = run_cli(fresh_pg_url, "org", "import", str(broken))
    assert result.returncode == 1 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr
