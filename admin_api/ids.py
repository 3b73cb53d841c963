"""Identifier shapes the API accepts, shared by bodies and path parameters.

The same patterns as the institution file (and within what quota accepts in
its Redis key names), so anything created through the API can be exported and
imported again, and no id can smuggle a separator into a Redis key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
KIND = r"^[a-z][a-z_\-]{0,31}$"
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"
PROVIDER_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"
TEXT = r"^[^\x00-\x1f\x7f]*$"  # free text: no control characters (PostgreSQL text refuses NUL)
OPAQUE_ID = r"^[A-Za-z0-9_\-]{1,32}$"

UnitId = Annotated[str, Path(pattern=SLUG, description="unit id")]
UserId = Annotated[str, Path(pattern=SLUG, description="user id")]
ExtraId = Annotated[str, Path(pattern=SLUG, description="extra id")]
ProviderId = Annotated[str, Path(pattern=PROVIDER_ID, description="provider id")]
ModelId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$", description="model id")]
KeyId = Annotated[str, Path(pattern=OPAQUE_ID, description="API key id")]
TokenId = Annotated[str, Path(pattern=OPAQUE_ID, description="personal access token id")]
