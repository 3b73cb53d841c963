"""Celery jobs on a real Redis broker and a real worker: compaction, exports, forecasts, quota hooks, beat."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import redis

from core.settings import Settings
from tests.usage.helpers import (
    create_org,
    execute,
    expected_by_unit,
    make_event,
    query,
    rollup_totals_by_unit,
    settings_for,
    store_events,
    wait_for,
)
from tests.usage.job_hooks import marker_key
from usage import jobs

HOOKS = {"test.record": ("tests.usage.job_hooks:record", 1.0)}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def job_settings(fresh_pg_url: str, private_redis_url: str, tmp_path: Path, unique_id: str) -> Settings:
    s = settings_for(fresh_pg_url, "127.0.0.1:9", f"jobs-{unique_id}", tmp_path / "state")
    return s.model_copy(update={"redis_url": private_redis_url})


def _spawn(settings: Settings, call: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EDUAIQ_DATABASE_URL": settings.database_url,
        "EDUAIQ_REDIS_URL": settings.redis_url,
        "EDUAIQ_KAFKA_TOPIC": settings.kafka_topic,
        "EDUAIQ_STATE_DIR": str(settings.state_dir),
    }
    code = f"from core.settings import load_settings; from usage import jobs; jobs.{call}"
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_schedule_has_the_usage_jobs_and_only_hooks_that_exist(job_settings: Settings) -> None:
    app = jobs.configure(
        job_settings, {**HOOKS, "quota.not_yet": ("quota.jobs_that_do_not_exist:sweep", 5.0)}
    )
    schedule = app.conf.beat_schedule
    assert {"usage.compact_rollups", "usage.scheduled_exports", "usage.forecasts", "test.record"} <= set(
        schedule
    )
    assert "quota.not_yet" not in schedule and "quota.not_yet" not in app.tasks
    assert app.conf.broker_url == job_settings.redis_url == app.conf.result_backend


def test_worker_runs_jobs_from_redis(job_settings: Settings, unique_id: str, tmp_path: Path) -> None:
    url = job_settings.database_url
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=50), now - timedelta(days=1)
    events = [make_event(unique_id, i, ended_at=at) for i, at in enumerate([old, old, recent])]
    store_events(url, events)
    worker = _spawn(job_settings, f"run_worker(load_settings(), hooks={HOOKS!r})", tmp_path / "worker.log")
    try:
        app = jobs.configure(job_settings, HOOKS)
        deleted = app.send_task("usage.compact_rollups").get(timeout=60)
        assert deleted == 2  # the two hourly rows older than 35 days; daily rows stay
        assert rollup_totals_by_unit(url, "day") == expected_by_unit(events)
        assert rollup_totals_by_unit(url, "hour") == expected_by_unit(events[2:])
        assert app.send_task("test.record").get(timeout=60) == 1
    finally:
        _stop(worker)


def test_beat_schedules_hooks_onto_the_worker(job_settings: Settings, tmp_path: Path) -> None:
    worker = _spawn(job_settings, f"run_worker(load_settings(), hooks={HOOKS!r})", tmp_path / "worker.log")
    beat = _spawn(job_settings, f"run_beat(load_settings(), hooks={HOOKS!r})", tmp_path / "beat.log")
    client = redis.Redis.from_url(job_settings.redis_url)
    try:
        wait_for(lambda: int(client.get(marker_key(job_settings)) or 0) >= 2, 90, "the hook to run twice")
    finally:
        _stop(beat)
        _stop(worker)
        client.close()


def test_rebuild_rollups_repairs_a_day(job_settings: Settings, unique_id: str) -> None:
    url = job_settings.database_url
    day = datetime(2026, 10, 7, tzinfo=UTC)
    events = [make_event(unique_id, i, ended_at=day + timedelta(minutes=37 * i)) for i in range(30)]
    store_events(url, events)
    assert (
        execute(
            url,
            "delete from usage_rollup where grain = 'hour' and bucket_start < %s",
            day + timedelta(hours=5),
        )
        > 0
    )
    assert rollup_totals_by_unit(url, "hour") != expected_by_unit(events)
    jobs.rebuild_rollups_now(job_settings, unique_id, date(2026, 10, 7))
    assert rollup_totals_by_unit(url, "hour") == expected_by_unit(events)
    assert rollup_totals_by_unit(url, "day") == expected_by_unit(events)


def test_month_end_exports_are_frozen_once_and_forecasts_cached(
    job_settings: Settings, unique_id: str
) -> None:
    url = job_settings.database_url
    create_org(
        url, unique_id, [(unique_id, None, "university", None), ("c1", unique_id, "course", "C1")], tz="UTC"
    )
    now = datetime(2026, 11, 20, tzinfo=UTC)
    path = ["c1", unique_id]
    events = [
        make_event(
            unique_id,
            i,
            unit_id="c1",
            path=path,
            ended_at=datetime(2026, 10, 1, tzinfo=UTC) + timedelta(days=i),
        )
        for i in range(50)
    ]
    store_events(url, events)
    done = jobs.scheduled_exports_now(job_settings, now=now)
    assert {(d["period"], d["format"]) for d in done} == {("2026-10", f) for f in ("csv", "json", "focus")}
    first = query(url, "select format, content from export_snapshot order by format")
    jobs.scheduled_exports_now(job_settings, now=now + timedelta(hours=1))
    assert query(url, "select format, content from export_snapshot order by format") == first

    assert jobs.forecasts_now(job_settings, now=now) == 2
    cached = jobs.cached_forecasts(job_settings.redis_url, unique_id)
    assert set(cached) == {"c1", unique_id}
    nov = [
        e
        for e in events
        if e.ended_at >= datetime(2026, 11, 1, tzinfo=UTC) and e.ended_at.date() <= now.date()
    ]
    assert cached["c1"]["spent"] == sum(e.allocation_micro for e in nov)
    assert cached["c1"]["projected"] >= cached["c1"]["spent"]
