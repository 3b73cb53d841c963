"""Typed errors the gateway maps onto HTTP answers.

Each carries the HTTP status the gateway should answer with, so the gateway
never has to guess from an exception's class name.
"""

from __future__ import annotations

from dataclasses import dataclass


class ProviderError(Exception):
    """Base of everything `providers` raises on purpose."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ProviderError):
    """The `providers:` section breaks a rule; `problems` lists each one by its path in the file."""

    status = 400

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ModelNotFound(ProviderError):
    """No deployment serves this model id (the gateway answers 404 `model_not_found`)."""

    status = 404

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model '{model_id}' does not exist")
        self.model_id = model_id


class InvalidRequest(ProviderError):
    """The request cannot be sent to this model as it is (the gateway answers 400)."""

    status = 400


class UnsupportedEndpoint(InvalidRequest):
    """The model's provider cannot serve this endpoint (e.g. embeddings on Anthropic)."""


class RetryableUpstreamError(ProviderError):
    """A failure in the upstream answer that is safe to retry elsewhere if no byte went out yet
    (e.g. an `overloaded_error` event arriving inside Anthropic's 200 stream)."""

    status = 502


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed try at one deployment, kept so logs and errors can say what happened."""

    deployment_id: str
    reason: str
    status: int | None = None


class UpstreamUnavailable(ProviderError):
    """Every deployment in the fallback chain failed before the first byte.

    `status` is 502 (connect errors / 5xx), 503 (breakers open, rate limited)
    or 504 (timeouts); `attempts` says what was tried.
    """

    def __init__(self, status: int, message: str, attempts: tuple[Attempt, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class UpstreamStreamError(ProviderError):
    """The upstream broke after the first byte reached the caller: too late to fall back."""

    status = 502


class ImageError(ProviderError):
    """An image part the gateway must refuse with 400."""

    status = 400


class MalformedImage(ImageError):
    pass


class ImageTooLarge(ImageError):
    pass
