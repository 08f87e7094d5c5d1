"""The socket every example in this package serves, and the demo users they share.

On connect, ``Chat`` says who the socket is: ``{"type": "hello", "user", "id", "groups"}``,
and joins the user's groups. A text frame ``{"group": name, "text": ...}`` goes to one of the
sender's own groups (not back to the sending socket), ``{"to": user_id, "text": ...}`` to every
socket of one user; recipients get ``{"type": "group" | "direct", "from", "text", ...}``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from asgi_groups import InMemoryUsers, SimpleUser, WsView
from asgi_groups.types import Receive, Scope, Send

#: The demo accounts: name → (password, groups). Each app keeps them in its own user store.
DEMO_USERS: dict[str, tuple[str, frozenset[str]]] = {
    "greg": ("greg-password", frozenset({"boys", "staff"})),
    "amanda": ("amanda-password", frozenset({"girls", "staff"})),
}


def check_password(username: str, password: str) -> bool:
    """Whether ``password`` is the demo user's (a real app compares password hashes)."""
    known = DEMO_USERS.get(username)
    expected = known[0] if known is not None else "\0"
    return hmac.compare_digest(expected.encode(), password.encode()) and known is not None


def demo_store(session_key: str) -> InMemoryUsers:
    """The demo users as a user loader: ``session[session_key]`` is the username."""
    users = [SimpleUser(name, name, groups) for name, (_, groups) in DEMO_USERS.items()]
    return InMemoryUsers(users, session_key=session_key)


class Chat(WsView):
    """Logged-in users only (an anonymous socket is refused with HTTP 403)."""

    login_required = True
    accepts = "text"

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        user = self.user
        await self.send_json(
            {
                "type": "hello",
                "user": user.username,
                "id": str(user.id),
                "groups": sorted(user.groups),
            }
        )

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body: Any = json.loads(self.kwargs["text"])
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await self.send_json({"type": "error", "error": "expected a JSON object"})
            return
        user = self.user
        text = body.get("text")
        group = body.get("group")
        if isinstance(group, str):
            if group not in user.groups:
                await self.send_json({"type": "error", "error": f"not a member of {group!r}"})
                return
            message = {"type": "group", "group": group, "from": user.username, "text": text}
            await self.registry.send_group(group, message, exclude=self.connection)
        elif body.get("to") is not None:
            message = {"type": "direct", "from": user.username, "text": text}
            await self.registry.send_user(str(body["to"]), message)
        else:
            await self.send_json({"type": "error", "error": "say 'group' or 'to'"})
