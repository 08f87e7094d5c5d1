"""The chat protocol as a ready view: JSON in, validated, routed to a group, a user or everyone.

Inbound ``{"type": "BroadCast" | "Group" | "Direct" | "Presence", "text": ..., "group"?: ...,
"user_name"?: ..., "id"?: ...}`` (``type`` and ``user_name`` are case-insensitive; ``id``, up to
64 of ``A-Z a-z 0-9 _ -``, is the client's own id for the message, kept in what recipients get,
else the server makes one). Outbound envelopes ``{"type", "from", "text", "ts", "id", "group"?,
"to"?}`` say who sent what to whom; recipients drop a second copy by ``(from, id)``.

Bad input gets one ``{"type": "error", "error": code, "detail": ...}`` frame and the socket stays
open; floods and endless errors are closed with 4429 / 4408, and only for what the client did.
After a break in the backend a socket gets ``{"type": "error", "error": "missed", "detail":
...}`` (messages sent meanwhile may be missing; the socket stays open). When the backend
(e.g. Redis) fails, the message gets ``{"type": "error", "error":
"unavailable", "detail": ..., "id": <the message's id>, "delivered": false | "unknown",
"retry_after": <seconds>}``: ``false``, it was certainly not sent; ``"unknown"``, it may have
been (send it again with the same ``id`` and recipients drop the duplicate). ``rate_limited``
frames carry ``retry_after`` too. Neither counts against the error budget.

Rate limits apply per socket and per user (all the user's sockets in this process: with Redis,
each process counts its own, which costs no round trip per message); time the server spends
waiting on its backend is credited to them. See :class:`MessagingView` for the knobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from . import codes
from .channels import group_channel
from .connection import Connection
from .errors import AsgiGroupsError, BackendUnavailable, ConnectionClosed, DeliveryUnknown
from .frames import Frame, encode_json
from .limits import KiB
from .ratelimit import TokenBucket, UserBuckets, WindowCounter, take_all
from .registry import MAX_GROUP_NAME, Registry
from .request import Request
from .stream import message_frame
from .types import Receive, Scope, Send, UserLike
from .views import WsView

__all__ = [
    "DEFAULT_ERROR_BUDGET",
    "DEFAULT_ERROR_WINDOW",
    "DEFAULT_HELLO_USERS_MAX",
    "DEFAULT_MAX_STALL_CREDIT",
    "DEFAULT_MAX_TEXT_BYTES",
    "DEFAULT_PRESENCE_BATCH_RATIO",
    "DEFAULT_PRESENCE_FULL_LIST_MAX",
    "DEFAULT_PRESENCE_INTERVAL",
    "DEFAULT_PRESENCE_MAX_DELAY",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_RATE_LIMIT_STRIKES",
    "DEFAULT_RETRY_AFTER",
    "DEFAULT_USER_RATE_BURST",
    "DEFAULT_USER_RATE_LIMIT",
    "MAX_MESSAGE_ID",
    "BroadcastIn",
    "ChatMessage",
    "DirectIn",
    "Directory",
    "ErrorCode",
    "ErrorFrame",
    "GroupIn",
    "Hello",
    "InboundError",
    "InboundMessage",
    "LocalDirectory",
    "MessagingView",
    "Presence",
    "PresenceBatcher",
    "PresenceDiff",
    "PresenceIn",
    "StaticDirectory",
    "TokenBucket",
    "UserRef",
    "WindowCounter",
    "decode_inbound",
    "new_message_id",
    "presence_batcher",
    "user_buckets",
]

logger = logging.getLogger("asgi_groups.messaging")

#: Largest ``text`` of one chat message, in UTF-8 bytes (larger: ``text_too_long``).
DEFAULT_MAX_TEXT_BYTES = 4 * KiB
#: Inbound messages per second a connection may send on average ...
DEFAULT_RATE_LIMIT = 20.0
#: ... and in one burst.
DEFAULT_RATE_BURST = 40
#: ``rate_limited`` replies allowed per ``rate_limit_window`` before closing with 4429.
DEFAULT_RATE_LIMIT_STRIKES = 20
DEFAULT_RATE_LIMIT_WINDOW = 60.0
#: Inbound messages per second one user may send on average over all their connections (in
#: one process) ...
DEFAULT_USER_RATE_LIMIT = 20.0
#: ... and in one burst.
DEFAULT_USER_RATE_BURST = 40
#: Seconds of stall (the server waiting on its backend while the client's frames queue) that
#: can be credited to the client's rate limit, at its rate: at most ``rate * 30`` tokens.
DEFAULT_MAX_STALL_CREDIT = 30.0
#: Error frames allowed per ``error_window`` seconds before closing with 4408.
DEFAULT_ERROR_BUDGET = 30
DEFAULT_ERROR_WINDOW = 60.0
#: Seconds an ``unavailable`` error frame tells the client to wait before sending again.
DEFAULT_RETRY_AFTER = 2.0
#: Seconds between summary lines of messages the backend did not take (the first is logged
#: at once, the rest counted).
UNDELIVERED_LOG_INTERVAL = 10.0
#: Longest username accepted in ``user_name``.
MAX_USER_NAME = 150
#: Longest client-chosen message ``id``, and its characters.
MAX_MESSAGE_ID = 64
MESSAGE_ID_PATTERN = r"^[A-Za-z0-9_-]+$"


# -- protocol: inbound -------------------------------------------------------------------------


class ErrorCode(StrEnum):
    """The ``error`` field of an error frame."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_MESSAGE = "invalid_message"
    TEXT_TOO_LONG = "text_too_long"
    UNKNOWN_GROUP = "unknown_group"
    UNKNOWN_USER = "unknown_user"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    #: Not a refusal: messages may have been missed during a break in the backend.
    MISSED = "missed"


