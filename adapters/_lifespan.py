"""The registry's lifespan, shared by the Starlette and FastAPI adapters.

``compose`` runs a registry around an app's own lifespan (started first, closed last, the app's
state passed through). One socket's time in the registry is the core's ``Registry.attached``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from asgi_groups.registry import Registry

__all__ = ["LifespanFactory", "compose"]

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
