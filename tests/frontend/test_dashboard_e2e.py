"""The dashboard in a real browser against the real stack (see conftest.py for how it is started).

Each test drives Debian's Chromium through playwright-core (`frontend/e2e/scenarios.mjs`) and
saves screenshots to the run's screenshot directory (EDUAIQ_E2E_OUT, else a pytest temp dir).
Sign-in is the quick start's development login (`/auth/dev/login`), not an IdP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from core.db import sync_url
from tests.frontend.conftest import ROOT, Stack
from tests.frontend.gen_institution import write


def test_student_creates_a_key_uses_it_and_sees_the_usage(dashboard_stack: Stack) -> None:
    out = dashboard_stack.run("student-key-and-usage")
    assert out["sdk_total_tokens"] > 0
    assert out["requests_after"] > out["requests_before"]


def test_finance_downloads_a_focus_export(dashboard_stack: Stack) -> None:
    out = dashboard_stack.run("finance-focus-export")
    assert out["file"].endswith(".csv")
    assert out["rows"] >= 1  # the student's request of the test before, at least
    assert out["mentions_cs101"] is True


def test_department_admin_sets_a_percent_cap_and_the_student_is_refused(dashboard_stack: Stack) -> None:
    out = dashboard_stack.run("department-admin-percent-cap")
    assert out["cap_after"] is not None and out["cap_after"] < 5_000_000
    assert out["refused_status"] in (402, 403, 429)
    assert "cs101" in str(out["preview"]).lower()


def test_first_screen_of_a_2000_unit_institution(dashboard_stack: Stack) -> None:
    """Imports a generated 2,000-unit, 20,000-student institution and records the first-screen time.

    The figure is written to first-screen.json beside the screenshots; it is a measurement, so the
    test asserts what was rendered, not how fast.
    """
    org = dashboard_stack.state_dir / "bigu.yaml"
    write(org, units=2000, students=20000, inst_id="bigu")
    done = subprocess.run([sys.executable, "-m", "cli", "org", "import", str(org)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **dashboard_stack.services})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = dashboard_stack.run(
        "first-screen-load", E2E_USER="inst-admin", E2E_INSTITUTION="bigu", E2E_RUNS="3"
    )
    (dashboard_stack.out_dir / "first-screen.json").write_text(json.dumps(out, indent=2))
    assert "2,000 units" in str(out["placeholder"])
    assert all(r["tree_rendered_ms"] for r in out["runs"])


def test_department_admin_sets_a_member_limit_and_the_api_returns_it(dashboard_stack: Stack) -> None:
    out = dashboard_stack.run("department-admin-member-limit")
    member = {"requests_per_minute": 7, "tokens_per_minute": None, "concurrent": 3}
    assert out["saved"]["member_limits"] == member
    assert out["saved"]["unit_id"] == "cs101"
    assert out["live_max"] == 7
    assert out["live_requests"] >= 1  # alice's request, counted in the member window the card reads


def test_admin_sees_a_key_used_after_its_membership_ended_and_where_people_came_from(
    dashboard_stack: Stack,
) -> None:
    """issue 18: the Leavers page (reached from the navigation) lists a key whose usage was admitted after
    its membership ended, and the People tab shows each person's source and ended memberships. The gateway
    refuses such a key, so the case is written into the stack's database and ledger, and removed after."""
    tag = uuid.uuid4().hex[:8]
    user, key_id, prefix, event = f"e2e-leaver-{tag}", f"e2eleaver{tag}", f"sk-e2e-{tag}", str(uuid.uuid4())
    now = datetime.now(UTC)
    engine = create_engine(sync_url(dashboard_stack.services["EDUAIQ_DATABASE_URL"]))
    params = {"u": user, "k": key_id, "p": prefix, "e": event, "ends": now - timedelta(days=2),
              "at": now - timedelta(days=1), "h": uuid.uuid4().hex + uuid.uuid4().hex}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            text(
                "insert into app_user (institution_id, id, name, created_at, source) "
                "values ('demo-u', :u, 'Lee Ver', now(), 'api')"
            ),
            params,
        )
        conn.execute(
            text(
                "insert into membership (institution_id, unit_id, user_id, role, source, ends_at) "
                "values ('demo-u', 'cs101', :u, 'student', 'api', :ends)"
            ),
            params,
        )
        conn.execute(
            text(
                "insert into api_key (id, key_hash, prefix, institution_id, user_id, unit_id, created_at) "
                "values (:k, :h, :p, 'demo-u', :u, 'cs101', now())"
            ),
            params,
        )
        conn.execute(text("insert into usage_event (event_id, schema_version, request_id, institution_id, started_at, "
                          "ended_at, user_id, key_id, unit_id, path, purpose, input_tokens, output_tokens, image_tokens, "
                          "cached_tokens, cost_micro, overage_micro, latency_ms, status, funding, extras_paid) values "
                          "(:e, 1, 'req-e2e', 'demo-u', :at, :at, :u, :k, 'cs101', '[\"cs101\"]', 'other', 10, 5, 0, 0, "
                          "1000, 0, 5, 'ok', '{}', '[]')"), params)  # fmt: skip
    try:
        out = dashboard_stack.run("admin-leavers-and-provenance", E2E_LEAVER_KEY=key_id, E2E_LEAVER_USER=user)
    finally:
        with engine.begin() as conn:
            conn.execute(text("delete from usage_event where event_id = :e"), params)
            conn.execute(text("delete from app_user where institution_id = 'demo-u' and id = :u"), params)
        engine.dispose()
    assert out["leaver_rows"] == 1  # the demo's own keys all stopped in time
    assert prefix in out["leaver_row"] and "Lee Ver" in out["leaver_row"]
    assert out["alice_source"] == "file"  # the demo institution's file created her
    assert out["leaver_source"] == "API" and out["leaver_ended"] is True
