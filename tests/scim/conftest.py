"""A real EduAiQ web server (`eduaiq serve --dev-login`: the admin API with /scim/v2, and /v1) on its own
database with two institutions, each with a SCIM token made by `eduaiq scim token create` (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.services.process import die_with_parent, free_port, wait_for_port
from tests.gateway.harness import _wait_ready, org_doc

SCIM_SECTION = {
    "groups": [
        {"match": "eduaiq-course-(?P<unit>[a-z0-9-]+)-students", "role": "student"},
        {"match": r"uni:courses:(?P<unit>[a-z0-9-]+):students", "role": "student"},
        {"display_name": "CS Staff", "unit": "cs", "role": "instructor"},
        {"display_name": "CS Finance", "unit": "cs", "admin_role": "finance"},
    ]
}


@dataclass
class Server:
    url: str
    env: dict[str, str]
    institutions: list[str]
    tokens: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], env=self.env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    def scim(self, institution: str, token: str | None = None) -> httpx.Client:
        secret = token if token is not None else self.tokens[institution]
        return httpx.Client(base_url=f"{self.url}/scim/v2", timeout=30,
                            headers={"Authorization": f"Bearer {secret}"} if secret else {})  # fmt: skip

    def new_token(self, institution: str) -> str:
        done = self.cli("scim", "token", "create", "--institution", institution)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def browser(self, institution: str, user: str) -> httpx.Client:
        """A person signed in to the admin API (dev sign-in), sending the CSRF header."""
        client = httpx.Client(base_url=self.url, timeout=30)
        signed_in = client.get("/auth/dev/login", params={"user": user, "institution": institution})
        assert signed_in.status_code == 303, signed_in.text
        client.headers["X-CSRF-Token"] = client.cookies["eduaiq_csrf"]
        return client

    def write_org(self, institution: str, mutate: Any = None) -> Path:
        def change(doc: dict[str, Any]) -> None:
            doc["units"][0]["id"] = institution
            doc["scim"] = SCIM_SECTION
            if mutate is not None:
                mutate(doc)

        path = Path(self.env["EDUAIQ_STATE_DIR"]) / f"{institution}.yaml"
        path.write_text(yaml.safe_dump(org_doc(institution, "http://127.0.0.1:9/v1", change)))
        return path


def start_server(env: dict[str, str], tmp: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    log = tmp / f"serve-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--dev-login", "--port", str(port)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent)  # fmt: skip
    wait_for_port("127.0.0.1", port, 60, proc)
    _wait_ready(f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def server(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    from tests.conftest import _drop_database, make_database

    tmp = tmp_path_factory.mktemp("scim")
    db_url = make_database(pg_server_url)
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "EDUAIQ_DATABASE_URL": db_url,
        "EDUAIQ_REDIS_URL": redis_url,
        "EDUAIQ_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "EDUAIQ_KAFKA_TOPIC": f"usage-scim{tag}",
        "EDUAIQ_STATE_DIR": str(tmp),
        "EDUAIQ_UPSTREAM_ALLOWED_CIDRS": "127.0.0.0/8,::1/128",
    }
    srv = Server("", env, [f"sa{tag}", f"sb{tag}"])
    try:
        for inst in srv.institutions:
            done = srv.cli("org", "import", str(srv.write_org(inst)))
            assert done.returncode == 0, done.stderr
            srv.tokens[inst] = srv.new_token(inst)
        srv.url, proc = start_server(env, tmp)
        srv.procs.append(proc)
        yield srv
    finally:
        for proc in srv.procs:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        _drop_database(pg_server_url, db_url.rsplit("/", 1)[1])
