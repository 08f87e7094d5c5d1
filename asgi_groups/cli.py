"""The ``asgi-groups`` command: manage users and groups, run the demo, send a message.

Exit codes: 0 success, 1 operational error (duplicate user, database or Redis unreachable),
2 usage error (bad arguments, including a URL that cannot be used or a message too large).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asgi_groups.auth.store import DEFAULT_URL, InvalidDatabaseURL, SqlUserStore, StoreError
from asgi_groups.errors import BackendUnavailable, MessageTooLarge

__all__ = ["CliParser", "build_parser", "main"]

URL_ENV = "ASGI_GROUPS_DATABASE_URL"
PASSWORD_ENV = "ASGI_GROUPS_PASSWORD"
REDIS_ENV = "ASGI_GROUPS_REDIS_URL"
#: How many of the deployment's largest groups ``stats`` shows.
LARGEST_SHOWN = 10
#: Seconds ``stats`` waits for one Redis reply.
STATS_TIMEOUT = 5.0

Handler = Callable[[argparse.Namespace], Any]
"""A subcommand: takes the parsed arguments, returns an exit code (or a coroutine of one)."""


class UsageError(Exception):
    """A problem with the command line that argparse cannot see (exit code 2)."""


class CliParser(argparse.ArgumentParser):
    """The top-level parser; ``commands`` is where a new subcommand is added."""

    commands: argparse._SubParsersAction[argparse.ArgumentParser]


def _add_redis(parser: argparse.ArgumentParser) -> None:
    """``--redis URL`` and ``--prefix P``: where the app's processes meet."""
    parser.add_argument(
        "--redis",
        default=os.environ.get(REDIS_ENV),
        metavar="URL",
        help=f"the app's Redis URL (default: ${REDIS_ENV})",
    )
    parser.add_argument(
        "--prefix", default=None, help="the app's key/channel prefix (default: asgi_groups)"
    )


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"SQLAlchemy async database URL (default: ${URL_ENV}, else {DEFAULT_URL})",
    )


def _group(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = commands.add_parser(name, help=summary, description=summary)
    sub = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    return sub


def build_parser() -> CliParser:
    """The full parser; extend it with ``build_parser().commands.add_parser(...)``."""
    parser = CliParser(
        prog="asgi-groups",
        description="Manage the users and groups of an asgi_groups application.",
        epilog="exit status: 0 ok, 1 operational error (e.g. duplicate user, database "
        "unreachable), 2 usage error (including an unusable --url)",
    )
    parser.commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=argparse.ArgumentParser
    )

    db = _group(parser.commands, "db", "database tables")
    create_all = db.add_parser("create-all", help="create the auth tables if missing")
    _add_url(create_all)
    create_all.set_defaults(handler=db_create_all)

    users = _group(parser.commands, "users", "user accounts")
    add = users.add_parser("add", help="create a user", description="Create a user.")
    add.add_argument("username")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password", help=f"the password (or set ${PASSWORD_ENV})")
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="GROUP",
        help="add the user to GROUP (created if needed); repeatable",
    )
    add.add_argument("--first-name", default="", help="the user's first name")
    add.add_argument("--staff", action="store_true", help="mark the user as staff")
    add.add_argument("--superuser", action="store_true", help="mark the user as superuser")
    _add_url(add)
    add.set_defaults(handler=users_add)
    users_list_parser = users.add_parser("list", help="list users with their groups")
    _add_url(users_list_parser)
    users_list_parser.set_defaults(handler=users_list)

    groups = _group(parser.commands, "groups", "groups")
    groups_list_parser = groups.add_parser("list", help="list groups with member counts")
    _add_url(groups_list_parser)
    groups_list_parser.set_defaults(handler=groups_list)

    demo_parser = parser.commands.add_parser(
        "demo",
        help="run the chat example (SQLite + in-memory backend)",
        description="Run the chat example with uvicorn and print its URL and logins.",
    )
    demo_parser.add_argument(
        "--framework", choices=FRAMEWORKS, default="fastapi", help="which app to serve"
    )
    demo_parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    demo_parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    demo_parser.set_defaults(handler=demo)

    send_parser = parser.commands.add_parser(
        "send",
        help="send one message through Redis to a group, a user or everyone",
        description="Publish MESSAGE once through Redis to every process of the app: the "
        "sockets in GROUP, every tab of USER, or every socket.",
    )
    _add_redis(send_parser)
    target = send_parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--group", help="send to every socket in GROUP")
    target.add_argument("--user", metavar="USER_ID", help="send to every tab of USER_ID")
    target.add_argument("--broadcast", action="store_true", help="send to every socket")
    send_parser.add_argument(
        "--json",
        action="store_true",
        help="MESSAGE is JSON: check it and send it as a JSON text frame",
    )
    send_parser.add_argument(
        "--allow-none",
        action="store_true",
        help="exit 0 even when no process of the app listens on the target (else exit 1)",
    )
    send_parser.add_argument("message", metavar="MESSAGE", help="the text to send; - reads stdin")
    send_parser.set_defaults(handler=send)

    stats_parser = parser.commands.add_parser(
        "stats",
        help="show every process of a deployment: connections, users, groups, queues, backend",
        description="Read the stats each process publishes to Redis (asgi_groups.metrics."
        "operations_routes or health.StatsReporter) and show them per process and in total.",
    )
    _add_redis(stats_parser)
    stats_parser.add_argument("--group", help="also show who is in GROUP, over every process")
    stats_parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
    stats_parser.set_defaults(handler=stats)
    return parser


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    else:
        password = os.environ.get(PASSWORD_ENV, "")
        if not password:
            raise UsageError(
                f"a password is required: --password, --password-stdin or ${PASSWORD_ENV}"
            )
    if not password:
        raise UsageError("the password is empty")
    return str(password)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


