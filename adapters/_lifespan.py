"""Framework-agnostic lifespans the adapters share: the registry's and one connection's.

``compose`` runs a registry around an app's own lifespan (started first, closed last, the app's
state passed through); ``registered`` is one accepted socket's time in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from asgi_groups.connection import Connection
from asgi_groups.registry import Registry
from asgi_groups.types import Send, UserLike

__all__ = ["LifespanFactory", "compose", "groups_for", "registered"]

AppT = TypeVar("AppT")
LifespanFactory = Callable[[AppT], AbstractAsyncContextManager[Any]]


def compose(
    registry: Registry, inner: LifespanFactory[AppT] | None = None
) -> LifespanFactory[AppT]:
    """A lifespan that starts ``registry``, runs ``inner`` inside it, and closes it last."""

    @contextlib.asynccontextmanager
    async def lifespan(app: AppT) -> AsyncIterator[Any]:
        async with registry:
            if inner is None:
                yield None
            else:
                async with inner(app) as state:
                    yield state

    return lifespan


def groups_for(user: UserLike, groups: Iterable[str], user_groups: bool) -> list[str]:
    """``groups`` plus, when asked and logged in, the user's own groups, without repeats."""
    names = list(groups)
    if user_groups and user.is_authenticated:
        names.extend(user.groups)
    return list(dict.fromkeys(names))


@contextlib.asynccontextmanager
async def registered(
    registry: Registry, send: Send, user: UserLike, groups: Iterable[str] = ()
) -> AsyncIterator[Connection]:
    """Register an accepted socket, join ``groups``, and always leave the registry at the end.

    When the library tears a socket down (its close did not complete in time) the handler task
    is cancelled; that cancellation ends the block quietly, as it does in ``WsView``.
    """
    conn = await registry.connect(send, user if user.is_authenticated else None)
    task = asyncio.current_task()
    try:
        for group in groups:
            await registry.join(conn, group)
        yield conn
    except asyncio.CancelledError:
        if not (conn.killed and task is not None):
            raise
        task.uncancel()
    finally:
        conn.finish()
