"""API keys and tokens: generated with enough entropy, stored only as SHA-256.

A fast hash is right here (unlike passwords): keys are 32 random bytes, so no
dictionary attack applies, and the gateway must look one up per request.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-eduaiq-"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str = KEY_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def new_id() -> str:
    return secrets.token_hex(8)
