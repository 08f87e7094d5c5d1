"""The systems under test: how to start each server and how a client talks to it."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class System:
    """One server under test.

    ``server``: the name ``benchmarks.serve`` starts; ``dialect``: ``ws`` or ``sio``;
    ``redis``: the harness starts a redis-server for it; ``publisher``: the kind of external
    publisher process (Redis variants only); ``split``: frames may carry several
    newline-separated messages; ``opt_in``: only run when asked for by name;
    ``connect_batch``: handshakes in flight at once while connecting clients.
    """

    name: str
    label: str
    family: str
    server: str
    needs: tuple[str, ...] = ()
    path: str = "/ws"
    dialect: str = "ws"
    redis: bool = False
    publisher: str | None = None
    split: bool = False
    opt_in: bool = False
    connect_batch: int = 100


def _native() -> System:
    if importlib.util.find_spec("picows") is not None:
        return System("native", "no-ASGI limit (picows)", "limit", "native-picows")
    return System("native", "no-ASGI limit (websockets)", "limit", "native-websockets")


SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
#: RedisChannelLayer's redis-py pool (100 connections) overflows when ~100 consumers connect
#: at once (``MaxConnectionsError``); even with a larger pool, Channels clients connect 50
#: at a time.
CHANNELS_BATCH = 50

SYSTEMS: tuple[System, ...] = (
    _native(),
    System("raw-asgi", "raw ASGI send loop", "raw", "raw-asgi"),
    System("asgi_groups", "asgi_groups (memory)", "asgi_groups", "asgi_groups"),
    System(
        "asgi_groups-redis",
        "asgi_groups (Redis)",
        "asgi_groups",
        "asgi_groups-redis",
        needs=("asgi_groups.backends.redis", "redis"),
        redis=True,
        publisher="asgi_groups",
    ),
    System(
        "channels-memory",
        "Channels InMemoryChannelLayer",
        "channels",
        "channels-memory",
        needs=("channels", "django"),
        connect_batch=CHANNELS_BATCH,
    ),
    System(
        "channels-redis",
        "Channels RedisChannelLayer",
        "channels",
        "channels-redis",
        needs=("channels", "django", "channels_redis"),
        redis=True,
        publisher="channels-redis",
        connect_batch=CHANNELS_BATCH,
    ),
    System(
        "channels-pubsub",
        "Channels RedisPubSubChannelLayer",
        "channels",
        "channels-pubsub",
        needs=("channels", "django", "channels_redis"),
        redis=True,
        publisher="channels-pubsub",
        connect_batch=CHANNELS_BATCH,
    ),
    System(
        "socketio",
        "python-socketio (default manager)",
        "socketio",
        "socketio",
        needs=("socketio",),
        path=SIO_PATH,
        dialect="sio",
    ),
    System(
        "socketio-redis",
        "python-socketio AsyncRedisManager",
        "socketio",
        "socketio-redis",
        needs=("socketio", "redis"),
        path=SIO_PATH,
        dialect="sio",
        redis=True,
        publisher="socketio",
    ),
    System(
        "asgi_groups-coalesce",
        "asgi_groups (memory, coalesce=16)",
        "asgi_groups",
        "asgi_groups-coalesce",
        split=True,
        opt_in=True,
    ),
    System(
        "asgi_groups-redis-coalesce",
        "asgi_groups (Redis, coalesce=16)",
        "asgi_groups",
        "asgi_groups-redis-coalesce",
        needs=("asgi_groups.backends.redis", "redis"),
        redis=True,
        publisher="asgi_groups",
        split=True,
        opt_in=True,
    ),
)

BY_NAME = {s.name: s for s in SYSTEMS}
#: What ``--coalesce`` adds (the Redis one is run by name, for the external publisher).
COALESCED = "asgi_groups-coalesce"
PEER_FAMILIES = ("channels", "socketio")


def select(names: str | None, *, coalesce: bool = False) -> list[System]:
    """Systems named in ``"a,b,…"`` (all default ones when ``None`` or ``"all"``)."""
    if names is None or names == "all":
        chosen = [s for s in SYSTEMS if not s.opt_in or (coalesce and s.name == COALESCED)]
    else:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BY_NAME]
        if unknown:
            raise SystemExit(f"unknown systems {unknown}; known: {', '.join(BY_NAME)}")
        chosen = [BY_NAME[n] for n in wanted]
        if coalesce and BY_NAME[COALESCED] not in chosen:
            chosen.append(BY_NAME[COALESCED])
    return chosen


#: ASGI servers of the server matrix (``--servers``): the packages each needs. ``uvicorn-<ws>``
#: is uvicorn with that WebSocket implementation (its ``--ws``).
SERVERS: dict[str, tuple[str, ...]] = {
    "uvicorn-websockets-sansio": ("uvicorn", "websockets"),
    "uvicorn-wsproto": ("uvicorn", "wsproto"),
    "hypercorn": ("hypercorn",),
    "granian": ("granian",),
}
#: The systems the server matrix runs under every server (``asgi_groups-coalesce`` too with
#: ``--coalesce``).
MATRIX_SYSTEMS = ("raw-asgi", "asgi_groups")


def parse_servers(text: str) -> tuple[str, ...]:
    """Server names from ``"a,b,…"`` (``"all"``: every one of :data:`SERVERS`)."""
    if text == "all":
        return tuple(SERVERS)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SERVERS]
    if not names or unknown:
        raise ValueError(f"choose from {', '.join(SERVERS)} (or all)")
    return names


def variant(name: str, server: str) -> str:
    """The name of system ``name`` under ``server`` in the server matrix' results."""
    return f"{name}@{server}"


def on_server(name: str, server: str) -> System:
    """System ``name`` served by ``server`` instead of the shared uvicorn: named ``name@server``,
    which ``benchmarks.serve`` understands."""
    system = BY_NAME[name]
    return dataclasses.replace(
        system,
        name=variant(name, server),
        label=f"{system.label} on {server}",
        server=f"{system.server}@{server}",
        needs=(*system.needs, *SERVERS[server]),
        opt_in=True,
    )


def matrix(servers: tuple[str, ...], *, coalesce: bool) -> list[System]:
    """Per server, in turn: the raw ASGI loop, asgi_groups (and its coalescing mode)."""
    names = (*MATRIX_SYSTEMS, "asgi_groups-coalesce") if coalesce else MATRIX_SYSTEMS
    return [on_server(name, server) for server in servers for name in names]


def unavailable(system: System, redis_binary: str) -> str | None:
    """Why ``system`` cannot run here (a missing package or feature), or None."""
    for module in system.needs:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return f"{module} is not installed"
    if system.redis and shutil.which(redis_binary) is None:
        return f"{redis_binary} not found"
    if system.split:
        from .apps.groups import coalesce_supported

        if not coalesce_supported():
            return "the core has no QueueLimits(coalesce=…) yet (proposed API; see README)"
    return None
