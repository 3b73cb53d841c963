"""What of a model server's refusal a student may see.

A 4xx from the upstream is usually the student's own doing (a prompt longer
than the context, a bad parameter) and its message is the useful answer, so it
is passed on. But the body is written by whatever server the provider points
at, and raw bodies carried internal host names and ports, addresses, URLs and
keys back to students (issue 17 items 1 and 9). So the rule is: only the
OpenAI-shaped error's `message` (and a short `type`/`code`) goes back, with
URLs, host names, host:port pairs, IP addresses, bearer tokens, `sk-` and
Google style keys and every secret the gateway sends that provider (its key,
its `env:` headers) cut out, at most 500 characters; a body that is not
an OpenAI error becomes a plain sentence with the status. The raw body goes to
the gateway's log, where operators look. 5xx and 429 never reach students at
all: the router falls back and the gateway answers with its own sentence. An
error event in the middle of a stream (vLLM sends one when a worker fails)
keeps only its short `type`/`code`: its message is replaced by a sentence.
"""

from __future__ import annotations

import re

import orjson

from providers.sse import event_json

MAX_MESSAGE = 500
# Each pattern starts only where a run of its characters starts (the lookbehinds) and takes runs whole
# (possessive): without both, a 1,000-character `a.a.a...` cost milliseconds per pattern, a 64 KB one minutes.
_URL = re.compile(r"(?<![a-z0-9+.\-])[a-z][a-z0-9+.\-]*+://[^\s\"'<>]*+", re.IGNORECASE)
_BEARER = re.compile(r"\b(bearer|basic|token)\s+[^\s\"',]+", re.IGNORECASE)
_KEYLIKE = re.compile(r"\b(sk|pk|rk|key|hf|gsk|xai|ghp|github_pat)[-_][A-Za-z0-9_\-*.]{6,}", re.IGNORECASE)
_GOOGLE_KEY = re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}")
_IPV6 = re.compile(
    r"\[?(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])\]?(?::\d{1,5})?", re.IGNORECASE
)
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b")
_HOST_PORT = re.compile(r"(?<![a-z0-9.\-])[a-z0-9][a-z0-9\-]*+(?:\.[a-z0-9\-]++)*+:\d{1,5}\b", re.IGNORECASE)
# A host name without a port: three or more labels ending in a letter label (vllm-0.gpu.svc.cluster.local,
# api.example.com), or two whose last is an internal suffix (gpu01.internal). Model names and versions
# (Qwen2.5-7B, v0.6.3) have fewer labels or end in digits. Dotted words are found by one possessive pattern
# (no backtracking) and judged in Python.
_DOTTED = re.compile(r"(?<![a-z0-9.\-])[a-z0-9][a-z0-9\-]*+(?:\.[a-z0-9\-]++)++", re.IGNORECASE)
_INTERNAL = frozenset(("local", "internal", "lan", "corp", "intra", "intranet", "localdomain", "cluster", "svc",
                       "pod", "home"))  # fmt: skip
_TLD = re.compile(r"[a-z](?:[a-z0-9\-]*[a-z])?", re.IGNORECASE)


def _host(m: re.Match[str]) -> str:
    labels = m.group(0).split(".")
    last = labels[-1]
    if (len(labels) >= 3 and _TLD.fullmatch(last)) or (len(labels) == 2 and last.lower() in _INTERNAL):
        return "[host]"
    return m.group(0)


_SHORT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


# The patterns below backtrack: over a hostile 64 KB message (`a.a.a...1`) they took minutes on the event
# loop. Only the first MAX_MESSAGE characters are kept, so they run over a bounded prefix: twice that, so a
# pattern cut at the boundary still matches what the student sees.
_SCAN = 2 * MAX_MESSAGE


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without URLs, addresses, host:port pairs, tokens or any of `secrets`."""
    for secret in secrets:  # over the whole text first (plain replace, linear): a secret cut in two by
        if secret:  # the prefix below would leave a piece of itself behind
            text = text.replace(secret, "[redacted]")
    text = text[:_SCAN]
    text = _URL.sub("[url]", text)
    text = _BEARER.sub(r"\1 [redacted]", text)
    text = _KEYLIKE.sub("[redacted]", text)
    text = _GOOGLE_KEY.sub("[redacted]", text)
    text = _IPV6.sub("[address]", text)
    text = _IPV4.sub("[address]", text)
    text = _HOST_PORT.sub("[address]", text)
    text = _DOTTED.sub(_host, text)
    return text[:MAX_MESSAGE]


def _short(value: object) -> str | None:
    return value if isinstance(value, str) and _SHORT.match(value) else None


def public_error(status: int, body: bytes, secrets: tuple[str, ...] = ()) -> bytes:
    """An OpenAI-shaped error body safe to show the student, built from the (translated) upstream body."""
    message = None
    etype = code = param = None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        message = scrub(err["message"], secrets).strip()
        etype, code, param = _short(err.get("type")), _short(err.get("code")), _short(err.get("param"))
    elif isinstance(err, str):  # some servers answer {"error": "..."}
        message = scrub(err, secrets).strip()
    if not message:
        message = f"the model's server refused the request (HTTP {status})"
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": etype or "invalid_request_error",
                "param": param,
                "code": code,
            }
        }
    )


STREAM_ERROR_MESSAGE = "the model's server reported an error mid-answer; please retry"


def public_stream_error(event: bytes) -> bytes:
    """An SSE event (without its blank line) with an `error` object replaced by one a student may see;
    any other event comes back as it was. The original goes to the log (the caller's)."""
    found = event_json(event)
    if found is None:
        return event
    start, doc = found
    # An error event has an error and no answer: `"error": null` beside choices is an ordinary chunk.
    if not isinstance(doc, dict) or not doc.get("error") or doc.get("choices"):
        return event
    err = doc["error"] if isinstance(doc["error"], dict) else {}
    clean = {"message": STREAM_ERROR_MESSAGE, "type": _short(err.get("type")) or "upstream_error",
             "param": None, "code": _short(err.get("code"))}  # fmt: skip
    return event[:start] + orjson.dumps({"error": clean})
