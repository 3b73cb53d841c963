"""The admin API against real PostgreSQL and Redis, with people signed in through the real SSO sessions.

Every test gets its own institution: the worked example (stateu.yaml) imported
with `apply_org` under a unique id, plus a few people the example does not
have so every role exists (a finance officer, an auditor, a TA, an
instructor-only member and the admin of a sibling college). Its budget is
compiled into Redis the way the CLI bootstraps an institution.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.app import create_app
from admin_api.orgfile import apply_org, parse_document
from admin_api.state import AdminState
from core.settings import Settings
from quota.sources import load_spec

STATEU = Path(__file__).resolve().parents[1] / "orgfile" / "stateu.yaml"  # the repository's own copy
BASE_URL = "http://admin.test"

# Every role of the issue, by the user who holds it in the test institution.
ROLES: dict[str, str] = {
    "uadmin": "institution admin (admin on the root)",
    "eadmin": "college admin (eng)",
    "csadmin": "department admin (cs, under eng)",
    "hadmin": "college admin of hum (eng's sibling)",
    "prof-ada": "admin of her faculty unit ada, instructor of cs101",
    "inst1": "instructor of cs102 (no admin role)",
    "ta1": "TA in cs101",
    "s1": "student in cs101",
    "s2": "student in cs102",
    "r1": "researcher in ada-research",
    "fin": "finance on eng",
    "aud": "auditor on cs",
}


def stateu_document(inst_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(STATEU.read_text())
    doc["institution"]["id"] = inst_id
    root = doc["units"][0]
    eng = root["children"][0]
    hum = root["children"][1]
    cs = eng["children"][0]
    teaching = cs["children"][0]["children"][0]
    cs101, cs102 = teaching["children"]
    eng["finance"] = ["fin"]
    cs["auditors"] = ["aud"]
    hum["admins"] = ["hadmin"]
    cs101["members"].append({"user": "ta1", "role": "ta"})
    cs102["members"].append({"user": "inst1", "role": "instructor"})
    for uid in ("hadmin", "inst1", "ta1", "fin", "aud"):
        doc["users"].append(
            {"id": uid, "email": f"{uid}@stateu.edu", "name": uid, "sso_subject": f"{uid}@stateu.edu"}
        )
    for key in doc["keys"]:
        key["key"] = f"{key['key']}-{inst_id}"  # key hashes are unique across institutions
    return doc


@dataclass
class Env:
    """One test's institution, its app and a signed-in client per person."""

    app: FastAPI
    inst: str
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    _n: int = 0

    @property
    def state(self) -> AdminState:
        state = self.app.state.eduaiq_admin
        assert isinstance(state, AdminState)
        return state

    @property
    def db(self) -> async_sessionmaker[AsyncSession]:
        return self.state.sessions

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}-{self._n}"

    def anonymous(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL)

    async def login(self, user: str) -> httpx.AsyncClient:
        """A browser signed in as `user` through /auth/dev/login, echoing the CSRF cookie as the SSO spec asks."""
        if user in self.clients:
            return self.clients[user]
        client = self.anonymous()
        response = await client.get("/auth/dev/login", params={"user": user, "institution": self.inst})
        assert response.status_code == 303, response.text
        client.headers["X-CSRF-Token"] = client.cookies["eduaiq_csrf"]
        self.clients[user] = client
        return client

    async def token_client(self, user: str, scopes: list[str]) -> httpx.AsyncClient:
        """A script holding a personal access token of `user` (created through the API, as a person would)."""
        browser = await self.login(user)
        created = await browser.post("/api/v1/tokens", json={"name": "automation", "scopes": scopes})
        assert created.status_code == 201, created.text
        client = self.anonymous()
        client.headers["Authorization"] = f"Bearer {created.json()['token']}"
        self.clients[f"{user}:pat:{','.join(scopes)}"] = client
        return client

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def import_institution(db: async_sessionmaker[AsyncSession], inst: str) -> None:
    org = parse_document(stateu_document(inst))
    async with db() as session, session.begin():
        await apply_org(session, org)


async def make_env(settings: Settings) -> Env:
    inst = f"su{uuid.uuid4().hex[:10]}"
    app = create_app(settings, dev_login=True)
    env = Env(app, inst)
    await import_institution(env.db, inst)
    async with env.db() as session:
        await env.state.quota.compile(await load_spec(session, inst))
    return env


async def drop_env(env: Env) -> None:
    await env.close()
    redis = env.state.redis
    keys = [k async for k in redis.scan_iter(match=f"eq:{{{env.inst}}}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.srem("eq:quota:institutions", env.inst)  # type: ignore[misc]
    await env.state.close()


@pytest.fixture
def settings(pg_url: str, redis_url: str) -> Settings:
    return Settings(database_url=pg_url, redis_url=redis_url, public_base_url=BASE_URL)


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    e = await make_env(settings)
    try:
        yield e
    finally:
        await drop_env(e)
