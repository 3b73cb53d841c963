"""RESP encoding of script arguments, done once per piece and reused.

redis-py encodes every argument of every command generically; for the quota
hot path (about forty arguments per operation, most of them the same path
for every request of a unit) that was the largest client-side cost, so
prepared paths keep their arguments pre-encoded and only the few values that
change per request are encoded here.
"""

from __future__ import annotations

from collections.abc import Iterable

Bulk = bytes | str | int


def bulk(v: Bulk) -> bytes:
    """One RESP bulk string."""
    b: bytes
    if type(v) is int:
        b = b"%d" % v
    elif type(v) is str:
        b = v.encode()
    elif isinstance(v, bytes):
        b = v
    elif isinstance(v, int):  # bool and other int subclasses: their number
        b = b"%d" % int(v)
    else:
        b = str(v).encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


def bulks(values: Iterable[Bulk]) -> bytes:
    return b"".join([bulk(v) for v in values])
