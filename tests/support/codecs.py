"""Session codecs for tests that are not about signing (signed codecs have their own tests)."""

from __future__ import annotations

from typing import Any


class PlainCookie:
    """A stand-in codec: the cookie value is the user id (signed codecs are tested elsewhere)."""

    cookie_name = "session"

    def decode(self, value: str) -> dict[str, Any] | None:
        return {"user_id": value} if value.isdigit() else None

    def encode(self, session: dict[str, Any]) -> str:
        return str(session["user_id"])
