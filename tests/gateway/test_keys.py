"""A revoked or expired key stops working within 5 s, on a gateway that had it cached (default TTL)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import psycopg2
import pytest

from core.keys import hash_secret, new_secret
from tests.gateway.harness import Stack

HELLO = {"model": "demo-chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def fresh_key(stack: Stack) -> Iterator[str]:
    secret = new_secret()
    conn = psycopg2.connect(stack.db_url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "insert into api_key (id, key_hash, prefix, institution_id, user_id, unit_id, name, created_at) "
            "values (%s, %s, %s, %s, 'alice', 'cs101', 'test', now())",
            (uuid.uuid4().hex[:16], hash_secret(secret), secret[:12], stack.institution),
        )
    conn.close()
    yield secret


def _post(stack: Stack, key: str) -> httpx.Response:
    return httpx.post(
        stack.base_url + "/v1/chat/completions", json=HELLO, headers={"Authorization": f"Bearer {key}"}
    )


@pytest.mark.parametrize("column", ["revoked_at", "expires_at"])
def test_revoked_or_expired_key_stops_within_five_seconds(stack: Stack, fresh_key: str, column: str) -> None:
    assert _post(stack, fresh_key).status_code == 200  # now cached by the gateway
    conn = psycopg2.connect(stack.db_url)
    with conn, conn.cursor() as cur:
        cur.execute(f"update api_key set {column} = now() where key_hash = %s", (hash_secret(fresh_key),))
    conn.close()
    changed = time.monotonic()
    while (r := _post(stack, fresh_key)).status_code == 200:
        assert time.monotonic() - changed < 5, "the key still worked 5 s after it was revoked"
        time.sleep(0.1)
    assert r.status_code == 401
    assert ("revoked" if column == "revoked_at" else "expired") in r.json()["error"]["message"]
