"""The error hierarchy of supportbot.

Every error says what was expected, what was found and how to fix it, so that the CLI and
the HTTP layer can show it to a person as it is.
"""

from __future__ import annotations


class SupportbotError(Exception):
    """Base class of every error supportbot raises on purpose."""


class ConfigurationError(SupportbotError):
    """A setting, flag or path is missing or has a value that cannot work."""


class ModelNotFoundError(SupportbotError):
    """A model directory, version or task does not exist where it was looked for."""


class RegistryError(SupportbotError):
    """The model registry refused a change (unknown version, nothing to roll back, busy)."""


class NotFoundError(SupportbotError):
    """A conversation, message or escalation id does not exist."""


class ConflictError(SupportbotError):
    """The change clashes with the current state (e.g. another agent claimed the conversation)."""


class StoreUnavailableError(SupportbotError):
    """The database cannot be reached; the request may be retried."""


class BadRequestError(SupportbotError):
    """A request payload is malformed or out of bounds; the message says what to send."""


class UnauthorizedError(SupportbotError):
    """The request needs a signed-in console session (or the name or password was wrong)."""


class ForbiddenError(SupportbotError):
    """Signed in, but not allowed: wrong role, missing CSRF token or a foreign origin."""


class RateLimitedError(SupportbotError):
    """Too many attempts; `retry_after` says how many seconds to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
