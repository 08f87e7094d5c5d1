"""The Python client of the recoverable protocol (docs/PROTOCOL.md), over ``websockets``.

One WebSocket to a :class:`~asgi_groups.recoverable.RecoverableView`, kept up across drops:
it reconnects with full-jitter exponential backoff and resumes every channel from the last
position it saw, so that the application gets what it missed, in order and none twice, or is
told plainly that it cannot (:meth:`Client.recovered`). For services, scripts and tests::

    from asgi_groups.client import Client

    async with Client("wss://example.com/ws", headers={"Cookie": "session=..."}) as client:
        async for message in client:
            print(message.channel, message.offset, message.data)

Needs the ``client`` extra (``pip install "asgi-groups[client]"``, i.e. ``websockets``).

**Tokens.** With ``token=`` (a function giving the token, sync or async) the client asks for a
token before every connect and sends it in the handshake (``token_in``: the ``Authorization:
Bearer`` header, the ``access_token`` query parameter or the ``bearer.<token>`` subprotocol).
When the welcome says when the token lapses, the client asks for a fresh one ``refresh_margin``
seconds before (never before half the remaining time) and sends it on the open socket
(:meth:`Client.refresh`); a close with 4401 reconnects once with a fresh token.

**Reading.** A background task reads the socket at all times, whether or not the application
calls :meth:`Client.recv`, so that the server never sees a slow application as a slow reader
(which it would close with 1013). What was read waits in an internal queue of at most
``max_pending`` messages. When the application lets it fill, the client stops taking
messages, closes its socket itself (code 4000, "application fell behind"), and once the
application has taken half of them, reconnects and resumes from the last message it queued:
memory stays bounded and, within the server's history, nothing is lost. Messages without a
position (channels without history, the application's own frames) cannot be resumed: those
that arrive while the queue is full are lost.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import random
import ssl as _ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets import exceptions as wsx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from .errors import AsgiGroupsError
from .history import Position

__all__ = [
    "ChannelStatus",
    "Client",
    "ClientClosed",
    "ClientError",
    "History",
    "HistoryError",
    "Message",
    "NotConnected",
    "OfflinePolicy",
    "OfflineQueueFull",
    "Recovered",
    "RefreshError",
    "Refreshed",
    "State",
    "TokenPlacement",
    "TokenSource",
]

logger = logging.getLogger("asgi_groups.client")

State: TypeAlias = Literal["connecting", "open", "reconnecting", "closed", "failed"]
OfflinePolicy: TypeAlias = Literal["queue", "reject"]
TokenPlacement: TypeAlias = Literal["header", "subprotocol", "query"]
#: Gives the token the socket authenticates with (a fresh one each call, when it can).
TokenSource: TypeAlias = Callable[[], "str | Awaitable[str]"]

MiB = 1024 * 1024
#: Close codes after which the client stops in state "failed": policy, logged out, forbidden.
TERMINAL_CODES = frozenset({1008, 4401, 4403})
#: The close of a socket whose credential lapsed or was revoked.
UNAUTHORIZED = 4401
#: How a token rides in the handshake: the server's ``SubprotocolToken`` / ``QueryToken``.
TOKEN_SUBPROTOCOL_PREFIX = "bearer."
TOKEN_QUERY_PARAMETER = "access_token"
#: A close with this code from the server stops the client in state "closed".
NORMAL_CLOSE = 1000
#: Close codes after which the client waits ``max_delay``: too many errors, rate limited.
THROTTLE_CODES = frozenset({4408, 4429})
#: Handshakes refused with these HTTP statuses stop the client (as the close code given).
REFUSED = {401: 4401, 403: 4403}
#: The code of the client's own closes: no welcome in time, or the application fell behind.
CLIENT_CLOSE = 4000
#: A connection that ended without a close frame (or never opened).
ABNORMAL = 1006
#: Caps the backoff exponent so that ``min_delay * 2 ** n`` stays finite.
MAX_EXPONENT = 30


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One message: ``channel`` is None for frames that are not ``ag.message`` (the
    application's own); ``epoch`` / ``offset`` are None on channels without history."""

    channel: str | None
    data: Any  # a JSON value, a str (text that is not JSON), or bytes (binary)
    epoch: str | None = None
    offset: int | None = None

    @property
    def position(self) -> Position | None:
        """Where the message stands in its channel, when it has history."""
        if self.epoch is None or self.offset is None:
            return None
        return Position(self.epoch, self.offset)


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One channel of a welcome: recovered or why not (``reason``), and where it goes on from."""

    recovered: bool
    reason: str | None
    position: Position | None


@dataclass(frozen=True, slots=True)
class Recovered:
    """What one welcome said: ``recovered`` False means reload the state of the channels whose
    status is not recovered (their newest messages: :meth:`Client.history`)."""

    recovered: bool
    channels: dict[str, ChannelStatus]


@dataclass(frozen=True, slots=True)
class Refreshed:
    """The server's answer to a refresh: the socket now lives until ``expires_at`` (Unix time),
    ``expires_in`` seconds from the answer by the server's clock (None: never lapses)."""

    expires_at: float | None
    expires_in: float | None