class _Inbound(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _ChatIn(_Inbound):
    text: str = Field(min_length=1)
    #: The client's id for the message (a retry carries the same one); None: the server's.
    id: str | None = Field(
        default=None, min_length=1, max_length=MAX_MESSAGE_ID, pattern=MESSAGE_ID_PATTERN
    )


class BroadcastIn(_ChatIn):
    """``{"type": "BroadCast", "text": ..., "id"?: ...}``: to everyone."""

    type: Literal["broadcast"] = "broadcast"


class GroupIn(_ChatIn):
    """``{"type": "Group", "group": ..., "text": ..., "id"?: ...}``: to every member of a group."""

    type: Literal["group"] = "group"
    group: str = Field(min_length=1, max_length=MAX_GROUP_NAME)


class DirectIn(_ChatIn):
    """``{"type": "Direct", "user_name": ..., "text": ..., "id"?: ...}``: to every tab of one
    user."""

    type: Literal["direct"] = "direct"
    user_name: str = Field(min_length=1, max_length=MAX_USER_NAME)


class PresenceIn(_Inbound):
    """``{"type": "Presence"}``: who is online in each of my groups."""

    type: Literal["presence"] = "presence"


InboundMessage = BroadcastIn | GroupIn | DirectIn | PresenceIn

_MODELS: dict[str, type[BroadcastIn] | type[GroupIn] | type[DirectIn] | type[PresenceIn]] = {
    "broadcast": BroadcastIn,
    "group": GroupIn,
    "direct": DirectIn,
    "presence": PresenceIn,
}
_TYPES_HELP = "expected type BroadCast, Group, Direct or Presence"
#: The bounded reason an inbound frame refused with an error code is counted under.
_REFUSAL_REASONS = {
    ErrorCode.TEXT_TOO_LONG: "too_large",
    ErrorCode.FORBIDDEN: "forbidden",
    ErrorCode.RATE_LIMITED: "rate_limited",
    ErrorCode.UNKNOWN_GROUP: "unknown_target",
    ErrorCode.UNKNOWN_USER: "unknown_target",
}


# -- protocol: outbound ------------------------------------------------------------------------


def _tell_missed(conn: Connection, cause: str) -> None:
    """After a break in the backend: one ``missed`` frame; the socket stays open."""
    conn.deliver(MISSED)


class _Outbound(BaseModel):
    model_config = ConfigDict(frozen=True, serialize_by_alias=True)

    def frame(self) -> Frame:
        """Encoded once; the same frame goes to every recipient."""
        text = self.model_dump_json(by_alias=True, exclude_none=True)
        return Frame({"type": "websocket.send", "text": text}, len(text.encode()), json=True)


class ChatMessage(_Outbound):
    """A delivered message: ``{"type", "from", "text", "ts", "id", "group"?, "to"?}``."""

    type: Literal["broadcast", "group", "direct"]
    from_: str = Field(serialization_alias="from")
    text: str
    ts: float  # server time, seconds since the epoch
    id: str  # the sender's id for it, or the server's: a page drops a copy by (from, id)
    group: str | None = None
    to: str | None = None

    @staticmethod
    def frame_of(
        type: str,
        from_: str,
        text: str,
        id: str,
        *,
        group: str | None = None,
        to: str | None = None,
    ) -> Frame:
        """The frame of ``ChatMessage(...)`` stamped now, built without a model: fields that
        were validated on the way in are not validated again (the busiest path of the view)."""
        fields: dict[str, Any] = {
            "type": type,
            "from": from_,
            "text": text,
            "ts": round(time.time(), 3),
            "id": id,
        }
        if group is not None:
            fields["group"] = group
        if to is not None:
            fields["to"] = to
        return encode_json(fields)


_id_prefix = os.urandom(6).hex()
_id_counter = itertools.count()


def _new_id_prefix() -> None:
    """A forked worker (gunicorn's preload) names its messages apart from its parent's."""
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = os.urandom(6).hex(), itertools.count()


os.register_at_fork(after_in_child=_new_id_prefix)


def new_message_id() -> str:
    """An id for a message the server names: this process's random prefix and a counter.

    Unique as a uuid4 would be for what ids are used for (a page drops a copy by its sender and
    id), and cheap to compress: a uuid4's 32 random digits made each recipient's
    permessage-deflate cost several times that of the rest of a chat message.
    """
    return f"{_id_prefix}-{next(_id_counter):x}"


class ErrorFrame(_Outbound):
    """``{"type": "error", "error": code, "detail": ...}``: one per refused inbound frame.

    ``unavailable`` for a chat message adds its ``id`` and ``delivered`` (``false``: certainly
    not sent; ``"unknown"``: it may have been); ``unavailable`` and ``rate_limited`` add
    ``retry_after``, the seconds to wait before sending again.
    """

    type: Literal["error"] = "error"
    error: ErrorCode
    detail: str
    id: str | None = None
    delivered: Literal[False, "unknown"] | None = None
    retry_after: float | None = None


#: Told to a socket when messages may have been missed (the backend was unreachable).
MISSED = ErrorFrame(
    error=ErrorCode.MISSED,
    detail="messages sent while the server was cut off from its backend may be missing",
).frame()


class Presence(_Outbound):
    """``{"type": "presence", "group", "users"}``: usernames online in a group."""

    type: Literal["presence"] = "presence"
    group: str
    users: list[str]


class PresenceDiff(_Outbound):
    """``{"type": "presence_diff", "group", "joins", "leaves"}``: who came and went in a big group.

    Applied to the last ``presence`` list a client holds (joins added, leaves removed)."""

    type: Literal["presence_diff"] = "presence_diff"
    group: str
    joins: list[str]
    leaves: list[str]


class Hello(_Outbound):
    """Sent once on connect: who I am, my groups, and the groups and users I can address.

    ``users_complete`` is false (else absent) when the directory was too big to list (``users``
    is then empty): direct messages still go to any user by name.
    """

    type: Literal["hello"] = "hello"
    user: str
    groups: list[str]
    all_groups: list[str]
    users: list[str]
    users_complete: Literal[False] | None = None


class InboundError(NamedTuple):
    """Why an inbound frame was refused (``decode_inbound`` returns it, never raises)."""

    code: ErrorCode
    detail: str

    def frame(self) -> Frame:
        return ErrorFrame(error=self.code, detail=self.detail).frame()


def _validation_detail(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def decode_inbound(
    data: str | bytes, *, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
) -> InboundMessage | InboundError:
    """Parse and validate one inbound frame; never raises, whatever the input.

    JSON is parsed by pydantic-core's parser, which bounds nesting (200 levels) without using
    the Python stack and refuses integers too long to convert, so hostile input costs one pass.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return InboundError(ErrorCode.INVALID_UTF8, "binary frame is not valid UTF-8")
    try:
        raw = from_json(data, allow_inf_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        reason = str(exc)
        if isinstance(data, str) and not _encodable(data):
            return InboundError(ErrorCode.INVALID_UTF8, "text is not valid Unicode")
        if "recursion limit" in reason:
            return InboundError(ErrorCode.INVALID_MESSAGE, "JSON nested too deeply")
        if "number out of range" in reason:
            return InboundError(ErrorCode.INVALID_MESSAGE, "number out of range")
        return InboundError(ErrorCode.INVALID_JSON, f"not valid JSON ({reason[:120]})")
    if not isinstance(raw, dict):
        return InboundError(ErrorCode.INVALID_MESSAGE, "a message is a JSON object")
    kind = raw.get("type")
    kind = kind.lower() if isinstance(kind, str) and len(kind) < 20 else None
    model = _MODELS.get(kind) if kind is not None else None
    if model is None:
        return InboundError(ErrorCode.INVALID_MESSAGE, f"type: {_TYPES_HELP}")
    raw["type"] = kind
    try:
        message: InboundMessage = model.model_validate(raw)
    except ValidationError as exc:
        return InboundError(ErrorCode.INVALID_MESSAGE, _validation_detail(exc))
    except (ValueError, TypeError, RecursionError):
        return InboundError(ErrorCode.INVALID_MESSAGE, "message does not validate")
    text = getattr(message, "text", None)
    if text is not None and len(text) > max_text_bytes // 4:  # else it cannot be too long
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return InboundError(ErrorCode.INVALID_UTF8, "text is not valid Unicode")
        if size > max_text_bytes:
            return InboundError(
                ErrorCode.TEXT_TOO_LONG, f"text is over {max_text_bytes} bytes of UTF-8"
            )
    return message


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- who is who --------------------------------------------------------------------------------


class UserRef(NamedTuple):
    """A user found by name: the id the registry knows them by and the canonical username."""

    id: str
    username: str


@runtime_checkable
class Directory(Protocol):
    """Where a messaging view looks up users and groups (e.g. a user store, with a cache)."""

    async def find_user(self, user_name: str) -> UserRef | None:
        """The user called ``user_name``, compared case-insensitively."""
        ...

    async def username_of(self, user_id: str) -> str | None: ...

    async def group_exists(self, name: str) -> bool: ...

    async def listing(self) -> tuple[list[str], list[str]]:
        """All group names and all usernames a page may offer as recipients."""
        ...


class LocalDirectory:
    """The users connected to this process; any group exists. The default, for small apps."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def find_user(self, user_name: str) -> UserRef | None:
        wanted = user_name.casefold()
        for conn in self.registry.connections():
            user = conn.user
            if user is not None and conn.user_id and user.username.casefold() == wanted:
                return UserRef(conn.user_id, user.username)
        return None

    async def username_of(self, user_id: str) -> str | None:
        for conn in self.registry.connections(user_id):
            if conn.user is not None:
                return conn.user.username
        return None

    async def group_exists(self, name: str) -> bool:
        return True

    async def listing(self) -> tuple[list[str], list[str]]:
        return [], []


class StaticDirectory:
    """A fixed set of users; groups are the union of theirs (plus ``groups``)."""

    def __init__(self, users: Iterable[UserLike], groups: Iterable[str] = ()) -> None:
        people = list(users)
        self._by_name = {u.username.casefold(): UserRef(str(u.id), u.username) for u in people}
        self._by_id = {ref.id: ref.username for ref in self._by_name.values()}
        self._groups = set(groups).union(*(u.groups for u in people))

    async def find_user(self, user_name: str) -> UserRef | None:
        return self._by_name.get(user_name.casefold())

    async def username_of(self, user_id: str) -> str | None:
        return self._by_id.get(user_id)

    async def group_exists(self, name: str) -> bool:
        return name in self._groups

    async def listing(self) -> tuple[list[str], list[str]]:
        return sorted(self._groups), sorted(self._by_id.values(), key=str.casefold)


# -- shared by the views of one registry -------------------------------------------------------


class _Undelivered:
    """Counts chat messages the backend did not take and logs them as one line per
    ``interval`` (the first at once): an outage would otherwise log every message of everyone."""

    __slots__ = ("_timer", "interval", "latest", "lost", "maybe", "next_at", "reported_at")

    def __init__(self, interval: float = UNDELIVERED_LOG_INTERVAL) -> None:
        self.interval = interval
        self.lost = 0  # certainly not sent
        self.maybe = 0  # may have been delivered
        self.latest: BaseException | None = None
        self.next_at = float("-inf")
        self.reported_at = float("-inf")
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        """Messages counted and not yet logged."""
        return self.lost + self.maybe

    def record(self, exc: BackendUnavailable, clock: Callable[[], float]) -> None:
        if isinstance(exc, DeliveryUnknown):
            self.maybe += 1
        else:
            self.lost += 1
        self.latest = exc
        now = clock()
        self.report(now)
        if self.pending and self._timer is None:  # the line is logged when due, traffic or not
            self._timer = asyncio.get_running_loop().call_later(
                self.next_at - now, self._due, clock
            )

    def _due(self, clock: Callable[[], float]) -> None:
        self._timer = None
        self.report(clock())

    def report(self, now: float) -> None:
        """Log what was counted when a line is due (the interval has passed)."""
        if now < self.next_at or not self.pending:
            return
        since = now - self.reported_at
        logger.warning(
            "chat messages the backend did not take%s: %d not sent, %d maybe delivered "
            "(latest: %r)%s",
            "" if since == float("inf") else f" in the last {since:.0f} s",
            self.lost,
            self.maybe,
            self.latest,
            "" if since < float("inf") else f"; more are summed every {self.interval:.0f} s",
        )
        self.lost = self.maybe = 0
        self.latest = None
        self.reported_at = now
        self.next_at = now + self.interval


#: How often waiting presence changes are looked at (seconds): one update per group at most.
DEFAULT_PRESENCE_INTERVAL = 0.1
#: Groups with at most this many local sockets get the whole list (self-correcting, small);
#: bigger ones get a ``presence_diff`` of joins and leaves.
DEFAULT_PRESENCE_FULL_LIST_MAX = 100
#: A big group is told once its sockets are at most this many times the users who changed,
#: so that a storm of N connects costs O(N) presence frames, not O(N²).
DEFAULT_PRESENCE_BATCH_RATIO = 2
#: ... or once the oldest waiting change is this old (seconds), however few changed.
DEFAULT_PRESENCE_MAX_DELAY = 2.0
#: Most usernames a ``hello`` lists; a bigger directory lists none (``users_complete`` false)
#: and the page asks by name: a storm of N connects must not write N copies of N names.
DEFAULT_HELLO_USERS_MAX = 500


class _GroupPresence:
    """One group's presence changes waiting to be announced, and what was last announced."""

    __slots__ = ("changed", "first_at", "fresh", "known", "told", "view")

    def __init__(self, view: MessagingView) -> None:
        self.view = view  # whose hooks and limits the next announcement uses
        self.changed: set[str] = set()  # user ids whose sockets here opened or closed
        self.fresh: set[Connection] = set()  # new sockets here that need the whole list
        self.told: set[Connection] = set()  # new sockets here given the whole list at connect
        self.known: dict[str, str] = {}  # user id -> username, as last announced from here
        self.first_at: float | None = None

    @property
    def pending(self) -> bool:
        return bool(self.changed or self.fresh)


class PresenceBatcher:
    """Presence changes of one registry's messaging views, coalesced per group.

    Each view notes its socket's groups on connect and disconnect; every ``presence_interval``
    the groups that are due get one update each: the whole list for a small group, else a
    diff (and the whole list to the sockets that are new), so a reconnect storm costs O(N)
    frames however big the group.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.groups: dict[str, _GroupPresence] = {}
        #: Presence frames handed to connections (group sends count each local recipient).
        self.frames_sent = 0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_run = float("-inf")  # loop time of the last flush started by the timer

    async def opened(self, view: MessagingView, conn: Connection, groups: Iterable[str]) -> None:
        """``view``'s new socket is in ``groups``: in a small group it gets the list at once
        (cheap there), in a big one with the group's next update; its groups hear of it."""
        for group in groups:
            state = self._state(view, group)
            if len(self.registry.router.group(group)) > view.presence_full_list_max:
                state.fresh.add(conn)
                continue
            try:
                frame = await view.presence(group)
            except AsgiGroupsError as exc:  # the backend is away: the next update tells it
                logger.debug("presence for %r not sent: %r", group, exc)
                state.fresh.add(conn)
                continue
            state.told.add(conn)
            await self._tell(conn, group, frame)
        self.note(view, groups)

    def note(self, view: MessagingView, groups: Iterable[str]) -> None:
        """Record that ``view``'s socket opened or closed in ``groups``."""
        conn = view.connection
        user_id = conn.user_id if conn is not None else None
        now = view.clock()
        for group in groups:
            state = self._state(view, group)
            if user_id is not None:
                state.changed.add(user_id)
            if state.first_at is None:
                state.first_at = now
        if view.presence_interval is not None:
            self._arm(view.presence_interval)

    async def _tell(self, conn: Connection, group: str, frame: Frame) -> None:
        """Send one socket the list as the group would (a recoverable one gets it in the group's
        envelope, after its resume), so that it arrives in the same order as group updates."""
        stream = conn.stream
        if stream is not None:
            channel = group_channel(group)
            now = stream.offer(channel, None, message_frame(channel, None, frame))
            if now is None:  # held until the resume is done (or the hold is full: it closes)
                self.frames_sent += 1
                return
            frame = now
        with contextlib.suppress(ConnectionClosed):
            await conn.send(frame)
            self.frames_sent += 1

    def _state(self, view: MessagingView, group: str) -> _GroupPresence:
        state = self.groups.get(group)
        if state is None:
            state = self.groups[group] = _GroupPresence(view)
        state.view = view
        return state

    def _arm(self, interval: float) -> None:
        """Flush at once after a quiet interval (the first change is not delayed), else at the
        end of the current one."""
        if self._timer is None and (self._task is None or self._task.done()):
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._last_run + interval - loop.time())
            self._timer = loop.call_later(wait, self._tick)

    def _tick(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        self._last_run = loop.time()
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        interval: float | None = None
        try:
            await self.flush()
        finally:
            for state in self.groups.values():
                if state.pending:
                    interval = state.view.presence_interval
                    break
            self._task = None
            if interval is not None:
                self._arm(interval)

    def due(self, group: str, state: _GroupPresence) -> bool:
        """Small group, enough users changed for the group's size, or waited long enough."""
        view = state.view
        members = len(self.registry.router.group(group))
        if members <= view.presence_full_list_max:
            return True
        if members <= view.presence_batch_ratio * len(state.changed):
            return True
        first = state.first_at
        return first is not None and view.clock() - first >= view.presence_max_delay

    async def flush(self, *, force: bool = False) -> None:
        """Announce every group that is due (every group with changes if ``force``)."""
        for group, state in list(self.groups.items()):
            if state.pending and (force or self.due(group, state)):
                await self._announce(group, state)
            if not state.pending and not self.registry.router.group(group):
                self.groups.pop(group, None)  # nobody here: forget what was announced

    async def _announce(self, group: str, state: _GroupPresence) -> None:
        view = state.view
        changed, fresh, told = state.changed, state.fresh, state.told
        state.changed, state.fresh, state.told, state.first_at = set(), set(), set(), None
        known = state.known
        try:
            online = await self.registry.presence(group)
            names: dict[str, str] = {}
            for uid in online:
                name = known.get(uid)
                names[uid] = name if name is not None else (await view.username_of(uid) or uid)
            users = sorted(set(names.values()), key=str.casefold)
            members = len(self.registry.router.group(group))
            if members <= view.presence_full_list_max:
                if sum(online.values()) == 1 and told.issuperset(
                    self.registry.router.group(group)
                ):  # a lone socket that got the list at connect: nobody else to tell
                    state.known = names
                    return
                whole = Presence(group=group, users=users).frame()
                # state, not conversation: not kept in history (a resume sends it fresh)
                await self.registry.send_group(group, whole, history=False)
                self.frames_sent += members
            else:
                if fresh:
                    whole = Presence(group=group, users=users).frame()
                    for conn in fresh:
                        await self._tell(conn, group, whole)
                now = set(users)
                joins = {names[uid] for uid in names if uid not in known or uid in changed}
                leaves = {name for uid, name in known.items() if uid not in names} - now
                if joins or leaves:
                    diff = PresenceDiff(
                        group=group,
                        joins=sorted(joins, key=str.casefold),
                        leaves=sorted(leaves, key=str.casefold),
                    ).frame()
                    await self.registry.send_group(group, diff, history=False)
                    self.frames_sent += members
            state.known = names
        except AsgiGroupsError as exc:  # shutting down, or the backend is away
            logger.debug("presence for %r not announced: %r", group, exc)


class _Shared:
    """What the messaging views of one registry share in this process."""

    __slots__ = ("presence", "undelivered", "users")

    def __init__(self, registry: Registry) -> None:
        self.users = UserBuckets()
        self.undelivered = _Undelivered()
        self.presence = PresenceBatcher(registry)


# Keyed by the app's registry, weakly: gone with it.
_SHARED: weakref.WeakKeyDictionary[Registry, _Shared] = weakref.WeakKeyDictionary()


def _shared(registry: Registry) -> _Shared:
    shared = _SHARED.get(registry)
    if shared is None:
        shared = _SHARED[registry] = _Shared(registry)
    return shared


def presence_batcher(registry: Registry) -> PresenceBatcher:
    """The presence announcements of the messaging views of ``registry`` waiting to be sent."""
    return _shared(registry).presence


def user_buckets(registry: Registry) -> UserBuckets:
    """The per-user rate-limit buckets of the messaging views of ``registry`` (this process)."""
    return _shared(registry).users


# -- the view ----------------------------------------------------------------------------------


class MessagingView(WsView):
    """A ready WebSocket endpoint for the chat protocol; override the hooks to adapt it.

    Hooks: ``authorize(message)``, ``resolve_user(user_name)``, ``group_exists(name)``,
    ``username_of(user_id)``; the lookups default to ``directory`` (a constructor option or
    class attribute) or, without one, to the users connected to this process.

    Limits (class attributes, ``None`` disables): ``max_text_bytes``; ``rate_limit`` messages/s
    per connection with bursts of ``rate_burst``, and ``user_rate_limit`` / ``user_rate_burst``
    per user over all their connections in this process (a bucket shared while any is open
    and until it has refilled, so reconnecting does not reset it; with Redis every process
    keeps its own); more than ``rate_limit_strikes`` refusals per ``rate_limit_window`` s
    closes with 4429; more than ``error_budget`` error frames per ``error_window`` s closes with
    4408. Only the client's own doing counts: ``unavailable`` frames spend no error budget, and
    time spent waiting on the backend is credited to the rate limits (up to
    ``max_stall_credit`` s of their rate), so that frames sent at a fair pace during a stall are
    not refused when they arrive at once. ``retry_after``: seconds an ``unavailable`` frame asks
    the client to wait. ``clock`` (an option) replaces ``time.monotonic``.
    """

    login_required: ClassVar[bool] = True
    directory: ClassVar[Directory | None] = None
    max_text_bytes: ClassVar[int] = DEFAULT_MAX_TEXT_BYTES
    rate_limit: ClassVar[float | None] = DEFAULT_RATE_LIMIT
    rate_burst: ClassVar[int] = DEFAULT_RATE_BURST
    user_rate_limit: ClassVar[float | None] = DEFAULT_USER_RATE_LIMIT
    user_rate_burst: ClassVar[int] = DEFAULT_USER_RATE_BURST
    max_stall_credit: ClassVar[float | None] = DEFAULT_MAX_STALL_CREDIT
    rate_limit_strikes: ClassVar[int | None] = DEFAULT_RATE_LIMIT_STRIKES
    rate_limit_window: ClassVar[float] = DEFAULT_RATE_LIMIT_WINDOW
    error_budget: ClassVar[int | None] = DEFAULT_ERROR_BUDGET
    error_window: ClassVar[float] = DEFAULT_ERROR_WINDOW
    retry_after: ClassVar[float] = DEFAULT_RETRY_AFTER
    #: Tell a user's groups who is online whenever one of their sockets opens or closes.
    announce_presence: ClassVar[bool] = True
    #: Presence changes are coalesced per group and sent at most this often (seconds; ``None``:
    #: only when :func:`presence_batcher` is flushed by hand, as tests do).
    presence_interval: ClassVar[float | None] = DEFAULT_PRESENCE_INTERVAL
    #: Groups up to this many sockets (here) get the whole list; bigger ones a diff.
    presence_full_list_max: ClassVar[int] = DEFAULT_PRESENCE_FULL_LIST_MAX
    #: A big group is told once its sockets are at most this many times the users who changed…
    presence_batch_ratio: ClassVar[int] = DEFAULT_PRESENCE_BATCH_RATIO
    #: … or once its oldest waiting change is this old (seconds).
    presence_max_delay: ClassVar[float] = DEFAULT_PRESENCE_MAX_DELAY
    #: The sender's own tabs get a copy of a direct message, and of a group message to a group
    #: they are not in, so every page shows the conversation.
    echo_to_sender: ClassVar[bool] = True
    #: Most usernames the hello lists (``None``: all); see ``DEFAULT_HELLO_USERS_MAX``.
    hello_users_max: ClassVar[int | None] = DEFAULT_HELLO_USERS_MAX

    def __init__(
        self,
        request: Request,
        registry: Registry | None = None,
        *,
        directory: Directory | None = None,
        clock: Callable[[], float] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(request, registry, **options)
        self.users: Directory = directory or type(self).directory or LocalDirectory(self.registry)
        self.clock: Callable[[], float] = clock or time.monotonic
        now = self.clock()
        #: the buckets every inbound message takes a token from: this socket's, the user's
        self._buckets: tuple[TokenBucket, ...] = ()
        if self.rate_limit:
            self._buckets = (self._new_bucket(self.rate_limit, self.rate_burst, now),)
        self._user_key: str | None = None  # whose shared bucket this socket holds
        self._strikes = (
            WindowCounter(self.rate_limit_strikes, self.rate_limit_window)
            if self.rate_limit_strikes is not None
            else None
        )
        self._errors = (
            WindowCounter(self.error_budget, self.error_window)
            if self.error_budget is not None
            else None
        )
        self._member_of: set[str] = set()

    def _new_bucket(self, rate: float, burst: int, now: float) -> TokenBucket:
        return TokenBucket(rate, burst, now, max_credit=rate * (self.max_stall_credit or 0.0))

    # -- hooks -------------------------------------------------------------------------------

    async def authorize(self, message: InboundMessage) -> bool:
        """May this user send ``message``? Default: any logged-in user may send anything."""
        return bool(self.user.is_authenticated)

    async def resolve_user(self, user_name: str) -> UserRef | None:
        """The recipient of a direct message, by case-insensitive username."""
        return await self.users.find_user(user_name)

    async def group_exists(self, name: str) -> bool:
        return await self.users.group_exists(name)

    async def username_of(self, user_id: str) -> str | None:
        """A username for presence lists (``None`` shows the id)."""
        return await self.users.username_of(user_id)

    # -- lifecycle ---------------------------------------------------------------------------

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        """Accept and register the socket; it shares its user's rate-limit bucket from now on."""
        await super().accept(subprotocol, headers)
        conn = self.connection
        if conn is not None:
            self.registry.on_missed(conn, _tell_missed)
        rate = self.user_rate_limit
        if rate and self._user_key is None and conn is not None and conn.user_id:
            self._user_key = conn.user_id
            bucket = user_buckets(self.registry).acquire(
                conn.user_id,
                rate,
                self.user_rate_burst,
                self.clock(),
                max_credit=rate * (self.max_stall_credit or 0.0),
            )
            self._buckets = (*self._buckets, bucket)

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        conn = self._conn()
        self._member_of = set(conn.groups)
        mine = sorted(self._member_of)
        with self._stall():  # the listing and the announcement may wait on the backend
            all_groups, users = await self.users.listing()
            complete = self.hello_users_max is None or len(users) <= self.hello_users_max
            hello = Hello(
                user=self.user.username,
                groups=mine,
                all_groups=sorted({*all_groups, *mine}),
                users=users if complete else [],
                users_complete=None if complete else False,
            )
            await self._send_frame(hello.frame())  # the socket may have been revoked meanwhile
            if self.announce_presence:
                await presence_batcher(self.registry).opened(self, conn, mine)

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._buckets:
            now = self.clock()
            wait = take_all(self._buckets, now)
            if wait is not None:
                await self._refuse_flood(now, wait)
                return
        data = self.kwargs.get("text")
        if data is None:
            data = self.kwargs.get("bytes") or b""
        message = decode_inbound(data, max_text_bytes=self.max_text_bytes)
        if isinstance(message, InboundError):
            await self.error(message.code, message.detail)
            return
        with self._stall():
            await self.handle(message)

    @contextlib.contextmanager
    def _stall(self) -> Iterator[None]:
        """Server-side work the client's next frames wait for, unread (the backend may be slow,
        or down until a timeout): the time is the server's, credited to the rate limits."""
        buckets = self._buckets
        if not buckets:
            yield
            return
        now = self.clock()
        for bucket in buckets:
            bucket.begin_stall(now)
        try:
            yield
        finally:
            end = self.clock()
            for bucket in buckets:
                bucket.end_stall(end)

    async def on_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.announce_presence and self._member_of:
            self._announce(sorted(self._member_of))

    async def _finish(
        self, exc: BaseException | None, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        try:
            return await super()._finish(exc, scope, receive, send)
        finally:
            shared = _shared(self.registry)
            user, self._user_key = self._user_key, None
            if user is not None:  # its last socket lets the user's bucket go (once refilled)
                shared.users.release(user, self.clock())
            if shared.undelivered.pending:  # a line may be due though nobody sends now
                shared.undelivered.report(self.clock())

    async def join(self, group: str) -> None:
        await super().join(group)
        self._member_of.add(group)

    async def leave(self, group: str) -> None:
        await super().leave(group)
        self._member_of.discard(group)

    # -- routing -----------------------------------------------------------------------------

    async def handle(self, message: InboundMessage) -> None:
        """Route one valid message (or answer a presence request)."""
        if isinstance(message, PresenceIn):
            try:
                for group in sorted(self._conn().groups):
                    await self._send_frame(await self.presence(group))
            except BackendUnavailable:  # presence spans processes: it needs the backend
                unavailable = ErrorFrame(
                    error=ErrorCode.UNAVAILABLE,
                    detail="presence unavailable, try again",
                    retry_after=self.retry_after,
                )
                await self._send_frame(unavailable.frame())
            return
        if not await self.authorize(message):
            await self.error(ErrorCode.FORBIDDEN, "you may not send this message")
            return
        me = self._conn()
        mine = me.user_id
        message_id = message.id or new_message_id()
        try:
            if isinstance(message, GroupIn):
                if not await self.group_exists(message.group):
                    await self.error(ErrorCode.UNKNOWN_GROUP, f"no group {message.group!r}")
                    return
                frame = self._envelope(message, group=message.group, message_id=message_id)
                await self.registry.send_group(message.group, frame)
                if self.echo_to_sender and mine and message.group not in me.groups:
                    await self._echo(mine, frame)
            elif isinstance(message, DirectIn):
                target = await self.resolve_user(message.user_name)
                if target is None:
                    await self.error(ErrorCode.UNKNOWN_USER, f"no user {message.user_name!r}")
                    return
                frame = self._envelope(message, to=target.username, message_id=message_id)
                await self.registry.send_user(target.id, frame)
                if self.echo_to_sender and mine and target.id != mine:
                    await self._echo(mine, frame)
            else:
                await self.registry.broadcast(self._envelope(message, message_id=message_id))
        except BackendUnavailable as exc:
            await self.undelivered(message_id, exc)
            return
        undelivered = _shared(self.registry).undelivered
        if undelivered.pending:  # the backend is back: what it missed is logged when due
            undelivered.report(self.clock())

    async def undelivered(self, message_id: str, exc: BackendUnavailable) -> None:
        """Tell the sender that message ``message_id`` was not sent (or may have been, for
        :class:`DeliveryUnknown`) and when to try again: the server's failure, not the
        client's, so no error budget is spent."""
        unknown = isinstance(exc, DeliveryUnknown)
        _shared(self.registry).undelivered.record(exc, self.clock)
        frame = ErrorFrame(
            error=ErrorCode.UNAVAILABLE,
            detail=(
                "message may have been delivered: send it again with the same id"
                if unknown
                else "message not sent: the server cannot reach its backend, try again"
            ),
            id=message_id,
            delivered="unknown" if unknown else False,
            retry_after=self.retry_after,
        )
        await self._send_frame(frame.frame())

    async def _echo(self, user_id: str, frame: Frame) -> None:
        """The sender's copy for all their tabs. The message itself is out already, so if the
        backend fails now this tab gets its copy directly and no error is reported."""
        try:
            await self.registry.send_user(user_id, frame)
        except BackendUnavailable as exc:
            logger.debug("the sender's copy went to this tab only: %r", exc)
            await self._send_frame(frame)

    def _envelope(
        self,
        message: GroupIn | DirectIn | BroadcastIn,
        *,
        group: str | None = None,
        to: str | None = None,
        message_id: str | None = None,
    ) -> Frame:
        return ChatMessage.frame_of(
            message.type,
            self.user.username,
            message.text,
            message_id or message.id or new_message_id(),
            group=group,
            to=to,
        )

    async def presence(self, group: str) -> Frame:
        """The presence frame of ``group``: usernames online in any process, sorted."""
        online = await self.registry.presence(group)
        names = [await self.username_of(uid) or uid for uid in online]
        return Presence(group=group, users=sorted(set(names), key=str.casefold)).frame()

    def _announce(self, groups: list[str]) -> None:
        """Queue a presence update for ``groups`` (coalesced per group, see PresenceBatcher)."""
        presence_batcher(self.registry).note(self, groups)

    # -- errors and limits -------------------------------------------------------------------

    async def error(self, code: ErrorCode, detail: str) -> None:
        """Send one error frame for the client's own mistake; past the error budget, also
        close with 4408."""
        over = self._errors is not None and not self._errors.hit(self.clock())
        refused = self.registry.refused_frames
        reason = _REFUSAL_REASONS.get(code, "invalid")
        refused[reason] = refused.get(reason, 0) + 1
        await self._send_frame(InboundError(code, detail).frame())
        if over:
            self._log_close(codes.TOO_MANY_ERRORS, f"over {self.error_budget} errors")
            await self.close(codes.TOO_MANY_ERRORS, "too many errors")

    async def _refuse_flood(self, now: float, wait: float) -> None:
        over = self._strikes is not None and not self._strikes.hit(now)
        self.registry.refused_frames["rate_limited"] += 1
        refusal = ErrorFrame(
            error=ErrorCode.RATE_LIMITED,
            detail="slow down: too many messages",
            retry_after=math.ceil(wait * 100) / 100,
        )
        await self._send_frame(refusal.frame())
        if over:
            self._log_close(codes.RATE_LIMITED, f"over {self.rate_limit_strikes} refusals")
            await self.close(codes.RATE_LIMITED, "rate limit exceeded")

    def _log_close(self, code: int, why: str) -> None:
        """One line per socket closed for abuse (never one per refused frame)."""
        conn = self.connection
        logger.warning(
            "closing %s of user %s with %d: %s in %.0f s",
            "a socket" if conn is None else f"socket {conn.id[:8]}",
            None if conn is None else conn.user_id,
            code,
            why,
            self.error_window if code == codes.TOO_MANY_ERRORS else self.rate_limit_window,
        )

    async def _send_frame(self, frame: Frame) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._conn().send(frame)
