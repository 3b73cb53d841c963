"""Load the Lua scripts beside this module and run them by SHA (EVALSHA).

Each script file is prefixed with ``lua/common.lua`` (the waterfall and the
counter helpers) so the rules live in one Lua file, like they live in one
Python module (quota/waterfall.py). A server that does not know a script yet
(restart, failover, SCRIPT FLUSH) answers NOSCRIPT; the caller loads it and
retries once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str


@cache
def script(name: str) -> Script:
    lua = resources.files("quota") / "lua"
    source = (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


NAMES = ("ops", "compile", "rebuild", "unsettled")


def is_noscript(err: object) -> bool:
    return isinstance(err, NoScriptError) or (
        isinstance(err, ResponseError) and str(err).startswith("NOSCRIPT")
    )


async def load_all(redis: Redis) -> None:
    for name in NAMES:
        s = script(name)
        loaded = await redis.script_load(s.source)
        if loaded != s.sha:
            raise RuntimeError(f"Redis computed another SHA for {name}.lua")


async def run(redis: Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA outside the hot path (compile, rebuild, sweep, release)."""
    s = script(name)
    try:
        return await redis.evalsha(s.sha, len(keys), *keys, *args)
    except ResponseError as err:
        if not is_noscript(err):
            raise
    await redis.script_load(s.source)
    return await redis.evalsha(s.sha, len(keys), *keys, *args)