@dataclass(frozen=True, slots=True)
class History:
    """The answer to :meth:`Client.history`: the channel's newest position and newest kept
    messages, oldest first."""

    channel: str
    position: Position | None
    messages: list[Message]


# -- errors ------------------------------------------------------------------------------------


class ClientError(AsgiGroupsError):
    """Base class of the client's errors."""


class NotConnected(ClientError):
    """No open socket: offline under the "reject" policy, ``history()`` while not open or
    whose socket dropped before the answer, or :meth:`Client.connect` not called."""

    def __init__(self, state: State, detail: str = "") -> None:
        super().__init__(f"not connected (state: {state}){f': {detail}' if detail else ''}")
        self.state = state


class ClientClosed(NotConnected):
    """The client stopped: closed (``close()``, or the server closed with 1000) or failed (a
    terminal close code, a refused handshake, too many failed handshakes).

    ``code`` / ``reason``: the close that stopped it (4401 / 4403 for a handshake refused with
    HTTP 401 / 403, whose status is in ``status``; 1006 after too many failed handshakes).
    """

    def __init__(self, state: State, code: int, reason: str, status: int | None = None) -> None:
        super().__init__(state, f"{code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.status = status


class OfflineQueueFull(ClientError):
    """``send()`` while offline with ``max_queued`` sends already waiting."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"offline queue full ({limit} sends waiting)")
        self.limit = limit


class HistoryError(ClientError):
    """The server refused a history request: ``error`` is "invalid", "forbidden",
    "no_history" or "unavailable" (try again)."""

    def __init__(self, error: str, detail: str, channel: str) -> None:
        super().__init__(f"history of {channel}: {error}{f' ({detail})' if detail else ''}")
        self.error = error
        self.detail = detail
        self.channel = channel


class RefreshError(ClientError):
    """A token refresh failed; the socket runs on until its old expiry. ``error``: the
    server's "refresh_refused" (the token is not valid, or names another user) or
    "refresh_failed" (it cannot check it now), or "token_failed" (the ``token`` callable raised
    or gave no string) or "no_token" (the client has none)."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"token refresh: {error}{f' ({detail})' if detail else ''}")
        self.error = error
        self.detail = detail


# -- the client --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resume:
    """In the inbox after the messages of the previous socket: where the welcome goes on from."""

    positions: dict[str, Position]


class _Signal:
    """Wakes every task waiting for it; no waiter, no cost."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def fire(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()


class Client:
    """A connection to a ``RecoverableView`` that reconnects and resumes until closed.

    ``url``: ws(s):// (http(s):// is taken as ws(s)://). ``headers``: extra handshake headers
    (a session cookie, an Authorization token). ``origin``: the Origin header, for servers that
    check it. ``positions``: where to resume from, e.g. :attr:`positions` saved by an earlier
    run of this process. ``ssl``: a context for wss:// (default: the system's).

    Limits and timings (seconds):

    * ``min_delay`` (0.5) / ``max_delay`` (30): reconnect after a random delay in
      [0, min(max_delay, min_delay * 2**n)], n the attempts since the last welcome; after a
      close with 4408 or 4429, exactly ``max_delay``.
    * ``max_handshake_failures`` (5): handshakes in a row answered with an HTTP 4xx error
      (a wrong path, say) after which the client stops in state "failed"; None retries for
      ever. HTTP 401 / 403 stop at once. Network failures and 5xx answers (a server
      restarting, a proxy without a backend) never stop it: it retries with the backoff.
    * ``offline`` ("queue"): what :meth:`send` does while not open: "queue" keeps the frame
      (sent in order after the next welcome; dropped by :meth:`close`), "reject" raises
      :class:`NotConnected`. ``max_queued`` (100): frames kept; one more raises
      :class:`OfflineQueueFull`.
    * ``max_pending`` (10000): messages read but not yet taken by :meth:`recv`; when full the
      client closes its socket and resumes once half were taken (see the module's doc).
    * ``open_timeout`` (10): for the TCP and WebSocket handshakes. ``welcome_timeout`` (10):
      for the welcome after the hello, else the socket is closed (4000) and replaced.
      ``history_timeout`` (10): for one :meth:`history` answer (``TimeoutError``).
      ``close_timeout`` (10): for a closing handshake. None: no limit, for each.
    * ``ping_interval`` (20) / ``ping_timeout`` (20): a ping every ``ping_interval``; no pong
      within ``ping_timeout`` means the connection is dead: it is dropped at once, without a
      closing handshake (a cut without a close is noticed within about the sum of the two).
      None disables pings.
    * ``max_size`` (16 MiB): the largest frame accepted (a history answer holds up to
      ``limit`` messages); a larger one closes the socket (1009) and the client reconnects.

    Tokens (see the module's doc): ``token``, a callable giving the token (sync or async),
    called before every connect and every refresh; ``token_in`` ("header"): where it goes in
    the handshake, ``Authorization: Bearer`` ("header"), ``?access_token=`` ("query") or the
    offered subprotocol ``bearer.<token>`` ("subprotocol"). ``refresh_margin`` (30): refresh
    this long before the token lapses, but not before half its remaining time has passed.
    ``refresh_timeout`` (10): for one refresh answer. ``on_refresh``: called with the outcome
    of each refresh the client makes by itself, a :class:`Refreshed` or the error
    (:class:`RefreshError`, ``TimeoutError``). A refresh that fails is also logged (WARNING)
    and the socket runs until its token lapses; its close (4401) reconnects once with a fresh
    token; a second 4401 with no successful refresh in between stops the client.

    ``on_state``: called with the new :attr:`state` at each change (in the client's task; it
    must not block). Every welcome also queues a :class:`Recovered`: :meth:`recovered`.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        origin: str | None = None,
        positions: Mapping[str, Position] | None = None,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        max_handshake_failures: int | None = 5,
        offline: OfflinePolicy = "queue",
        max_queued: int = 100,
        max_pending: int = 10_000,
        open_timeout: float | None = 10.0,
        welcome_timeout: float | None = 10.0,
        history_timeout: float | None = 10.0,
        close_timeout: float | None = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_size: int | None = 16 * MiB,
        ssl: _ssl.SSLContext | None = None,
        on_state: Callable[[State], object] | None = None,
        token: TokenSource | None = None,
        token_in: TokenPlacement = "header",
        refresh_margin: float = 30.0,
        refresh_timeout: float | None = 10.0,
        on_refresh: Callable[[Refreshed | Exception], object] | None = None,
    ) -> None:
        if url.startswith(("http://", "https://")):
            url = "ws" + url[4:]
        try:
            parse_uri(url)
        except wsx.InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {url!r}") from exc
        if min_delay < 0 or max_delay < 0:
            raise ValueError("min_delay and max_delay must be >= 0")
        if max_handshake_failures is not None and max_handshake_failures < 1:
            raise ValueError("max_handshake_failures must be at least 1 (or None)")
        if offline not in ("queue", "reject"):
            raise ValueError(f'offline must be "queue" or "reject", not {offline!r}')
        if max_queued < 0:
            raise ValueError("max_queued must be >= 0")
        if token is not None and not callable(token):
            raise TypeError("token must be a callable giving the token (sync or async)")
        if token_in not in ("header", "subprotocol", "query"):
            raise ValueError(f"token_in must be header, subprotocol or query, not {token_in!r}")
        if refresh_margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        if max_pending < 2:
            raise ValueError("max_pending must be at least 2")
        for name, value in (
            ("open_timeout", open_timeout),
            ("welcome_timeout", welcome_timeout),
            ("history_timeout", history_timeout),
            ("close_timeout", close_timeout),
            ("refresh_timeout", refresh_timeout),
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or None)")
        self.url = url
        self.headers = dict(headers or {})
        self.origin = origin
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.max_handshake_failures = max_handshake_failures
        self.offline: OfflinePolicy = offline
        self.max_queued = max_queued
        self.max_pending = max_pending
        self.open_timeout = open_timeout
        self.welcome_timeout = welcome_timeout
        self.history_timeout = history_timeout
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_size = max_size
        self.ssl = ssl
        self.on_state = on_state
        self.token = token
        self.token_in: TokenPlacement = token_in
        self.refresh_margin = refresh_margin
        self.refresh_timeout = refresh_timeout
        self.on_refresh = on_refresh

        self._state: State = "closed"
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._stopping = False
        self._stopped: tuple[State, int, str, int | None] | None = None
        self._last_close: tuple[int, str] | None = None
        #: Positions of the messages taken off the socket: the hello's, and duplicate checks.
        self._received: dict[str, Position] = dict(positions or {})
        #: Positions of the messages ``recv()`` returned: what :attr:`positions` shows.
        self._consumed: dict[str, Position] = dict(self._received)
        self._inbox: deque[Message | _Resume] = deque()
        self._pending = 0
        self._behind = False
        self._welcomed = False
        self._outbox: deque[str | bytes] = deque()
        #: Requests waiting for their answer: a history (its channel) or a refresh (None).
        self._requests: dict[int, tuple[asyncio.Future[Any], str | None]] = {}
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        #: A 4401 already reconnected with a fresh token, and no refresh succeeded since.
        self._reauthenticated = False
        self._next_id = 1
        self._recoveries: deque[Recovered] = deque()
        self._welcome: dict[str, Any] | None = None
        self._duplicates = 0
        self._arrived = _Signal()  # a message, or the client stopped
        self._recovery = _Signal()  # a Recovered, or the client stopped
        self._changed = _Signal()  # the state changed
        self._taken = _Signal()  # recv() took a message while the client is behind

    # -- properties ------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """ "connecting" until the first welcome, "open" when welcomed, "reconnecting" between
        sockets, "closed" before :meth:`connect` and after :meth:`close`, or "failed"."""
        return self._state

    @property
    def positions(self) -> dict[str, Position]:
        """A copy of the position of the last message :meth:`recv` returned, per channel
        (after a welcome: where each channel goes on from). Save it to resume after a restart."""
        return dict(self._consumed)

    @property
    def welcome(self) -> dict[str, Any] | None:
        """The last ``ag.welcome`` as received (None before the first)."""
        return None if self._welcome is None else dict(self._welcome)

    @property
    def pending(self) -> int:
        """Messages read from the socket that :meth:`recv` has not returned yet."""
        return self._pending

    @property
    def duplicates(self) -> int:
        """Messages dropped because their position was not past the one held."""
        return self._duplicates

    @property
    def last_close(self) -> tuple[int, str] | None:
        """Code and reason of the last socket that closed (1006: without a close frame)."""
        return self._last_close

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Start (unless running) and wait for the first welcome; raises :class:`ClientClosed`
        if the client stops first. Bound the wait with ``asyncio.timeout`` if needed."""
        started = self._task is None or self._task.done()
        if started:
            self._stopping = False
            self._stopped = None
            self._reauthenticated = False
            self._set_state("connecting")
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await self.wait_open()
        except BaseException:
            if started:  # cancelled or timed out: leave nothing running behind
                await self.close()
            raise

    async def wait_open(self) -> None:
        """Wait until the state is "open"; raises :class:`ClientClosed` once stopped."""
        while self._state != "open":
            self._raise_if_stopped()
            if self._task is None:
                raise NotConnected(self._state, "connect() was not called")
            await self._changed.wait()

    async def close(self) -> None:
        """Close the socket (1000) and stop reconnecting; queued sends are dropped, messages
        already read stay available to :meth:`recv`."""
        task = self._task
        if task is None or self._stopped is not None:
            return
        self._stopping = True
        try:
            ws = self._ws
            if ws is not None:
                await ws.close()
        finally:
            task.cancel()
            await asyncio.wait({task})
            if self._stopped is None:
                self._stop("closed", NORMAL_CLOSE, "closed by the client")

    # -- receiving -------------------------------------------------------------------------

    async def recv(self) -> Message:
        """The next message, waiting for one; raises :class:`ClientClosed` once the client has
        stopped and every message read before was returned."""
        while True:
            inbox = self._inbox
            if inbox:
                item = inbox.popleft()
                assert isinstance(item, Message)
                self._pending -= 1
                if item.channel is not None and item.epoch is not None and item.offset is not None:
                    self._consumed[item.channel] = Position(item.epoch, item.offset)
                while inbox and isinstance(head := inbox[0], _Resume):
                    inbox.popleft()
                    self._consumed = dict(head.positions)
                if self._behind and self._pending <= self.max_pending // 2:
                    self._taken.fire()
                return item
            self._raise_if_started()
            await self._arrived.wait()

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Message:
        """Messages until the client is closed; a failure raises :class:`ClientClosed`."""
        try:
            return await self.recv()
        except ClientClosed as exc:
            if exc.state == "closed":
                raise StopAsyncIteration from None
            raise

    async def recovered(self) -> Recovered:
        """The next welcome's :class:`Recovered` (one per welcome, kept until taken, the first
        one included); raises :class:`ClientClosed` once stopped and none is left."""
        while not self._recoveries:
            self._raise_if_started()
            await self._recovery.wait()
        return self._recoveries.popleft()

    # -- sending ---------------------------------------------------------------------------

    async def send(self, data: Any) -> None:
        """Send an application frame: str as text, bytes as binary, anything else as JSON.

        While not open: queued or refused (``offline``); raises :class:`ClientClosed` once
        stopped, :class:`OfflineQueueFull`, or ``ValueError`` for an object whose ``type``
        starts with "ag." (the protocol's).
        """
        frame = _outbound(data)
        self._raise_if_stopped()
        ws = self._ws
        if self._state == "open" and ws is not None:
            try:
                await ws.send(frame)
                return
            except wsx.ConnectionClosed:
                pass  # dropped just now: treated as offline
        if self._state == "closed":
            raise NotConnected(self._state, "connect() was not called")
        if self.offline == "reject":
            raise NotConnected(self._state)
        if len(self._outbox) >= self.max_queued:
            raise OfflineQueueFull(self.max_queued)
        self._outbox.append(frame)

    async def history(self, channel: str, limit: int = 50) -> History:
        """The newest ``limit`` kept messages of ``channel`` (one the connection receives).

        Raises :class:`HistoryError` when the server refuses, ``TimeoutError`` after
        ``history_timeout``, :class:`NotConnected` when not open or if the socket drops first.
        """
        ws = self._open_socket()
        fields = {"channel": channel, "limit": limit}
        history: History = await self._request(ws, "ag.history", fields, channel)
        return history

    async def refresh(self) -> Refreshed:
        """Send a fresh token (from the ``token`` callable) on the open socket, which then
        lives until that token lapses. The client does this by itself before the token lapses.

        Raises :class:`RefreshError` (the old expiry stands), ``TimeoutError`` after
        ``refresh_timeout``, :class:`NotConnected` when not open or if the socket drops first.
        """
        if self.token is None:
            raise RefreshError("no_token", "the client has no token option")
        ws = self._open_socket()
        token = await self._fetch_token()
        if ws is not self._ws:
            raise NotConnected(self._state, "the connection dropped")
        refreshed: Refreshed = await self._request(ws, "ag.refresh", {"token": token}, None)
        return refreshed

    def _open_socket(self) -> ClientConnection:
        """The socket, welcomed; else :class:`NotConnected` (or :class:`ClientClosed`)."""
        self._raise_if_stopped()
        ws = self._ws
        if self._state != "open" or ws is None:
            raise NotConnected(self._state)
        return ws

    async def _request(
        self, ws: ClientConnection, kind: str, fields: dict[str, Any], channel: str | None
    ) -> Any:
        """Send a request frame and wait for its answer (a history's, or a refresh's: None)."""
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = (future, channel)
        request = {"type": kind, "id": request_id, **fields}
        timeout = self.history_timeout if channel is not None else self.refresh_timeout
        try:
            await ws.send(json.dumps(request, ensure_ascii=False))
            async with asyncio.timeout(timeout):
                return await future
        except wsx.ConnectionClosed:
            raise NotConnected(self._state, "the connection dropped") from None
        finally:
            self._requests.pop(request_id, None)

    async def _fetch_token(self) -> str:
        """A token from the ``token`` callable; :class:`RefreshError` "token_failed" if none."""
        assert self.token is not None
        try:
            token = self.token()
            if inspect.isawaitable(token):
                token = await token
        except Exception as exc:
            raise RefreshError("token_failed", repr(exc)) from exc
        if not isinstance(token, str) or not token:
            raise RefreshError("token_failed", "the token callable gave no token")
        return token

    # -- internals: the connection loop ----------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except Exception as exc:  # a bug: stop plainly rather than hang
            logger.exception("client of %s stopped on an error", self.url)
            self._stop("failed", 1011, f"client error: {exc!r}")

    async def _connect_loop(self) -> None:
        attempt = 0  # reconnects since the last welcome: the backoff exponent
        failures = 0  # attempts in a row that failed before the socket opened
        while not self._stopping:
            failure: str | None = None
            try:
                ws = await self._open()
            except wsx.InvalidStatus as exc:
                status = exc.response.status_code
                if status in REFUSED:
                    self._last_close = (REFUSED[status], f"handshake refused: HTTP {status}")
                    self._stop("failed", *self._last_close, status)
                    return
                failure = f"HTTP {status}"
                if 400 <= status < 500:  # an answer that will not change by itself
                    failures += 1
            except (OSError, TimeoutError, EOFError, wsx.WebSocketException) as exc:
                failure = str(exc) or type(exc).__name__  # the network or a restart: retry
            except RefreshError as exc:  # no token to connect with
                failure = str(exc)
                failures += 1
            if failure is not None:
                logger.info("connecting to %s failed: %s", self.url, failure)
                limit = self.max_handshake_failures
                if limit is not None and failures >= limit:
                    reason = f"{failures} connection attempts in a row failed; last: {failure}"
                    self._last_close = (ABNORMAL, reason)
                    self._stop("failed", ABNORMAL, reason)
                    return
                self._set_state("reconnecting")
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            failures = 0
            code, reason, own = await self._session(ws)
            if self._stopping:
                return
            self._last_close = (code, reason)
            logger.info("socket to %s closed: %d %s", self.url, code, reason)
            if self._welcomed:
                attempt = 0
            if not own and code == NORMAL_CLOSE:
                self._stop("closed", code, reason)
                return
            if not own and code in TERMINAL_CODES and not self._reauthenticate(code):
                self._stop("failed", code, reason)
                return
            self._set_state("reconnecting")
            if self._behind:  # resume once the application took half of what waits
                while self._pending > self.max_pending // 2 and not self._stopping:
                    await self._taken.wait()
                continue
            delay = self.max_delay if code in THROTTLE_CODES else self._backoff(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    def _reauthenticate(self, code: int) -> bool:
        """Whether a close with ``code`` is a lapsed token to replace once with a fresh one."""
        if code != UNAUTHORIZED or self.token is None or self._reauthenticated:
            return False
        self._reauthenticated = True
        logger.info("the token of %s lapsed: reconnecting with a fresh one", self.url)
        return True

    async def _open(self) -> ClientConnection:
        options: dict[str, Any] = {}
        if self.ssl is not None:
            options["ssl"] = self.ssl
        url, headers = self.url, self.headers
        if self.token is not None:
            token = await self._fetch_token()
            if self.token_in == "header":
                headers = {**headers, "Authorization": f"Bearer {token}"}
            elif self.token_in == "query":
                url = _with_query(url, TOKEN_QUERY_PARAMETER, token)
            else:
                options["subprotocols"] = [Subprotocol(TOKEN_SUBPROTOCOL_PREFIX + token)]
        return await connect(
            url,
            origin=Origin(self.origin) if self.origin is not None else None,
            additional_headers=headers,
            open_timeout=self.open_timeout,
            ping_interval=None,  # the client's own keepalive drops a dead link at once
            close_timeout=self.close_timeout,
            max_size=self.max_size,
            max_queue=None,  # read at all times: flow control is the client's own (max_pending)
            **options,
        )

    async def _session(self, ws: ClientConnection) -> tuple[int, str, bool]:
        """Serve one socket until it closes: (code, reason, closed by the client itself)."""
        self._ws = ws
        self._welcomed = False
        self._behind = False
        own: tuple[int, str] | None = None
        code, reason = ABNORMAL, ""
        deadline = asyncio.timeout(self.welcome_timeout)
        keepalive = asyncio.create_task(self._keepalive(ws)) if self.ping_interval else None
        try:
            hello = {"type": "ag.hello", "positions": _positions_json(self._received)}
            async with deadline:
                try:
                    await ws.send(json.dumps(hello, ensure_ascii=False))
                    while True:
                        await self._frame(ws, await ws.recv(), deadline)
                        if self._behind and own is None:
                            own = (CLIENT_CLOSE, "application fell behind")
                            await ws.close(*own)
                except wsx.ConnectionClosed as exc:
                    if exc.rcvd is not None:
                        code, reason = exc.rcvd.code, exc.rcvd.reason
        except TimeoutError:
            if not deadline.expired():
                raise
            own = (CLIENT_CLOSE, "no welcome")
            await ws.close(*own)
        finally:
            if keepalive is not None:
                keepalive.cancel()
            self._schedule_refresh(None)
            if self._refresh_task is not None:  # the socket it refreshes is gone
                self._refresh_task.cancel()
                self._refresh_task = None
            self._ws = None
            for future, _ in self._requests.values():
                if not future.done():
                    future.set_exception(NotConnected("reconnecting", "the connection dropped"))
        if own is not None:
            return own[0], own[1], True
        return code, reason, False

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Ping every ``ping_interval``; no pong within ``ping_timeout``: drop the link now.

        (A closing handshake over a dead link would wait ``close_timeout`` more.)
        """
        assert self.ping_interval is not None
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                pong = await ws.ping()
                async with asyncio.timeout(self.ping_timeout):
                    await pong
            except TimeoutError:
                logger.info(
                    "no pong from %s in %s s: dropping the link", self.url, self.ping_timeout
                )
                ws.transport.abort()
                return
            except wsx.ConnectionClosed:
                return

    async def _frame(
        self, ws: ClientConnection, raw: str | bytes, deadline: asyncio.Timeout
    ) -> None:
        if self._behind:  # nothing more from this socket: a gap would follow
            return
        if isinstance(raw, bytes):
            self._take(Message(None, raw))
            return
        for is_json, value in _split(raw):
            if self._behind:
                return
            if not (is_json and _is_protocol(value)):
                self._take(Message(None, value))
                continue
            kind = value["type"]
            if kind == "ag.message":
                self._message(value)
            elif kind == "ag.welcome":
                await self._on_welcome(ws, value, deadline)
            elif kind == "ag.history":
                self._history_answer(value)
            elif kind == "ag.error":
                self._error(value)
            elif kind == "ag.refreshed":
                self._refreshed(value)
            # any other ag. frame: a newer protocol's, not for the application

    def _take(self, message: Message) -> bool:
        """Queue ``message`` for ``recv()``; False (and behind) when the inbox is full."""
        if self._behind or self._pending >= self.max_pending:
            self._behind = True
            return False
        self._inbox.append(message)
        self._pending += 1
        self._arrived.fire()
        return True

    def _message(self, body: dict[str, Any]) -> None:
        channel = body.get("channel")
        if not isinstance(channel, str):
            return
        position = _position(body)
        if position is not None:
            held = self._received.get(channel)
            if held is not None and held.epoch == position.epoch and position.offset <= held.offset:
                self._duplicates += 1
                return
        try:
            data = _decoded(body)
        except ValueError:
            logger.warning("dropped a message on %s with bad base64", channel)
            data = None
        else:
            epoch, offset = (position.epoch, position.offset) if position else (None, None)
            if not self._take(Message(channel, data, epoch, offset)):
                return
        if position is not None:
            self._received[channel] = position

    async def _on_welcome(
        self, ws: ClientConnection, body: dict[str, Any], deadline: asyncio.Timeout
    ) -> None:
        if self._welcomed:
            return
        self._welcomed = True
        deadline.reschedule(None)
        channels = body.get("channels")
        statuses: dict[str, ChannelStatus] = {}
        positions: dict[str, Position] = {}
        for channel, info in (channels if isinstance(channels, dict) else {}).items():
            status = info if isinstance(info, dict) else {}
            position = _position(status)
            held = self._received.get(channel)
            recovered = status.get("recovered") is True
            reason = status.get("reason")
            if position is not None:
                positions[channel] = position
            elif held is not None and reason != "not subscribed":  # "no history": keep it
                positions[channel] = held
            reason = reason if isinstance(reason, str) and not recovered else None
            statuses[channel] = ChannelStatus(recovered, reason, position)
        self._received = positions
        if self._pending:
            self._inbox.append(_Resume(dict(positions)))
        else:
            self._consumed = dict(positions)
        self._welcome = body
        self._schedule_refresh(body.get("expires_in"))
        flag = body.get("recovered")
        recovered = flag if isinstance(flag, bool) else all(s.recovered for s in statuses.values())
        while self._outbox:  # sends made while offline, in order (new ones queue behind)
            try:
                await ws.send(self._outbox[0])
            except wsx.ConnectionClosed:
                return
            self._outbox.popleft()
        self._set_state("open")
        self._recoveries.append(Recovered(recovered, statuses))
        self._recovery.fire()

    def _history_answer(self, body: dict[str, Any]) -> None:
        request = self._request_of(body)
        if request is None:
            return  # timed out, or not ours
        future, asked = request
        if asked is None:
            return  # a refresh's id: not an answer to it
        answered = body.get("channel")
        channel = answered if isinstance(answered, str) else asked
        messages = []
        try:
            items = body.get("messages")
            for item in items if isinstance(items, list) else ():
                entry = item if isinstance(item, dict) else {}
                offset = entry.get("offset")
                offset = offset if type(offset) is int else None
                epoch = body.get("epoch") if offset is not None else None
                messages.append(
                    Message(
                        channel, _decoded(entry), epoch if isinstance(epoch, str) else None, offset
                    )
                )
        except ValueError:
            future.set_exception(HistoryError("invalid", "bad base64", channel))
            return
        future.set_result(History(channel, _position(body), messages))

    def _error(self, body: dict[str, Any]) -> None:
        error = body.get("error")
        error = error if isinstance(error, str) else "invalid"
        detail = body.get("detail")
        detail = detail if isinstance(detail, str) else ""
        request = self._request_of(body)
        if request is not None:
            future, channel = request
            if channel is None:
                future.set_exception(RefreshError(error, detail))
            else:
                future.set_exception(HistoryError(error, detail, channel))
            return
        logger.warning("server error on %s: %s %s", self.url, error, detail)

    def _request_of(self, body: dict[str, Any]) -> tuple[asyncio.Future[Any], str | None] | None:
        """The request waiting for the answer ``body`` (None: timed out, or not ours)."""
        request_id = body.get("id")
        request = self._requests.get(request_id) if type(request_id) is int else None
        return None if request is None or request[0].done() else request

    def _refreshed(self, body: dict[str, Any]) -> None:
        self._reauthenticated = False
        expires_in = _seconds(body.get("expires_in"))
        self._schedule_refresh(expires_in)
        request = self._request_of(body)
        if request is not None and request[1] is None:
            request[0].set_result(Refreshed(_seconds(body.get("expires_at")), expires_in))

    def _schedule_refresh(self, expires_in: Any) -> None:
        """Refresh ``refresh_margin`` before the token lapses in ``expires_in`` seconds (not
        before half of them), instead of when planned before; None: it never lapses."""
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        remaining = _seconds(expires_in)
        if remaining is None or self.token is None:
            return
        delay = max(remaining - self.refresh_margin, remaining / 2)
        loop = asyncio.get_running_loop()
        self._refresh_timer = loop.call_later(delay, self._start_refresh)

    def _start_refresh(self) -> None:
        self._refresh_timer = None
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.get_running_loop().create_task(self._auto_refresh())

    async def _auto_refresh(self) -> None:
        outcome: Refreshed | Exception
        try:
            outcome = await self.refresh()
        except (RefreshError, TimeoutError) as exc:
            logger.warning(
                "refreshing the token of %s failed: %r; the socket runs until it lapses",
                self.url,
                exc,
            )
            outcome = exc
        except NotConnected:
            return  # the socket dropped: the next one connects with a fresh token
        if self.on_refresh is not None:
            try:
                self.on_refresh(outcome)
            except Exception:
                logger.exception("on_refresh callback failed")

    # -- internals: state ------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.min_delay * 2.0 ** min(attempt, MAX_EXPONENT))
        return random.random() * ceiling

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        self._state = state
        logger.debug("client of %s: %s", self.url, state)
        self._changed.fire()
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                logger.exception("on_state callback failed")

    def _stop(self, state: State, code: int, reason: str, status: int | None = None) -> None:
        self._stopped = (state, code, reason, status)
        self._outbox.clear()
        for future, _ in self._requests.values():
            if not future.done():
                future.set_exception(self._closed())
        self._set_state(state)
        self._arrived.fire()
        self._recovery.fire()
        self._taken.fire()

    def _closed(self) -> ClientClosed:
        assert self._stopped is not None
        return ClientClosed(*self._stopped)

    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise self._closed()

    def _raise_if_started(self) -> None:
        """Raise unless something may still arrive: stopped, or never started."""
        self._raise_if_stopped()
        if self._task is None:
            raise NotConnected(self._state, "connect() was not called")

    def __repr__(self) -> str:
        return f"<Client {self.url} {self._state}>"


# -- frames ------------------------------------------------------------------------------------


def _parse(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except ValueError:
        return False, text


def _split(text: str) -> list[tuple[bool, Any]]:
    """The documents of a text frame: a server may join several with "\\n" (coalescing). A
    multi-line frame that is not such a join (pretty-printed JSON, plain text) stays whole."""
    if "\n" not in text:
        return [_parse(text)]
    parts = [_parse(part) for part in text.split("\n")]
    if all(is_json for is_json, _ in parts):
        return parts
    whole = _parse(text)
    if whole[0]:
        return [whole]
    return parts if any(ok and _is_protocol(value) for ok, value in parts) else [whole]


def _is_protocol(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("type"), str)
        and value["type"].startswith("ag.")
    )


def _position(value: Mapping[str, Any]) -> Position | None:
    epoch, offset = value.get("epoch"), value.get("offset")
    if isinstance(epoch, str) and type(offset) is int:
        return Position(epoch, offset)
    return None


def _seconds(value: Any) -> float | None:
    """A number of seconds from a frame (None: absent, or not a number >= 0)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _with_query(url: str, name: str, value: str) -> str:
    """``url`` with the query parameter ``name`` set to ``value`` (others kept)."""
    parts = urlsplit(url)
    query = [item for item in parse_qsl(parts.query, keep_blank_values=True) if item[0] != name]
    query.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _positions_json(positions: Mapping[str, Position]) -> dict[str, dict[str, Any]]:
    return {ch: {"epoch": p.epoch, "offset": p.offset} for ch, p in positions.items()}


def _decoded(body: Mapping[str, Any]) -> Any:
    """``data``, base64-decoded to bytes when ``encoding`` says so (``ValueError`` if bad)."""
    data = body.get("data")
    if body.get("encoding") == "base64" and isinstance(data, str):
        return base64.b64decode(data, validate=True)
    return data


def _outbound(data: Any) -> str | bytes:
    if isinstance(data, str):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if _is_protocol(data):
        raise ValueError(f"{data['type']!r}: types starting with 'ag.' belong to the protocol")
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
