"""A stand-in for a `quota.jobs` function, so the tests can watch a hook run through a real worker."""

from __future__ import annotations

import redis

from core.settings import Settings


def marker_key(settings: Settings) -> str:
    return f"eduaiq:test-hook:{settings.kafka_topic}"


def record(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return int(client.incr(marker_key(settings)))
    finally:
        client.close()
