"""Django Channels in the chat benchmarks (storm, rooms), written as its docs show.

``AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(...)))``: the session cookie is
read from Django's database session store and the user from ``django.contrib.auth`` (SQLite,
one file per server). Users are created and logged in (one database session each, as
``django.contrib.auth.login`` writes it) before the server listens; the logins are the
``sessionid`` cookies. An ``AsyncWebsocketConsumer`` refuses anonymous users, joins the user's
rooms and a per-user group (``user.<name>``, for direct messages), and when ``presence`` is on
``group_send``s a presence event to each room on connect and disconnect. Inbound frames are the
asgi_groups messaging protocol's ``Group`` / ``Direct`` JSON; each delivered event becomes one
JSON text frame. The layer is ``memory``, ``redis`` or ``pubsub`` (see ``channels_app``).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .channels_app import configure

if TYPE_CHECKING:
    from ..chat import Options, Person

BACKEND = "django.contrib.auth.backends.ModelBackend"


def setup(people: list[Person], layer: str, redis_url: str | None, db: str) -> dict[int, str]:
    """Django configured, its tables created, the users stored and logged in: the cookies."""
    configure(
        layer,
        redis_url,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "channels",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db}},
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        # the users' password hashes are made once, outside the measurement: a fast hasher
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.core.management import call_command
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    call_command("migrate", verbosity=0, interactive=False)
    password = make_password("benchmark")
    users = [User(id=p.id, username=p.name, password=password) for p in people]
    User.objects.bulk_create(users, batch_size=500)
    store, expires = SessionStore(), timezone.now() + timedelta(days=1)
    sessions, cookies = [], {}
    for user in users:
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: BACKEND,
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(
            Session(session_key=key, session_data=store.encode(data), expire_date=expires)
        )
        cookies[user.pk] = f"sessionid={key}"
    Session.objects.bulk_create(sessions, batch_size=500)
    return cookies


def create(
    people: list[Person], options: Options, layer: str, redis_url: str | None, db: str
) -> tuple[Any, dict[int, str]]:
    cookies = setup(people, layer, redis_url, db)
    from channels.auth import AuthMiddlewareStack
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator
    from django.urls import path

    rooms_of = {p.name: p.groups for p in people}

    class ChatConsumer(AsyncWebsocketConsumer):
        name = ""
        rooms: frozenset[str] = frozenset()

        async def connect(self) -> None:
            user = self.scope["user"]
            if not user.is_authenticated:
                await self.close()
                return
            self.name = user.username
            self.rooms = rooms_of.get(self.name, frozenset())
            for group in (*self.rooms, f"user.{self.name}"):
                await self.channel_layer.group_add(group, self.channel_name)
            await self.accept()
            await self.announce(online=True)

        async def disconnect(self, code: int) -> None:
            if not self.name:
                return
            await self.announce(online=False)
            for group in (*self.rooms, f"user.{self.name}"):
                await self.channel_layer.group_discard(group, self.channel_name)

        async def announce(self, *, online: bool) -> None:
            if options.presence:
                for group in self.rooms:
                    event = {"type": "presence", "group": group, "user": self.name}
                    await self.channel_layer.group_send(group, event | {"online": online})

        async def receive(self, text_data: str | None = None, bytes_data: Any = None) -> None:
            try:
                message = json.loads(text_data or "")
                kind, text = message["type"], str(message["text"])
            except (ValueError, KeyError, TypeError):
                await self.refuse("bad_message")
                return
            if kind == "Group":
                group = message.get("group")
                if group not in self.rooms:
                    await self.refuse("forbidden")
                    return
                event = {"type": "chat.message", "kind": "group", "group": group}
                await self.channel_layer.group_send(group, event | self.said(text))
            elif kind == "Direct":
                target = message.get("user_name")
                if target not in rooms_of:
                    await self.refuse("unknown_user")
                    return
                event = {"type": "chat.message", "kind": "direct", "to": target} | self.said(text)
                await self.channel_layer.group_send(f"user.{target}", event)
                if options.echo and target != self.name:
                    await self.chat_message(event)
            else:
                await self.refuse("bad_message")

        def said(self, text: str) -> dict[str, Any]:
            return {"from": self.name, "text": text, "ts": time.time()}

        async def refuse(self, error: str) -> None:
            await self.send(text_data=json.dumps({"type": "error", "error": error}))

        async def chat_message(self, event: dict[str, Any]) -> None:
            frame = {k: v for k, v in event.items() if k not in ("type", "kind")}
            await self.send(text_data=json.dumps({"type": event["kind"]} | frame))

        async def presence(self, event: dict[str, Any]) -> None:
            await self.send(text_data=json.dumps(event))

    routes = URLRouter([path("ws", ChatConsumer.as_asgi())])
    app = ProtocolTypeRouter(
        {"websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(routes))}
    )
    return app, cookies
