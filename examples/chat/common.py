"""What the FastAPI, Starlette and Quart chat apps share: settings, seed users, login, the view.

Each app only translates between its framework and these functions; behaviour lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asgi_groups import AsgiGroupsError, Registry, codes
from asgi_groups.auth import AuthUser, SqlUserStore, UserExists
from asgi_groups.browser import ClientScript
from asgi_groups.history import HistoryLimits
from asgi_groups.messaging import (
    DEFAULT_MAX_TEXT_BYTES,
    ChatMessage,
    MessagingView,
    UserRef,
    new_message_id,
)
from asgi_groups.recoverable import RecoverableView
from asgi_groups.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

    from asgi_groups.amqp import AmqpSource, Outgoing

__all__ = [
    "CLIENT_SCRIPT_PATH",
    "DEFAULT_AMQP_QUEUE",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_HISTORY",
    "DEV_SECRET_KEY",
    "SEED_USERS",
    "SESSION_KEY",
    "WS_PATH",
    "ChatConfig",
    "ChatView",
    "PreparedStore",
    "SeedUser",
    "StoreDirectory",
    "amqp_source",
    "chat_view",
    "check_login",
    "log_out",
    "page",
    "prepare_store",
    "session_for",
    "with_client_script",
]

logger = logging.getLogger("examples.chat")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./chat.sqlite3"
DEV_SECRET_KEY = "chat-example-dev-secret-do-not-use-in-production"
#: The session entry holding the logged-in user's id (what ``SqlUserStore.load`` reads).
SESSION_KEY = "user_id"
WS_PATH = "/ws"
#: Where the apps serve the browser client the page imports (``asgi_groups.browser``).
CLIENT_SCRIPT_PATH = "/asgi-groups.js"
#: Largest login request body accepted, in bytes.
MAX_LOGIN_BODY = 4096
#: Longest announcement text, and body (the text plus a little JSON, escapes included).
MAX_TEXT_BYTES = DEFAULT_MAX_TEXT_BYTES
MAX_ANNOUNCE_BODY = 8 * MAX_TEXT_BYTES
#: Longest username / password accepted at login.
MAX_USERNAME = 150
MAX_PASSWORD = 1024
#: How long the directory trusts its copy of the users and groups, in seconds.
DIRECTORY_TTL = 5.0
#: A miss refreshes the directory at most this often, so unknown names cannot hammer the database.
DIRECTORY_MIN_REFRESH = 1.0
#: The queue read when ``CHAT_AMQP_URL`` is set and ``CHAT_AMQP_QUEUE`` is not.
DEFAULT_AMQP_QUEUE = "ws_messages"
#: Longest sender name and text taken from a queue message.
MAX_AMQP_FROM = 150
MAX_AMQP_TEXT = 4096
#: The history a chat keeps unless told otherwise: the library's defaults.
DEFAULT_HISTORY = HistoryLimits()

TEMPLATES = Path(__file__).with_name("templates")


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatConfig:
    """Settings of a chat app, usually read from ``CHAT_*`` environment variables."""

    database_url: str = DEFAULT_DATABASE_URL
    secret_key: str = DEV_SECRET_KEY
    redis_url: str | None = None
    allowed_origins: tuple[str, ...] | None = None  # None: same origin only
    #: Seconds between re-checks of open sockets (deactivated users are closed with 4401).
    revalidate_every: float | None = None
    #: Recent messages kept per group, user and broadcast, so that a page that reconnects gets
    #: what it missed and a page that loads shows the recent conversation; None: kept nowhere.
    history: HistoryLimits | None = DEFAULT_HISTORY
    #: RabbitMQ to read chat messages from (``pip install 'asgi-groups[amqp]'``); None: none.
    amqp_url: str | None = None
    amqp_queue: str = DEFAULT_AMQP_QUEUE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChatConfig:
        """Read ``CHAT_DATABASE_URL``, ``CHAT_SECRET_KEY``, ``CHAT_REDIS_URL``,
        ``CHAT_ALLOWED_ORIGINS`` (comma-separated), ``CHAT_REVALIDATE_SECONDS`` and
        ``CHAT_HISTORY`` (``0`` turns history off; on by default, with ``HistoryLimits()``),
        ``CHAT_AMQP_URL`` and ``CHAT_AMQP_QUEUE`` (default ``ws_messages``)."""
        env = os.environ if environ is None else environ
        secret = env.get("CHAT_SECRET_KEY", "").strip()
        if not secret:
            logger.warning(
                "CHAT_SECRET_KEY is not set: using a development key; anyone can forge sessions"
            )
            secret = DEV_SECRET_KEY
        origins = [o.strip() for o in env.get("CHAT_ALLOWED_ORIGINS", "").split(",") if o.strip()]
        return cls(
            database_url=env.get("CHAT_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL,
            secret_key=secret,
            redis_url=env.get("CHAT_REDIS_URL", "").strip() or None,
            allowed_origins=tuple(origins) or None,
            revalidate_every=_seconds(env.get("CHAT_REVALIDATE_SECONDS", "")),
            history=None if env.get("CHAT_HISTORY", "").strip() == "0" else DEFAULT_HISTORY,
            amqp_url=env.get("CHAT_AMQP_URL", "").strip() or None,
            amqp_queue=env.get("CHAT_AMQP_QUEUE", "").strip() or DEFAULT_AMQP_QUEUE,
        )

    def registry(self) -> Registry:
        """In memory (one process) unless ``redis_url`` is set; keeping ``history``."""
        return Registry(self.redis_url, history=self.history)

    def store(self) -> SqlUserStore:
        return SqlUserStore(self.database_url, session_key=SESSION_KEY)


def _seconds(value: str) -> float | None:
    """A positive number of seconds, or None when ``value`` is empty."""
    if not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"CHAT_REVALIDATE_SECONDS must be a positive number, not {value!r}")
    return seconds


# -- users -------------------------------------------------------------------------------------


class SeedUser(NamedTuple):
    """A demo account: ``(username, password, group)``."""

    username: str
    password: str
    group: str

    @property
    def first_name(self) -> str:
        return self.username.capitalize()


def _seed(name: str, group: str) -> SeedUser:
    return SeedUser(name, name.capitalize(), group)


#: The demo users: each password is the capitalised name (greg / Greg).
SEED_USERS: tuple[SeedUser, ...] = (
    *(_seed(name, "boys") for name in ("greg", "chuck", "mike")),
    *(_seed(name, "girls") for name in ("amanda", "lisa", "anny")),
)


async def prepare_store(store: SqlUserStore, users: tuple[SeedUser, ...] = SEED_USERS) -> None:
    """Create the tables and, in an empty database, the demo users."""
    await store.create_all()
    if await store.list_users():
        return
    for user in users:
        with contextlib.suppress(UserExists):  # another worker seeded it first
            await store.create_user(
                user.username, user.password, first_name=user.first_name, groups=[user.group]
            )


class PreparedStore:
    """``prepare_store`` once per app: awaited by the app's lifespan, and by ``gate`` in front
    of every request and socket, so that a server without lifespan (daphne, uvicorn
    ``--lifespan off``) prepares the store on the first request instead of failing it."""

    def __init__(self, store: SqlUserStore) -> None:
        self.store = store
        self.done = False
        self._lock: asyncio.Lock | None = None

    async def __call__(self) -> None:
        """Prepare the store unless done; concurrent first calls wait for one preparation."""
        if self.done:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.done:
                await prepare_store(self.store)
                self.done = True

    def gate(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the preparation (an ASGI middleware; lifespan passes straight on)."""

        async def gated(scope: Scope, receive: Receive, send: Send) -> None:
            if not self.done and scope["type"] != "lifespan":
                await self()
            await app(scope, receive, send)

        return gated


