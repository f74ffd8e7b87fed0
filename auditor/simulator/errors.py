"""Bandwidth's error bodies (``voiceApiError``: type, description, id), pre-encoded."""

from __future__ import annotations

import orjson


def error_body(kind: str, description: str, error_id: str | None = None) -> bytes:
    return orjson.dumps({"type": kind, "description": description, "id": error_id})


UNAUTHORIZED = error_body("authentication-error", "The credentials provided were invalid")
FORBIDDEN = error_body("authorization-error", "Access is denied")
# Bandwidth's 429 body really says "call creation", even for reads, and uses "" for id.
TOO_MANY_REQUESTS = error_body("error", "Account call creation rate limit exceeded", "")
INTERNAL_ERROR = error_body("internal-error", "An unknown internal error occurred")
OVERLOADED = error_body("system-overloaded", "Managing too many concurrent calls")


def not_found(call_id: str) -> bytes:
    return error_body("validation", f"Call [{call_id}] not found")


def bad_request(description: str) -> bytes:
    return error_body("validation", description)


# The token endpoint speaks OAuth 2.0 (RFC 6749 §5.2), not the Voice API's error shape.
INVALID_CLIENT = orjson.dumps(
    {"error": "invalid_client", "error_description": "Client authentication failed"}
)
UNSUPPORTED_GRANT = orjson.dumps(
    {"error": "unsupported_grant_type", "error_description": "Only client_credentials is supported"}
)