async def db_create_all(args: argparse.Namespace) -> int:
    async with SqlUserStore(args.url) as store:
        await store.create_all()
        print(f"tables ready in {store.url}")
    return 0


async def users_add(args: argparse.Namespace) -> int:
    password = _read_password(args)
    async with SqlUserStore(args.url) as store:
        try:
            user = await store.create_user(
                args.username,
                password,
                first_name=args.first_name,
                groups=args.groups,
                is_staff=args.staff,
                is_superuser=args.superuser,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    groups = ", ".join(sorted(user.groups)) or "none"
    print(f"created user {user.username!r} (id {user.id}); groups: {groups}")
    return 0


async def users_list(args: argparse.Namespace) -> int:
    async with SqlUserStore(args.url) as store:
        users = await store.list_users()
    if not users:
        print("no users yet; add one with: asgi-groups users add USERNAME")
        return 0
    rows = [
        [
            str(u.id),
            u.username,
            u.first_name,
            _yes(u.is_active),
            _yes(u.is_staff),
            _yes(u.is_superuser),
            ",".join(sorted(u.groups)),
        ]
        for u in users
    ]
    print(_table(["ID", "USERNAME", "FIRST NAME", "ACTIVE", "STAFF", "SUPERUSER", "GROUPS"], rows))
    return 0


async def groups_list(args: argparse.Namespace) -> int:
    async with SqlUserStore(args.url) as store:
        groups = await store.list_groups()
    if not groups:
        print("no groups yet; users add ... --group NAME creates one")
        return 0
    print(_table(["GROUP", "MEMBERS"], [[g.name, str(g.members)] for g in groups]))
    return 0


FRAMEWORKS = ("fastapi", "starlette", "quart")


def demo(args: argparse.Namespace) -> int:
    """Serve ``examples/chat/<framework>_app.py`` from the source checkout under uvicorn,
    with the server settings of :mod:`asgi_groups.servers`."""
    root = Path(__file__).resolve().parent.parent
    module = root / "examples" / "chat" / f"{args.framework}_app.py"
    if not module.exists():
        raise StoreError(
            f"the chat example is not here ({module}); run the demo from a source checkout"
        )
    try:
        import uvicorn  # noqa: F401  (run_uvicorn starts it)
    except ImportError as exc:
        raise StoreError("the demo needs uvicorn: pip install 'asgi-groups[demo]'") from exc
    sys.path.insert(0, str(root))
    from examples.chat.common import SEED_USERS

    print(f"asgi_groups chat demo ({args.framework}) on http://{args.host}:{args.port}/")
    print("log in as any of:")
    for user in SEED_USERS:
        print(f"  {user.username:<8} password {user.password:<8} group {user.group}")
    from asgi_groups.servers import run_uvicorn

    # the recommended settings: frame size limit = the library's, stalled sockets reset, ping,
    # bounded graceful shutdown (see asgi_groups.servers and docs/SECURITY.md)
    run_uvicorn(
        f"examples.chat.{args.framework}_app:app", host=args.host, port=args.port, log_level="info"
    )
    return 0


async def send(args: argparse.Namespace) -> int:
    """Publish one message with a publish-only Redis connection, then disconnect."""
    if not args.redis:
        raise UsageError(f"a Redis URL is required: --redis URL or ${REDIS_ENV}")
    text = sys.stdin.read() if args.message == "-" else args.message
    message: object = text
    if args.json:
        try:
            message = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"MESSAGE is not valid JSON: {exc}") from None
    try:
        from asgi_groups.publish import publish_once
    except ImportError as exc:
        raise StoreError("sending needs redis-py: pip install 'asgi-groups[redis]'") from exc
    options = {} if args.prefix is None else {"prefix": args.prefix}
    try:
        await publish_once(
            args.redis,
            message,
            group=args.group,
            user=args.user,
            broadcast=args.broadcast,
            **options,
        )
    except (ValueError, MessageTooLarge) as exc:
        raise UsageError(str(exc)) from None
    target = (
        f"group {args.group!r}"
        if args.group is not None
        else f"user {args.user!r}"
        if args.user is not None
        else "everyone"
    )
    receivers = await _receivers(args)
    listening = "" if receivers is None else f": {_processes(receivers)} listening"
    print(f"sent {len(text.encode())} bytes to {target}{listening}")
    if receivers == 0:
        prefix = args.prefix or "asgi_groups"
        print(
            f"0 receivers: no process of the app listens on {target} with prefix {prefix!r}; "
            "check --prefix and the Redis URL (the app's own), or pass --allow-none",
            file=sys.stderr,
        )
        return 0 if args.allow_none else 1
    return 0


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


