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
