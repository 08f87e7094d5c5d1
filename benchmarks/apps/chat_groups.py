"""asgi_groups in the chat benchmarks (storm, rooms): ``MessagingView`` as an app deploys it.

A signed session cookie, the users in a store, the directory of groups and users in memory;
rate limits off (the load is the benchmark's). The logins are the cookies a login endpoint
would have set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..chat import Options, Person

SECRET = "storm-benchmark-secret"


def logins(people: list[Person]) -> dict[int, str]:
    """``Cookie`` header per user id."""
    from asgi_groups.sessions import SignedCookie

    cookie = SignedCookie(SECRET)
    return {p.id: "asgi_groups_session=" + cookie.encode({"user_id": str(p.id)}) for p in people}


def create_app(people: list[Person], options: Options, redis_url: str | None) -> Any:
    """``options.user_list=False`` (diagnostic): hellos list no users."""
    from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser
    from asgi_groups.messaging import MessagingView, StaticDirectory
    from asgi_groups.sessions import SignedCookie

    users = [SimpleUser(p.id, p.name, p.groups) for p in people]

    class NoList(StaticDirectory):
        async def listing(self) -> tuple[list[str], list[str]]:
            return (await super().listing())[0], []

    class Chat(MessagingView):
        rate_limit = None
        user_rate_limit = None
        announce_presence = options.presence
        echo_to_sender = options.echo

    registry = Registry(redis_url) if redis_url else Registry()
    directory = StaticDirectory(users) if options.user_list else NoList(users)
    endpoint = Chat.as_asgi(directory=directory, registry=registry)
    return GroupsMiddleware(
        endpoint, registry, sessions=SignedCookie(SECRET), users=InMemoryUsers(users)
    )