def session_for(user: AuthUser) -> dict[str, Any]:
    """What to store in the framework's session to log ``user`` in."""
    return {SESSION_KEY: user.id}


def _bad_request(detail: str) -> tuple[int, dict[str, str], AuthUser | None]:
    return 400, {"error": detail}, None


async def check_login(
    store: SqlUserStore, payload: bytes | str | Mapping[str, Any]
) -> tuple[int, dict[str, str], AuthUser | None]:
    """Check a login request body (JSON ``{"username", "password"}``).

    Returns ``(200, {"success": "Welcome back, greg"}, user)``, ``(401, {"error": ...}, None)``
    for wrong credentials, or ``(400, {"error": ...}, None)`` for a malformed request.
    """
    if isinstance(payload, bytes | str):
        if len(payload) > MAX_LOGIN_BODY:
            return _bad_request("request body too large")
        try:
            data: Any = json.loads(payload)
        except (ValueError, RecursionError):
            return _bad_request('send JSON: {"username": ..., "password": ...}')
    else:
        data = payload
    if not isinstance(data, Mapping):
        return _bad_request('send JSON: {"username": ..., "password": ...}')
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return _bad_request("username and password are required")
    username = username.strip()
    if not username or not password:
        return _bad_request("username and password are required")
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        return 401, {"error": "Invalid username or password"}, None
    user = await store.authenticate(username, password)
    if user is None:
        return 401, {"error": "Invalid username or password"}, None
    return 200, {"success": f"Welcome back, {user.username}"}, user


