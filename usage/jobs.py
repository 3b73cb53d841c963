"""Background jobs on Celery with Redis: rollup compaction, month-end exports, forecasts, quota upkeep.

One Celery app, configured from the settings (broker and result backend at
`EDUAIQ_REDIS_URL`). `run_worker(settings)` and `run_beat(settings)` are what
`eduaiq worker` / `eduaiq beat` run.

Quota upkeep (period rollover, the reservation sweeper) belongs to `quota/`; this
module only schedules it. Each hook names a function `quota.jobs.<name>(settings)`,
and every name listed here exists (tests/usage/test_job_names.py imports each one);
a hook passed in whose function cannot be found is logged and not registered.
Reconciling the counters with the ledger is not a scheduled job: drift is expected
while usage events are on their way, so `eduaiq quota check` reports it and
`eduaiq quota rebuild` repairs it on an operator's word.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2
import redis
from celery import Celery
from sqlalchemy import text

from core.db import make_async_engine, session_factory
from core.settings import Settings, load_settings
from usage import reports
from usage.export import FORMATS, export
from usage.periods import is_closed, previous_month

log = logging.getLogger(__name__)

app = Celery("eduaiq", set_as_current=False)

# name -> (function "module:attribute", seconds between runs)
QUOTA_HOOKS: dict[str, tuple[str, float]] = {
    "quota.rollover_periods": ("quota.jobs:rollover_periods", 60.0),
    "quota.sweep_expired": ("quota.jobs:sweep_expired", 15.0),
}
# Optional: quota.jobs.caps_for(settings, institution_id) -> {unit_id: cost cap in micro-units or None}.
CAPS_HOOK = "quota.jobs:caps_for"

USAGE_SCHEDULE: dict[str, float] = {
    "usage.compact_rollups": 6 * 3600.0,
    "usage.scheduled_exports": 3600.0,
    "usage.forecasts": 3600.0,
}
HOURLY_RETENTION_DAYS = 35
FORECAST_TTL_SECONDS = 2 * 86400

_settings: Settings | None = None


def settings() -> Settings:
    """The settings the app was configured with, or the environment's (a worker started by celery itself)."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def resolve(target: str) -> Callable[..., Any] | None:
    """`module:attribute` -> the function, or None when the module or the function is not there (yet)."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    fn = getattr(module, attr, None)
    return fn if callable(fn) else None


def configure(s: Settings, hooks: Mapping[str, tuple[str, float]] | None = None) -> Celery:
    """Point the app at Redis, register the quota hooks that exist, and set the beat schedule."""
    global _settings
    _settings = s
    schedule: dict[str, dict[str, Any]] = {
        name: {"task": name, "schedule": seconds} for name, seconds in USAGE_SCHEDULE.items()
    }
    for name, (target, seconds) in (hooks if hooks is not None else QUOTA_HOOKS).items():
        if resolve(target) is None:
            log.warning("%s does not exist: task %s not scheduled", target, name)
            continue
        _register_hook(name, target)
        schedule[name] = {"task": name, "schedule": seconds}
    app.conf.update(
        broker_url=s.redis_url,
        result_backend=s.redis_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        result_expires=24 * 3600,
        task_acks_late=True,  # a job killed mid-run is redelivered; every job here is idempotent
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        beat_schedule=schedule,
    )
    return app


def _register_hook(name: str, target: str) -> None:
    if name in app.tasks:
        return

    def run_hook() -> Any:
        fn = resolve(target)
        if fn is None:
            raise RuntimeError(f"{target} is gone")
        return fn(settings())

    run_hook.__name__ = name.replace(".", "_")
    app.task(name=name)(run_hook)


# -- usage jobs -------------------------------------------------------------------------------------


def compact_rollups_now(
    s: Settings, retain_hourly_days: int = HOURLY_RETENTION_DAYS, now: datetime | None = None
) -> int:
    """Drop hourly rollups older than the retention; the daily rows (kept forever) already hold their sums."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retain_hourly_days)
    conn = psycopg2.connect(s.database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("delete from usage_rollup where grain = 'hour' and bucket_start < %s", (cutoff,))
            return int(cur.rowcount)
    finally:
        conn.close()


def rebuild_rollups_now(s: Settings, institution_id: str, day: date) -> int:
    """Recompute one UTC day's rollups from the ledger (repair after a manual ledger fix)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    cols = "requests, input_tokens, output_tokens, image_tokens, cached_tokens, cost_micro"
    sums = "count(*), sum(input_tokens), sum(output_tokens), sum(image_tokens), sum(cached_tokens), sum(cost_micro)"
    conn = psycopg2.connect(s.database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "delete from usage_rollup where institution_id = %s and bucket_start >= %s and bucket_start < %s",
                (institution_id, start, end),
            )
            for grain in ("hour", "day"):
                cur.execute(
                    "insert into usage_rollup (institution_id, grain, bucket_start, unit_id, model_id, user_id, "
                    f"purpose, {cols}) select institution_id, %s, date_trunc(%s, ended_at at time zone 'UTC') "
                    "at time zone 'UTC', coalesce(unit_id, ''), coalesce(model_id, ''), coalesce(user_id, ''), "
                    f"max(purpose), {sums} from usage_event where institution_id = %s and ended_at >= %s "
                    "and ended_at < %s group by 1, 2, 3, 4, 5, 6",
                    (grain, grain, institution_id, start, end),
                )
            cur.execute(
                "select count(*) from usage_rollup where institution_id = %s and bucket_start >= %s "
                "and bucket_start < %s",
                (institution_id, start, end),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _institutions(s: Settings) -> list[tuple[str, str]]:
    conn = psycopg2.connect(s.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("select id, timezone from institution order by id")
            return [(r[0], r[1]) for r in cur.fetchall()]
    finally:
        conn.close()


def scheduled_exports_now(s: Settings, now: datetime | None = None) -> list[dict[str, str]]:
    """Freeze last month's exports (every format, whole institution) once the month is closed."""
    now = now or datetime.now(UTC)
    done = []
    for inst, tz in _institutions(s):
        period = previous_month(now, tz)
        if not is_closed(period, tz, now):
            continue
        for fmt in FORMATS:
            content = asyncio.run(export(s.database_url, inst, period, fmt, now=now))
            done.append({"institution_id": inst, "period": period, "format": fmt, "bytes": str(len(content))})
    return done


def forecast_key(institution_id: str) -> str:
    return f"eduaiq:forecast:{institution_id}"


def _month_of(today: date) -> tuple[date, date]:
    start = today.replace(day=1)
    end = date(start.year + 1, 1, 1) if start.month == 12 else date(start.year, start.month + 1, 1)
    return start, end


async def _forecast_institution(s: Settings, inst: str, tz: str, today: date) -> dict[str, str]:
    caps_for = resolve(CAPS_HOOK)
    caps: Mapping[str, int | None] = caps_for(s, inst) if caps_for else {}
    engine = make_async_engine(s.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            units = [
                r[0]
                for r in await session.execute(
                    text("select id from unit where institution_id = :i and not archived"), {"i": inst}
                )
            ]
            start, end = _month_of(today)
            result = await reports.forecast_units(session, inst, units, start, end, caps, today=today, tz=tz)
    finally:
        await engine.dispose()
    return {f.unit_id: json.dumps(asdict(f.forecast), default=str, sort_keys=True) for f in result}


def forecasts_now(s: Settings, now: datetime | None = None) -> int:
    """Forecast every unit's month and cache it in Redis for the dashboards (one hash per institution)."""
    now = now or datetime.now(UTC)
    client = redis.Redis.from_url(s.redis_url)
    n = 0
    try:
        for inst, tz in _institutions(s):
            today = now.astimezone(ZoneInfo(tz)).date()
            values = asyncio.run(_forecast_institution(s, inst, tz, today))
            key = forecast_key(inst)
            pipe = client.pipeline()
            pipe.delete(key)
            if values:
                pipe.hset(key, mapping=dict(values.items()))
                pipe.expire(key, FORECAST_TTL_SECONDS)
            pipe.execute()
            n += len(values)
    finally:
        client.close()
    return n


def cached_forecasts(redis_url: str, institution_id: str) -> dict[str, dict[str, Any]]:
    """What the last forecast job computed, per unit (empty before its first run)."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(forecast_key(institution_id))
    finally:
        client.close()
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}


@app.task(name="usage.compact_rollups")
def compact_rollups(retain_hourly_days: int = HOURLY_RETENTION_DAYS) -> int:
    return compact_rollups_now(settings(), retain_hourly_days)


@app.task(name="usage.rebuild_rollups")
def rebuild_rollups(institution_id: str, day: str) -> int:
    return rebuild_rollups_now(settings(), institution_id, date.fromisoformat(day))


@app.task(name="usage.scheduled_exports")
def scheduled_exports() -> list[dict[str, str]]:
    return scheduled_exports_now(settings())


@app.task(name="usage.forecasts")
def forecasts() -> int:
    return forecasts_now(settings())


# -- processes --------------------------------------------------------------------------------------


def run_worker(
    s: Settings,
    *,
    concurrency: int = 2,
    queues: str | None = None,
    hooks: Mapping[str, tuple[str, float]] | None = None,
) -> None:
    """`eduaiq worker`: a Celery worker (threads: the jobs wait on PostgreSQL and Redis, not on CPU)."""
    configure(s, hooks)
    argv = ["worker", "--loglevel=INFO", "--pool=threads", f"--concurrency={concurrency}"]
    argv += ["--without-gossip", "--without-mingle"]
    if queues:
        argv.append(f"--queues={queues}")
    app.worker_main(argv)


def run_beat(s: Settings, *, hooks: Mapping[str, tuple[str, float]] | None = None) -> None:
    """`eduaiq beat`: the scheduler; run exactly one per deployment. Its state file lives in the state dir."""
    configure(s, hooks)
    state = Path(s.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    app.Beat(schedule=str(state / "celerybeat-schedule"), loglevel="INFO").run()
