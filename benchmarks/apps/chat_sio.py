"""python-socketio in the chat benchmarks (storm, rooms), written as its docs show.

The client sends its login in the connect packet's ``auth`` dict (``{"token": …}``, a token
signed by the server, as a login endpoint would issue); the ``connect`` handler checks it, looks
the user up in an in-memory store, keeps the name in the Socket.IO session (``save_session``),
enters the user's rooms and a per-user room (``u:<name>``, for direct messages) and, when
``presence`` is on, ``emit``s a presence event to each room; ``disconnect`` does the same for
the leave. ``group`` and ``direct`` events are sent on with ``emit(..., to=room)``. The default
manager keeps rooms in memory; with ``redis_url``, ``AsyncRedisManager``. Origins: the default
(same host only).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..chat import Options, Person

SECRET = b"storm-benchmark-secret"


def sign(user_id: int) -> str:
    mac = hmac.new(SECRET, str(user_id).encode(), hashlib.sha256).hexdigest()
    return f"{user_id}.{mac}"


def verify(token: object) -> int | None:
    if not isinstance(token, str) or "." not in token:
        return None
    user_id, _, _mac = token.partition(".")
    if not user_id.isdigit() or not hmac.compare_digest(token, sign(int(user_id))):
        return None
    return int(user_id)


def create(
    people: list[Person], options: Options, redis_url: str | None
) -> tuple[Any, dict[int, str]]:
    import socketio

    by_id = {p.id: p for p in people}
    by_name = {p.name: p for p in people}
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, logger=False)

    async def announce(person: Person, online: bool, skip_sid: str | None = None) -> None:
        if options.presence:
            for room in person.groups:
                body = {"group": room, "user": person.name, "online": online}
                await sio.emit("presence", body, to=room, skip_sid=skip_sid)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        user_id = verify(auth.get("token") if isinstance(auth, dict) else None)
        person = by_id.get(user_id) if user_id is not None else None
        if person is None:
            raise socketio.exceptions.ConnectionRefusedError("authentication failed")
        await sio.save_session(sid, {"user": person.name})
        for room in (*person.groups, f"u:{person.name}"):
            await sio.enter_room(sid, room)
        await announce(person, True)

    @sio.event
    async def disconnect(sid: str, reason: Any = None) -> None:
        session = await sio.get_session(sid)
        person = by_name.get(session.get("user", ""))
        if person is not None:
            await announce(person, False, skip_sid=sid)

    @sio.on("group")
    async def group(sid: str, data: dict[str, Any]) -> None:
        me = (await sio.get_session(sid))["user"]
        room = data.get("group")
        if room not in by_name[me].groups:
            await sio.emit("error", {"error": "forbidden"}, to=sid)
            return
        body = {"type": "group", "group": room, "from": me, "text": data.get("text")}
        await sio.emit("message", body | {"ts": time.time()}, to=room)

    @sio.on("direct")
    async def direct(sid: str, data: dict[str, Any]) -> None:
        me = (await sio.get_session(sid))["user"]
        target = data.get("user_name")
        if target not in by_name:
            await sio.emit("error", {"error": "unknown_user"}, to=sid)
            return
        body = {"type": "direct", "to": target, "from": me, "text": data.get("text")}
        body["ts"] = time.time()
        await sio.emit("message", body, to=f"u:{target}")
        if options.echo and target != me:
            await sio.emit("message", body, to=sid)

    return socketio.ASGIApp(sio), {p.id: sign(p.id) for p in people}
