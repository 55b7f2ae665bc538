"""The token endpoint's address, and its errors in the OAuth 2.0 shape (RFC 6749 §5.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emr_hub.hub import Hub

TOKEN_PATH = "/auth/token"  # noqa: S105 - a URL path, not a secret

INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
INVALID_SCOPE = "invalid_scope"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
SERVER_ERROR = "server_error"
THROTTLED = "temporarily_unavailable"
"""The error of a request refused (429) because of earlier failures."""


class OAuthError(Exception):
    """An error of the token endpoint: ``{"error", "error_description"}`` with its status.

    ``retry_after`` (seconds) goes with a 429. The description tells the client what to fix;
    it never repeats the credentials or the assertion.
    """

    def __init__(
        self,
        error: str,
        description: str | None = None,
        status: int = 400,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(description or error)
        self.error = error
        self.description = description
        self.status = status
        self.retry_after = retry_after

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


def invalid_client(description: str) -> OAuthError:
    """Client authentication failed (401, RFC 6749 §5.2)."""
    return OAuthError(INVALID_CLIENT, description, status=401)


def token_url(hub: Hub) -> str:
    """The token endpoint's URL: what client assertions name as their ``aud``."""
    return hub.settings.base_url.rstrip("/") + TOKEN_PATH
