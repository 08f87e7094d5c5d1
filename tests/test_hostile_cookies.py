"""Forged and damaged session cookies against the chat apps' own cookie formats (real uvicorn).

The Starlette chat app signs its cookie with Starlette's ``SessionMiddleware``, the Quart app
with Quart's ``SecureCookieSessionInterface``. For each, a real login cookie is damaged or
re-signed wrongly; every variant must make the socket anonymous (403 on the login-required
chat view), and no server-side log record may contain any part of it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from asgi_groups.auth import SqlUserStore
from examples.chat.common import ChatConfig, prepare_store

from .support.servers import serve

SECRET = "hostile-cookie-suite-secret"
FORTY_DAYS = 40 * 24 * 3600  # older than both frameworks' default lifetimes (14 and 31 days)


def _at(timestamp: int) -> type[TimestampSigner]:
    """A signer whose clock says ``timestamp``."""

    class At(TimestampSigner):
        def get_timestamp(self) -> int:
            return timestamp

    return At


def starlette_cookie(
    session: dict[str, Any], *, key: str = SECRET, salt: bytes | None = None, at: int | None = None
) -> str:
    """A cookie as Starlette's ``SessionMiddleware`` writes it, with the given key/salt/clock."""
    signer_cls = _at(at if at is not None else int(time.time()))
    signer = signer_cls(key) if salt is None else signer_cls(key, salt=salt)
    return signer.sign(base64.b64encode(json.dumps(session).encode())).decode()


def quart_cookie(
    session: dict[str, Any], *, key: str = SECRET, salt: bytes | None = None, at: int | None = None
) -> str:
    """A cookie as Quart / Flask write it, with the given key/salt/clock."""
    serializer = URLSafeTimedSerializer(
        key,
        salt=salt if salt is not None else b"cookie-session",
        signer=_at(at if at is not None else int(time.time())),
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
    )
    return serializer.dumps(session)


Forge = Callable[..., str]


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def variants(real: str, forge: Forge, session: dict[str, Any]) -> dict[str, str]:
    """Every way a cookie can be bad, made from a real login cookie and its session."""
    now = int(time.time())
    return {
        "tampered-payload": _flip(real, 2),
        "tampered-signature": _flip(real, len(real) - 2),
        "truncated": real[: len(real) // 2],
        "signature-dropped": real.rsplit(".", 1)[0],
        "wrong-key": forge(session, key="not-the-secret"),
        "wrong-salt": forge(session, salt=b"another-salt"),
        "expired": forge(session, at=now - FORTY_DAYS),
        "future-dated": forge(session, at=now + 3600),
        "other-user": forge({"user_id": 999}),
        "garbage": "not-a-cookie-at-all",
    }


@dataclass
class ChatSite:
    address: str
    forge: Forge

    async def login_cookie(self) -> str:
        async with httpx.AsyncClient(base_url=f"http://{self.address}") as http:
            response = await http.post("/login", json={"username": "greg", "password": "Greg"})
            assert response.status_code == 200, response.text
            return response.cookies["session"]

    def ws(self, cookie: str) -> Any:
        return connect(
            f"ws://{self.address}/ws",
            origin=f"http://{self.address}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"session={cookie}"},
            open_timeout=5,
        )


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo users, hashed once for the module."""
    path = tmp_path_factory.mktemp("cookies") / "chat.sqlite3"

    async def seed() -> None:
        async with SqlUserStore(f"sqlite+aiosqlite:///{path}") as store:
            await prepare_store(store)

    asyncio.run(seed())
    return path


APPS: dict[str, Forge] = {
    "examples.chat.starlette_app": starlette_cookie,
    "examples.chat.quart_app": quart_cookie,
}


@pytest.fixture(params=list(APPS), ids=["starlette", "quart"])
async def chat_site(
    request: pytest.FixtureRequest, seeded_db: Path, tmp_path: Path
) -> AsyncIterator[ChatSite]:
    module = __import__(request.param, fromlist=["create_app"])
    db = tmp_path / "chat.sqlite3"
    shutil.copyfile(seeded_db, db)
    config = ChatConfig(database_url=f"sqlite+aiosqlite:///{db}", secret_key=SECRET)
    # uvicorn at INFO: its DEBUG level would trace every request header on the wire
    async with serve(module.create_app(config), log_level="info") as address:
        yield ChatSite(address, APPS[request.param])


def server_side(records: list[logging.LogRecord]) -> list[str]:
    """Rendered server-side records (message and traceback). ``websockets.*`` records are the
    test's own client library tracing the request it sends, so they are not the server's."""
    formatter = logging.Formatter("%(name)s %(message)s")
    return [formatter.format(r) for r in records if not r.name.startswith("websockets")]


async def test_bad_cookies_are_anonymous_and_never_logged(
    chat_site: ChatSite, caplog: pytest.LogCaptureFixture
) -> None:
    """Every damaged, mis-signed, expired or future-dated cookie gets 403 on the chat socket,
    and no server log line (at DEBUG) contains the cookie or any signed part of it."""
    real = await chat_site.login_cookie()
    async with chat_site.ws(real) as ws:  # the real one works ...
        assert json.loads(await ws.recv())["type"] == "hello"
    session = {"user_id": 1}
    async with chat_site.ws(chat_site.forge(session)) as ws:  # ... and so does a correct forgery
        assert json.loads(await ws.recv())["user"] == "greg"

    uvicorn_logs = logging.getLogger("uvicorn")  # it does not propagate to the root logger
    uvicorn_logs.addHandler(caplog.handler)
    try:
        for name, bad in variants(real, chat_site.forge, session).items():
            caplog.clear()
            with caplog.at_level(logging.DEBUG), pytest.raises(InvalidStatus) as refused:
                async with chat_site.ws(bad):
                    pass
            assert refused.value.response.status_code == 403, name
            logged = server_side(caplog.records)
            assert any('"WebSocket /ws" 403' in line for line in logged), (name, logged)
            if name != "other-user":  # the rejected cookie is logged, by failure type only
                assert any("session cookie rejected" in line for line in logged), (name, logged)
            secrets = [bad, *(part for part in bad.split(".") if len(part) >= 8)]
            leaked = [line for line in logged for part in secrets if part in line]
            assert not leaked, (name, leaked)
    finally:
        uvicorn_logs.removeHandler(caplog.handler)
