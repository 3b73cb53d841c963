"""A broken roster is refused whole, every problem named by file, line and column, and nothing is written;
input bounds hold against zip bombs and names that climb out of the set (issue 18)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from admin_api.oneroster.source import Limits, SourceError, read_set
from tests.oneroster.conftest import enrol, person, query, run_cli, small_set, write_set

COUNTED = ("unit", "app_user", "membership", "roster_record", "audit_entry")


def _counts(url: str, inst: str) -> dict[str, int]:
    return {t: query(url, f"select count(*) from {t} where institution_id = %s", inst)[0][0] for t in COUNTED}


def test_a_broken_set_is_refused_with_every_problem_and_nothing_is_written(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, _ = institution
    rows = small_set()
    rows["users.csv"].insert(3, person("u-bob", "bobby", "Bob", "Again"))  # line 5: bob's sourcedId twice
    rows["classes.csv"][1]["schoolSourcedId"] = "school-nowhere"  # line 3
    rows["enrollments.csv"][0]["role"] = "principal"  # line 2
    rows["enrollments.csv"][2]["userSourcedId"] = "u-ghost"  # line 4
    rows["enrollments.csv"][3]["endDate"] = "2026-13-40"  # line 5
    rows["enrollments.csv"].append(enrol("e7", "cs999", "u-cho", "student"))  # line 8: unknown class
    folder = write_set(tmp_path / "set", rows)
    users = folder / "users.csv"
    lines = users.read_text().splitlines()
    users.write_text("\n".join([lines[0] + ",favouriteColour"] + [line + "," for line in lines[1:]]) + "\n")
    sessions = folder / "academicSessions.csv"
    header, *body = sessions.read_text().splitlines()
    sessions.write_text("\n".join([header.replace(",endDate", ",finishDate"), *body]) + "\n")
    (folder / "courses.csv").unlink()  # the manifest still says bulk
    before = _counts(pg_url, inst)

    done = run_cli(pg_url, "roster", "import", "--institution", inst, str(folder))
    assert done.returncode == 1
    problems = [line for line in done.stderr.splitlines() if not line.startswith("eduaiq:")]
    assert [p.split(": ", 1)[0] for p in problems] == [
        "academicSessions.csv:1:endDate",
        "academicSessions.csv:1:finishDate",
        "classes.csv:3:schoolSourcedId",
        "enrollments.csv:2:role",
        "enrollments.csv:4:userSourcedId",
        "enrollments.csv:5:endDate",
        "enrollments.csv:8:classSourcedId",
        "manifest.csv:6:value",
        "users.csv:1:favouriteColour",
        "users.csv:5:sourcedId",
    ], done.stderr
    assert problems[0].endswith("missing required column") and problems[1].endswith("unknown column")
    assert "unknown org 'school-nowhere'" in problems[2] and "'principal'" in problems[3]
    assert "unknown user 'u-ghost'" in problems[4] and "not a date" in problems[5]
    assert "unknown class 'cs999'" in problems[6] and "file.courses is bulk but courses.csv" in problems[7]
    assert "duplicate sourcedId 'u-bob' (first on line 4)" in problems[9]
    assert "refused, 10 problem(s); nothing was written" in done.stderr
    assert _counts(pg_url, inst) == before


def test_a_manifest_naming_a_version_other_than_1_2_is_refused(
    pg_url: str, institution: tuple[str, Path], tmp_path: Path
) -> None:
    inst, _ = institution
    folder = write_set(tmp_path / "set", small_set())
    manifest = folder / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("oneroster.version,1.2", "oneroster.version,1.0"))
    done = run_cli(pg_url, "roster", "import", "--institution", inst, str(folder))
    assert done.returncode == 1 and "manifest.csv:3:value: oneroster.version must be 1.2" in done.stderr


def test_a_class_whose_school_is_not_mapped_is_refused_until_a_default_unit_is_given(
    pg_url: str, tmp_path: Path
) -> None:
    import uuid

    import yaml

    from tests.oneroster.conftest import org_doc

    inst = "ro" + uuid.uuid4().hex[:10]
    path = tmp_path / "org.yaml"
    path.write_text(yaml.safe_dump(org_doc(inst, roster={"orgs": {}, "subject_domain": "stateu.edu"})))
    assert run_cli(pg_url, "org", "import", str(path)).returncode == 0
    folder = write_set(tmp_path / "set", small_set())
    done = run_cli(pg_url, "roster", "import", "--institution", inst, str(folder))
    assert done.returncode == 1
    assert [p.split(": ", 1)[0] for p in done.stderr.splitlines()[:2]] == [
        "classes.csv:2:schoolSourcedId",
        "classes.csv:3:schoolSourcedId",
    ]
    assert "is not mapped in the institution file's roster.orgs" in done.stderr
    assert query(
        pg_url, "select count(*) from unit where institution_id = %s and source = 'roster'", inst
    ) == [(0,)]

    path.write_text(yaml.safe_dump(org_doc(inst, roster={"default_unit": "general"})))
    assert run_cli(pg_url, "org", "import", str(path)).returncode == 0
    done = run_cli(pg_url, "roster", "import", "--institution", inst, str(folder))
    assert done.returncode == 0, done.stderr
    assert query(pg_url, "select id, parent_id from unit where institution_id = %s and source = 'roster' "
                 "order by id", inst) == [("cs101-a", "general"), ("cs201-a", "general")]  # fmt: skip

    path.write_text(yaml.safe_dump(org_doc(inst, roster={"default_unit": "nowhere"})))
    refused = run_cli(pg_url, "org", "import", str(path))
    assert refused.returncode == 1 and "roster.default_unit: unknown unit 'nowhere'" in refused.stderr


def test_a_zip_imports_like_its_folder(pg_url: str, institution: tuple[str, Path], tmp_path: Path) -> None:
    inst, _ = institution
    folder = write_set(tmp_path / "set", small_set())
    archive = tmp_path / "roster.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"export/{f.name}")  # some exporters zip the folder itself
    done = run_cli(pg_url, "roster", "import", "--institution", inst, str(archive))
    assert done.returncode == 0, done.stderr
    assert "2 units created" in done.stdout and "6 memberships added" in done.stdout
    again = run_cli(pg_url, "roster", "import", "--institution", inst, str(folder))
    assert "no changes" in again.stdout, again.stdout


def test_zip_bombs_many_entries_and_climbing_names_are_refused_before_reading(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("users.csv", b"0" * (5 * 1024 * 1024))  # 5 MiB of zeros: a few KiB compressed
    assert bomb.stat().st_size < 64 * 1024
    with pytest.raises(SourceError, match="uncompressed, more than"):
        read_set(bomb, Limits(total_bytes=1024 * 1024))
    with pytest.raises(SourceError, match="inflates past"):
        read_set(bomb, Limits(file_bytes=1024 * 1024))
    climbing = tmp_path / "climb.zip"
    with zipfile.ZipFile(climbing, "w") as z:
        z.writestr("../../etc/users.csv", "x")
    with pytest.raises(SourceError, match=r"unsafe entry name '\.\./\.\./etc/users\.csv'"):
        read_set(climbing)
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(70):
            z.writestr(f"f{i}.csv", "x")
    with pytest.raises(SourceError, match="70 entries, more than 64"):
        read_set(many)


def test_a_zip_whose_directory_lies_about_sizes_is_cut_at_the_cap(tmp_path: Path) -> None:
    """The central directory says 10 bytes; the entry inflates to 2 MiB. Nothing past the declared size or
    the cap is inflated: the entry is refused as damaged."""
    liar = tmp_path / "liar.zip"
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("users.csv", b"1" * (2 * 1024 * 1024))
    data = bytearray(liar.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")  # uncompressed size in the directory
    liar.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"users\.csv is damaged"):
        read_set(liar, Limits(file_bytes=1024 * 1024))
