"""Real identity providers on loopback for the SSO tests: saml-idp and oidc-provider (npm), django-cas-server.

The npm packages are installed by the tests themselves, outside the repository,
in ~/.cache/eduaiq-test-idp/<name>-<hash of package.json>/ (override with
EDUAIQ_TEST_IDP_CACHE), so a second run starts in a second. The only reason to
skip is a machine without node/npm; a failing `npm install` fails the tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli.services.process import Child, free_port, spawn, wait_for_port

IDP_DIR = Path(__file__).with_name("idp")
CACHE = Path(os.environ.get("EDUAIQ_TEST_IDP_CACHE", Path.home() / ".cache" / "eduaiq-test-idp"))


def node_project(name: str) -> Path:
    """The IdP's directory in the cache, with node_modules installed and the scripts copied fresh."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are required for the SAML/OIDC identity providers and are not installed")
    src = IDP_DIR / name
    package = (src / "package.json").read_bytes()
    dest = CACHE / f"{name}-{hashlib.sha256(package).hexdigest()[:16]}"
    dest.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs: one installs, the others wait and reuse
        marker = dest / ".installed"
        if not marker.exists():
            (dest / "package.json").write_bytes(package)
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"],
                cwd=dest, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"npm install for {name} failed:\n{done.stdout}\n{done.stderr}")
            marker.write_text("ok\n")
    for script in src.iterdir():
        if script.suffix in (".js", ".mjs"):
            shutil.copyfile(script, dest / script.name)
    return dest


def _start(name: str, argv: list[str], log: Path, port: int, env: dict[str, str] | None = None) -> Child:
    proc = spawn(name, argv, log, env={**os.environ, **(env or {})})
    child = Child(name=name, proc=proc, host="127.0.0.1", port=port, log=log)
    try:
        wait_for_port("127.0.0.1", port, 60, proc)
    except Exception:
        child.stop()
        raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-4000:]}") from None
    return child


@dataclass
class SamlIdP:
    child: Child
    url: str
    entity_id: str
    key_pem: str
    cert_pem: str
    institution: str


def start_saml_idp(
    workdir: Path,
    institution: str,
    sp: str,
    key_pem: str,
    cert_pem: str,
    entity_id: str = "urn:eduaiq:test:idp",
) -> SamlIdP:
    project = node_project("saml")
    port = free_port()
    base = f"{sp}/auth/saml/{institution}"
    options = {
        "host": "127.0.0.1", "port": port, "cert": cert_pem, "key": key_pem, "issuer": entity_id,
        "acsUrl": f"{base}/acs", "sloUrl": f"{base}/slo", "audience": f"{base}/metadata",
        "serviceProviderId": f"{base}/metadata",
    }  # fmt: skip
    child = _start(
        "saml-idp", ["node", str(project / "server.js"), json.dumps(options)], workdir / "saml.log", port
    )
    return SamlIdP(child, f"http://127.0.0.1:{port}", entity_id, key_pem, cert_pem, institution)


@dataclass
class OidcOP:
    child: Child
    issuer: str
    accounts_file: Path
    secrets: dict[str, str] = field(default_factory=dict)

    def add_account(self, account_id: str, claims: dict[str, object]) -> None:
        accounts = json.loads(self.accounts_file.read_text())
        accounts[account_id] = claims
        tmp = self.accounts_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(accounts))
        tmp.replace(self.accounts_file)


def start_oidc_op(workdir: Path, sp: str, clients: dict[str, list[str]], rogue_client: str) -> OidcOP:
    """`clients`: client id -> institutions whose callback it may redirect to."""
    project = node_project("oidc")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    accounts = workdir / "oidc-accounts.json"
    accounts.write_text("{}")
    client_secrets = {cid: hashlib.sha256(f"secret-{cid}-{port}".encode()).hexdigest() for cid in clients}
    conf = {
        "port": port,
        "issuer": issuer,
        "accounts_file": str(accounts),
        "rogue_audience_client": rogue_client,
        "clients": [
            {"client_id": cid, "client_secret": client_secrets[cid], "grant_types": ["authorization_code"],
             "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic",
             "redirect_uris": [f"{sp}/auth/oidc/{inst}/callback" for inst in insts]}
            for cid, insts in clients.items()
        ],
    }  # fmt: skip
    conf_file = workdir / "oidc-conf.json"
    conf_file.write_text(json.dumps(conf))
    child = _start("oidc-provider", ["node", str(project / "server.mjs"), str(conf_file)],
                   workdir / "oidc.log", port)  # fmt: skip
    return OidcOP(child, issuer, accounts, client_secrets)


@dataclass
class CasServer:
    child: Child
    url: str  # the CAS base, ending in /cas/
    users_file: Path

    def add_user(self, username: str, password: str, attributes: dict[str, object]) -> None:
        users = json.loads(self.users_file.read_text())
        users[username] = {"password": password, **attributes}
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self.users_file)


def start_cas_server(workdir: Path, service_pattern: str) -> CasServer:
    project = IDP_DIR / "cas"
    state = workdir / "cas"
    state.mkdir(parents=True, exist_ok=True)
    users = state / "users.json"
    users.write_text("{}")
    env = {**os.environ, "EDUAIQ_CAS_STATE": str(state), "EDUAIQ_CAS_USERS": str(users)}
    manage = [sys.executable, str(project / "manage.py")]
    for step in (["migrate", "--noinput"], ["eduaiq_service", service_pattern]):
        done = subprocess.run(
            [*manage, *step], cwd=project, env=env, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"CAS server setup {step[0]} failed:\n{done.stdout}\n{done.stderr}")
    port = free_port()
    child = _start("cas-server", [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
                   workdir / "cas.log", port, env={"EDUAIQ_CAS_STATE": str(state),
                                                   "EDUAIQ_CAS_USERS": str(users)})  # fmt: skip
    return CasServer(child, f"http://127.0.0.1:{port}/cas/", users)