async def announce(
    registry: Registry, store: SqlUserStore, session: Mapping[str, Any], payload: bytes | str
) -> tuple[int, dict[str, str]]:
    """Broadcast ``{"text": ...}`` from an HTTP handler, as the logged-in user's broadcast.

    Returns ``(200, {"success": ...})``, or 401 (not logged in), 400 (bad body) or 503 (the
    backend is down: not sent). Any code can send like this; nothing needs a socket.
    """
    user = await store.load(session)
    if user is None:
        return 401, {"error": "log in first"}
    try:
        data: Any = json.loads(payload) if len(payload) <= MAX_ANNOUNCE_BODY else None
    except (ValueError, RecursionError):
        data = None
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text.encode()) > MAX_TEXT_BYTES:
        return 400, {"error": f'send JSON: {{"text": ...}}, 1 to {MAX_TEXT_BYTES} bytes'}
    message = ChatMessage(
        type="broadcast",
        from_=user.username,
        text=text,
        ts=round(time.time(), 3),
        id=new_message_id(),
    )
    try:
        await registry.broadcast(message.frame())
    except AsgiGroupsError as exc:  # the backend is down, the registry closed
        logger.warning("announcement of user %s not sent: %s", user.id, exc)
        return 503, {"error": "not sent, try again"}
    return 200, {"success": "sent to everyone"}


async def log_out(registry: Registry, user_id: object) -> None:
    """Close every socket of the user, in every process, with 4401 (the page stops there).

    It never fails the logout: the cookie is cleared whatever happens here (the registry
    closes this process's sockets at once and tells the others as soon as it can).
    """
    if user_id is None:
        return
    try:
        await registry.disconnect_user(user_id, codes.UNAUTHORIZED, "logged out")
    except AsgiGroupsError as exc:  # e.g. a registry that is not started
        logger.warning("logout of user %s: sockets not closed: %s", user_id, exc)


# -- the WebSocket view ------------------------------------------------------------------------


class _Snapshot(NamedTuple):
    stamp: float
    by_name: dict[str, UserRef]
    by_id: dict[str, str]
    groups: frozenset[str]
    #: ``listing()``, sorted once per snapshot rather than once per socket.
    listing: tuple[list[str], list[str]]


