"""`data:` URLs as clients put images in chat messages."""

from __future__ import annotations

import base64
import binascii

from providers.errors import ImageTooLarge, MalformedImage


def split_data_url(url: str) -> tuple[str, str]:
    """`data:image/png;base64,AAAA` -> ("image/png", "AAAA") without decoding (translation only moves it)."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise MalformedImage("image data URL must look like data:image/<type>;base64,<data>")
    mime = head[5:-7] or "application/octet-stream"
    return mime, payload


def decode_data_url(url: str, max_bytes: int) -> tuple[str, bytes]:
    """Decode a base64 data URL, refusing payloads over `max_bytes` before decoding them."""
    mime, payload = split_data_url(url)
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageTooLarge(f"image is larger than the {max_bytes} byte limit")
    try:
        return mime, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedImage("image data URL is not valid base64") from None
