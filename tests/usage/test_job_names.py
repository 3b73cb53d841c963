"""Every job the scheduler lists exists: a name pointing at nothing would be skipped in silence, and the
README and CLI would advertise a job that never runs (a reconciliation hook once named a function that
was never written)."""

from __future__ import annotations

import importlib
from typing import Any

import celery

from usage import jobs


class _Settings:
    redis_url = "redis://127.0.0.1:1/0"  # configure() only records it; nothing connects


def _target(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)  # ImportError/AttributeError: a dangling name


def test_every_quota_hook_and_the_caps_hook_name_a_function_that_exists() -> None:
    for name, (spec, seconds) in jobs.QUOTA_HOOKS.items():
        assert callable(_target(spec)), name
        assert seconds > 0
    assert callable(_target(jobs.CAPS_HOOK))


def test_every_scheduled_task_is_registered() -> None:
    app: celery.Celery = jobs.configure(_Settings())  # type: ignore[arg-type]
    schedule = app.conf.beat_schedule
    assert set(jobs.USAGE_SCHEDULE) | set(jobs.QUOTA_HOOKS) == set(schedule)
    for entry in schedule.values():
        assert entry["task"] in app.tasks, entry