class StoreDirectory:
    """Users and groups of a ``SqlUserStore``, cached for ``ttl`` seconds."""

    def __init__(
        self,
        store: SqlUserStore,
        *,
        ttl: float = DIRECTORY_TTL,
        min_refresh: float = DIRECTORY_MIN_REFRESH,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.min_refresh = min_refresh
        self._snapshot: _Snapshot | None = None
        self._lock = asyncio.Lock()

    async def _get(self, *, missed: bool = False) -> _Snapshot:
        snap = self._snapshot
        now = time.monotonic()
        if snap is not None:
            age = now - snap.stamp
            if age < self.ttl and not (missed and age >= self.min_refresh):
                return snap
        async with self._lock:
            if self._snapshot is not None and self._snapshot is not snap:
                return self._snapshot  # refreshed while we waited
            users = [u for u in await self.store.list_users() if u.is_active]
            groups = await self.store.list_groups()
            names = frozenset(g.name for g in groups)
            self._snapshot = _Snapshot(
                stamp=time.monotonic(),
                by_name={u.username.casefold(): UserRef(str(u.id), u.username) for u in users},
                by_id={str(u.id): u.username for u in users},
                groups=names,
                listing=(sorted(names), sorted((u.username for u in users), key=str.casefold)),
            )
            return self._snapshot

    async def find_user(self, user_name: str) -> UserRef | None:
        key = user_name.casefold()
        ref = (await self._get()).by_name.get(key)
        return ref if ref is not None else (await self._get(missed=True)).by_name.get(key)

    async def username_of(self, user_id: str) -> str | None:
        name = (await self._get()).by_id.get(user_id)
        return name if name is not None else (await self._get(missed=True)).by_id.get(user_id)

    async def group_exists(self, name: str) -> bool:
        return name in (await self._get()).groups or name in (await self._get(missed=True)).groups

    async def listing(self) -> tuple[list[str], list[str]]:
        return (await self._get()).listing


class ChatView(RecoverableView, MessagingView):
    """The chat endpoint: the messaging protocol over the users and groups of a store.

    It speaks the recoverable protocol (docs/PROTOCOL.md): group, direct and broadcast messages
    and presence reach the page in ``ag.message`` envelopes, and a page that reconnects gets
    what it missed; ``hello`` and ``error`` frames are sent to one socket, as they are.

    Mount ``ChatView.as_asgi(store=store)`` (an ASGI app) or the class ``chat_view(store)``.
    """

    @classmethod
    def as_asgi(
        cls, registry: Registry | None = None, *, store: SqlUserStore | None = None, **options: Any
    ) -> ASGIApp:
        if store is not None:
            options["directory"] = StoreDirectory(store)
        return super().as_asgi(registry, **options)


def chat_view(store: SqlUserStore) -> type[ChatView]:
    """A ``ChatView`` subclass bound to ``store`` (for adapters that take a view class)."""

    class StoreChatView(ChatView):
        directory = StoreDirectory(store)

    return StoreChatView


# -- messages from a RabbitMQ queue -----------------------------------------------------------


class _QueuedChat(BaseModel):
    """The ``data`` of a queue message for the chat: ``{"text": ..., "from"?: ...}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    text: str = Field(min_length=1, max_length=MAX_AMQP_TEXT)
    from_: str = Field("system", alias="from", min_length=1, max_length=MAX_AMQP_FROM)


class ChatDecoder:
    """Queue messages as chat messages: ``{"target", "name", "data": {"text", "from"?}}``.

    A group must exist and a user is named by username, as in the chat itself; the envelope is
    the one a socket's own message gets (``ChatMessage``), its id the AMQP ``message_id``.
    """

    def __init__(self, directory: StoreDirectory) -> None:
        self.directory = directory

    async def __call__(self, incoming: AbstractIncomingMessage) -> Outgoing:
        from asgi_groups.amqp import Outgoing, Reason, Undeliverable, parse

        body = parse(incoming.body)
        try:
            chat = _QueuedChat.model_validate(body.data)
        except ValidationError as exc:
            raise Undeliverable(Reason.INVALID, f"data: {exc.errors()[0]['msg']}") from None
        message_id = incoming.message_id or new_message_id()
        envelope: dict[str, Any] = {"from_": chat.from_, "text": chat.text, "id": message_id}
        envelope["ts"] = round(time.time(), 3)
        if body.target == "group":
            group = str(body.name)
            if not await self.directory.group_exists(group):
                raise Undeliverable(Reason.UNKNOWN_GROUP, f"no group {group!r}")
            frame = ChatMessage(type="group", group=group, **envelope).frame()
            return Outgoing("group", group, frame, message_id)
        if body.target == "user":
            user = await self.directory.find_user(str(body.name))
            if user is None:
                raise Undeliverable(Reason.UNKNOWN_USER, f"no user {body.name!r}")
            frame = ChatMessage(type="direct", to=user.username, **envelope).frame()
            return Outgoing("user", user.id, frame, message_id)
        frame = ChatMessage(type="broadcast", **envelope).frame()
        return Outgoing("broadcast", None, frame, message_id)


def amqp_source(config: ChatConfig, registry: Registry, store: SqlUserStore) -> AmqpSource | None:
    """When ``config.amqp_url`` is set: a queue consumer that starts and stops with
    ``registry`` and shows each queue message in the chat."""
    if config.amqp_url is None:
        return None
    from asgi_groups.amqp import AmqpSource

    source = AmqpSource(
        registry, config.amqp_url, config.amqp_queue, decode=ChatDecoder(StoreDirectory(store))
    )
    registry.add_companion(source)
    return source


# -- the browser client ------------------------------------------------------------------------


def with_client_script(app: ASGIApp, path: str = CLIENT_SCRIPT_PATH) -> ASGIApp:
    """``app`` with the browser client (``ClientScript``) answering HTTP requests for ``path``;
    everything else goes to ``app``. For frameworks whose routes cannot hold an ASGI app."""
    script = ClientScript()

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == path:
            await script(scope, receive, send)
        else:
            await app(scope, receive, send)

    return serve


# -- pages -------------------------------------------------------------------------------------

PAGES = ("login.html", "chat.html")


@cache
def page(name: str) -> str:
    """An HTML page with its stylesheet and script inlined (``/*include chat.css*/``)."""
    if name not in PAGES:
        raise KeyError(f"no page {name!r}")
    html = (TEMPLATES / name).read_text("utf-8")
    for asset in ("chat.css", "chat.js", "login.js"):
        marker = f"/*include {asset}*/"
        if marker in html:
            html = html.replace(marker, (TEMPLATES / asset).read_text("utf-8"))
    return html
