"""All configuration, read once from `EDUAIQ_*` environment variables.

One pydantic-settings class so every process (gateway, admin API, consumer,
worker, CLI) reads the same names, and the Helm chart can be checked against
them. Secrets (provider keys, session secret) come only from the environment.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.declared import parse_networks, parse_secret_vars

_PG_URL = re.compile(r"^postgres(ql)?://[^/\s]+/[^/\s?]+(\?.*)?$")
_REDIS_URL = re.compile(r"^rediss?://[^/\s]+(/\d+)?$")
_BOOTSTRAP = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d+(,[A-Za-z0-9_.\-\[\]:]+:\d+)*$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDUAIQ_", extra="ignore")

    # Defaults are where `eduaiq dev` starts its embedded servers, so every other command run beside it
    # (org import, export, quota check) reaches the same ones with no configuration at all.
    database_url: str = "postgresql://eduaiq@127.0.0.1:54320/eduaiq"
    redis_url: str = "redis://127.0.0.1:63790/0"
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_topic: str = "eduaiq.usage.v1"
    # Distinct per deployment when several share one Kafka cluster (each must write its own ledger).
    kafka_consumer_group: str = "eduaiq-ledger"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None

    state_dir: Path = Path.home() / ".eduaiq"
    spool_dir: Path | None = None
    # The usage pipeline's bounds (usage/producer.py, usage/spool.py, usage/sidecar.py): the spool's size on
    # disk (the chart's emptyDir sizeLimit is set above it, so the spool refuses before the pod is
    # evicted), the events a sidecar holds in memory, and the events a gateway process holds for a sidecar
    # that is busy or being restarted. Past any of them the gateway answers new /v1 requests 503 (never
    # serving unmetered) and /readyz turns not-ready; nothing already accepted is dropped.
    spool_max_bytes: int = Field(default=1024 * 1024 * 1024, ge=64 * 1024)
    usage_queue_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    usage_buffer_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    # How long the ledger consumer retries a dead-letter send before it stops (uncommitted, nothing lost).
    dead_letter_send_seconds: float = Field(default=60.0, gt=0)
    # redis-py's defaults wait for ever on a read and on a connect: a Redis that stops answering would
    # hold every request. Seconds; applied to every Redis client the gateway and the engine make.
    redis_socket_timeout: float = Field(default=5.0, gt=0)
    redis_connect_timeout: float = Field(default=2.0, gt=0)
    public_base_url: str = "http://127.0.0.1:8000"
    session_secret: str | None = None

    reservation_ttl_seconds: int = Field(default=600, ge=5)
    # Concurrency limits and fair-queue slots are leases of this many seconds, renewed while a request is in
    # progress: a killed gateway's requests stop counting within one lease.
    limit_lease_seconds: int = Field(default=30, ge=3, le=600)
    min_clamp_tokens: int = Field(default=16, ge=1)
    key_cache_seconds: float = Field(default=2.0, ge=0, le=5)
    # How long a key keeps working after its membership's end (a term's last day: time to fetch a last
    # answer is not worth a course's worth of access). 0: it stops at the end. A deprovisioned person
    # gets no grace.
    membership_grace_seconds: int = Field(default=0, ge=0, le=90 * 86400)
    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_read_timeout: float = Field(default=300.0, gt=0)
    # What institution admins' provider entries may make the gateway read and reach (providers/
    # upstream_policy.py): the variables holding provider secrets, each `[institution:]NAME[*][@host]`
    # (scoped to one institution's providers, unscoped for any institution's; bound to one host, or any;
    # never EDUAIQ_*, PG*, REDIS*, KAFKA*), and the non-public networks and host names upstreams may be on
    # (loopback, private and link-local addresses are refused otherwise). Comma-separated.
    provider_secret_vars: str = ""
    upstream_allowed_cidrs: str = ""
    upstream_allowed_hosts: str = ""
    # The same for institutions' sign-in settings (admin_api/sso/sso_secrets.py): the variables an `sso:`
    # section may name for its OIDC client secret or SAML SP key, same grammar, `@host` binding an OIDC
    # secret to the token endpoint's host (a SAML key to the IdP's hosts). IdPs are reached under the
    # upstream address policy above; each IdP answer is capped at this many bytes and each exchange with an
    # IdP (connect, send, read all) at this many seconds, so a slow or huge IdP cannot hold a sign-in open.
    sso_secret_vars: str = ""
    sso_idp_max_response_bytes: int = Field(default=1024 * 1024, ge=1024)
    sso_idp_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # The upstream pool's bounds (providers/http.py): open connections per upstream host (callers wait for
    # one), a non-stream answer's bytes, one server-sent event's bytes and a whole stream's bytes.
    upstream_max_connections_per_host: int = Field(default=512, ge=1)
    upstream_max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    upstream_max_event_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    upstream_max_stream_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # Whole (non-stream) answers one gateway process holds at once, together (each is capped above).
    upstream_max_buffered_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    # After SIGTERM the gateway stops accepting and lets requests in flight finish for this long, streams
    # included (a student's answer is not cut by a rolling update); a second SIGTERM or Ctrl-C cuts them.
    shutdown_grace_seconds: float = Field(default=300.0, ge=0)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Completions one request may ask for (completions: prompts x max(n, best_of); chat: n); each is
    # reserved whole, and beyond this the request is refused with a 400 naming the field.
    max_choices: int = Field(default=128, ge=1)
    # Texts up to this many bytes are counted with a tokenizer (in a thread of its own) when a provider
    # reported no usage; longer ones are charged their byte count, which never undercounts.
    token_count_max_bytes: int = Field(default=256 * 1024, ge=0)
    # Longest life of a personal access token (admin API automation): a leaked token stops working by
    # itself. Creation refuses a later expiry; older tokens without one expire this long after creation.
    pat_max_days: int = Field(default=90, ge=1, le=3660)
    # What an unauthenticated client can make one server process hold (gateway/server.py `Limits`; the
    # quick start's one-origin server applies the same): the head's bytes (the request line, and each
    # header value too) and header lines (431), seconds for the head and for the body, neither restarting
    # with each byte (408), bytes read ahead behind a request being answered (reading pauses), request
    # bytes held before the app has them (heads too; 503), requests in progress (503) and open connections
    # (503), per worker.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_header_count: int = Field(default=100, ge=10)
    header_timeout_seconds: float = Field(default=20.0, gt=0)
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    max_connection_buffer_bytes: int = Field(default=1024 * 1024, ge=0)
    max_worker_buffer_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    max_concurrent_requests: int = Field(default=1000, ge=1)
    # Open connections per worker: each costs a file descriptor and memory before it sends a byte (and its
    # unfinished head counts in max_worker_buffer_bytes); beyond it a new one gets 503 with Retry-After
    # before any request and is closed. 4096: about four times max_concurrent_requests, room for idle
    # keep-alive clients; a worker uses at most half its file descriptor limit (the rest is for upstream
    # connections and the data stores).
    max_connections: int = Field(default=4096, ge=1)

    @field_validator("provider_secret_vars")
    @classmethod
    def _secret_vars(cls, v: str) -> str:
        parse_secret_vars(v)
        return v

    @field_validator("sso_secret_vars")
    @classmethod
    def _sso_secret_vars(cls, v: str) -> str:
        parse_secret_vars(v, holds="SSO secrets (OIDC client secrets, SAML SP keys)")
        return v

    @field_validator("upstream_allowed_cidrs")
    @classmethod
    def _cidrs(cls, v: str) -> str:
        parse_networks(v)
        return v

    @field_validator("database_url")
    @classmethod
    def _pg(cls, v: str) -> str:
        if not _PG_URL.match(v):
            raise ValueError("must look like postgresql://user@host:port/dbname")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        if not _REDIS_URL.match(v):
            raise ValueError("must look like redis://host:port/db")
        return v

    @field_validator("kafka_bootstrap")
    @classmethod
    def _kafka(cls, v: str) -> str:
        if not _BOOTSTRAP.match(v):
            raise ValueError("must look like host:port[,host:port]")
        return v

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or (self.state_dir / "spool")

    def redis_options(self) -> dict[str, float]:
        """Keyword arguments for every redis-py client and pool (`from_url(url, **settings.redis_options())`)."""
        return {
            "socket_timeout": self.redis_socket_timeout,
            "socket_connect_timeout": self.redis_connect_timeout,
        }


class SettingsError(Exception):
    """A bad `EDUAIQ_*` value, already phrased as the one line an operator reads."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "EDUAIQ_" + str(first["loc"][0]).upper() if first["loc"] else "EDUAIQ_*"
        raise SettingsError(f"bad setting {name}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