async def _receivers(args: argparse.Namespace) -> int | None:
    """How many processes listen where ``send`` published (None when it cannot be told)."""
    from asgi_groups.channels import BROADCAST, group_channel, user_channel
    from asgi_groups.registry import Registry

    options = {} if args.prefix is None else {"prefix": args.prefix}
    channel = (
        group_channel(args.group)
        if args.group is not None
        else user_channel(args.user)
        if args.user is not None
        else BROADCAST
    )
    async with Registry(args.redis, listen=False, **options) as registry:
        count = getattr(registry.backend, "receivers", None)
        return None if count is None else int(await count(channel))


def _deployment(processes: list[dict[str, Any]]) -> dict[str, Any]:
    """The totals of every process's snapshot, and the largest groups over all of them."""
    total: dict[str, Any] = {
        key: sum(int(p.get(key, 0)) for p in processes)
        for key in ("connections", "users", "messages_sent", "deliveries")
    }
    total["queue_depth"] = max((int(p.get("queue_depth", 0)) for p in processes), default=0)
    total["backends_down"] = sum(1 for p in processes if not p.get("backend", {}).get("up", True))
    sizes: dict[str, int] = {}
    for process in processes:
        for entry in process.get("largest_groups", ()):
            sizes[entry["group"]] = sizes.get(entry["group"], 0) + int(entry["connections"])
    largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:LARGEST_SHOWN]
    total["largest_groups"] = [{"group": g, "connections": n} for g, n in largest]
    return total


async def stats(args: argparse.Namespace) -> int:
    """Read each process's stats hash from Redis; print them per process and in total."""
    if not args.redis:
        raise UsageError(f"a Redis URL is required: --redis URL or ${REDIS_ENV}")
    try:
        from redis.asyncio import from_url
        from redis.exceptions import RedisError

        from asgi_groups.backends.redis import DEFAULT_PREFIX, STATS_KEY
    except ImportError as exc:
        raise StoreError("stats need redis-py: pip install 'asgi-groups[redis]'") from exc
    prefix = args.prefix or DEFAULT_PREFIX
    processes: list[dict[str, Any]] = []
    presence: dict[str, int] | None = None
    try:
        client = from_url(args.redis, socket_timeout=STATS_TIMEOUT)
        async with client:
            async for key in client.scan_iter(match=f"{prefix}:{STATS_KEY}*", count=100):
                raw = await client.hget(key, "json")
                if raw is not None:
                    snapshot = json.loads(raw)
                    snapshot["process_id"] = key.decode().rsplit(":", 1)[1]
                    processes.append(snapshot)
        if args.group is not None:
            from asgi_groups import Registry

            async with Registry(args.redis, prefix=prefix, listen=False) as registry:
                presence = await registry.presence(args.group)
    except (RedisError, OSError) as exc:
        raise BackendUnavailable(f"cannot read stats from Redis: {exc}") from exc
    processes.sort(key=lambda p: (str(p.get("host")), int(p.get("pid", 0))))
    report: dict[str, Any] = {"processes": processes, "total": _deployment(processes)}
    if presence is not None:
        report["presence"] = {"group": args.group, "users": presence}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    rows = [
        [
            f"{p.get('host')}:{p.get('pid')}",
            str(p.get("connections", 0)),
            str(p.get("users", 0)),
            str(p.get("groups", 0)),
            str(p.get("queue_depth", 0)),
            f"{p['backend']['name']} {'up' if p['backend']['up'] else 'DOWN'}",
        ]
        for p in processes
    ]
    total = report["total"]
    rows.append(
        [
            f"total ({len(processes)} process{'' if len(processes) == 1 else 'es'})",
            str(total["connections"]),
            str(total["users"]),
            "",
            str(total["queue_depth"]),
            f"{total['backends_down']} down",
        ]
    )
    print(_table(["process", "connections", "users", "groups", "queue", "backend"], rows))
    if total["largest_groups"]:
        print()
        largest = [[g["group"], str(g["connections"])] for g in total["largest_groups"]]
        print(_table(["group", "connections"], largest))
    if presence is not None:
        print()
        print(
            f"in {args.group!r}: "
            + (", ".join(f"{u} ({n})" for u, n in sorted(presence.items())) or "nobody")
        )
    return 0


def _run(handler: Handler, args: argparse.Namespace) -> int:
    result = handler(args)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return _run(args.handler, args)
    except (UsageError, InvalidDatabaseURL) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
