"""Errors raised by the Fusion client."""

from __future__ import annotations

__all__ = ["FusionAPIError", "FusionClientError", "FusionConnectionError"]


class FusionClientError(Exception):
    """Base of every error the Fusion client raises."""


class FusionAPIError(FusionClientError):
    """The server answered with an error status (>= 400), or an unreadable body.

    ``status`` is the HTTP status; ``message`` the server's reason (from the
    envelope, or the plain-text body older servers send for 401/403).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def is_auth_error(self) -> bool:
        """True for 401 (not logged in) and 403 (not allowed)."""
        return self.status in (401, 403)


class FusionConnectionError(FusionClientError):
    """The server could not be reached: refused, reset, timed out, or TLS refused."""
