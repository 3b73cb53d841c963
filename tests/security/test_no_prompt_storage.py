"""The gateway never stores prompts or answers: after real traffic (stream and not, a refused one, an aborted
one, an upstream error), no table of the database, no log line and no spool file holds the text a student sent
or the text the model answered."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import psycopg2

from tests.gateway.harness import gateway_stack


def _ledger_rows(db_url: str, institution: str) -> int:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from usage_event where institution_id = %s", (institution,))
        row = cur.fetchone()
    return int(row[0]) if row else 0


def _database_text(db_url: str) -> str:
    """Every row of every table in the public schema, as text."""
    out: list[str] = []
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("select tablename from pg_tables where schemaname = 'public'")
        for (table,) in cur.fetchall():
            cur.execute(f'select t::text from "{table}" t')  # table names come from the catalog itself
            out.extend(r[0] for r in cur.fetchall())
    return "\n".join(out)


def _files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


def test_prompts_and_answers_are_in_no_table_log_or_spool(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    secret = f"zebra-{uuid.uuid4().hex}"
    with gateway_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, consumer=True) as stack:
        headers = {"Authorization": f"Bearer {stack.key('alice')}"}
        url = stack.base_url + "/v1/chat/completions"
        messages = [
            {"role": "system", "content": f"system {secret}"},
            {"role": "user", "content": f"tell {secret}"},
        ]
        answers = []
        plain = httpx.post(
            url, headers=headers, timeout=60, json={"model": "demo-chat", "messages": messages}
        )
        assert plain.status_code == 200
        answers.append(plain.json()["choices"][0]["message"]["content"])
        with httpx.stream("POST", url, headers=headers, timeout=60,
                          json={"model": "demo-chat", "stream": True, "messages": messages}) as r:  # fmt: skip
            assert r.status_code == 200
            body = r.read().decode()
        assert "data: [DONE]" in body
        with httpx.stream("POST", url, headers=headers, timeout=60,
                          json={"model": "demo-chat", "stream": True, "messages": messages}) as r:  # fmt: skip
            next(r.iter_bytes())  # aborted after the first bytes
        bad = httpx.post(
            url, headers=headers, timeout=60, json={"model": f"no-such-{secret}", "messages": messages}
        )
        assert bad.status_code == 404
        deadline = time.monotonic() + 60
        while _ledger_rows(stack.db_url, stack.institution) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ledger_rows(stack.db_url, stack.institution) >= 4  # the traffic did reach the ledger
        stored = _database_text(stack.db_url) + _files_text(tmp_path)
    assert stack.institution in stored and "sidecar" in stored  # the grep does see the ledger and the logs
    assert secret not in stored
    answer = answers[0]
    assert len(answer) >= 20
    assert answer not in stored
