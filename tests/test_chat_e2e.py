"""The chat example end to end: each app under real uvicorn, real WebSocket clients, six users.

One suite, run against the FastAPI, Starlette and Quart apps alike: they must behave the same.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asgi_groups import codes
from asgi_groups.auth import SqlUserStore
from asgi_groups.history import HistoryLimits
from examples.chat.common import (
    DEFAULT_DATABASE_URL,
    DEV_SECRET_KEY,
    SEED_USERS,
    ChatConfig,
    StoreDirectory,
    check_login,
    page,
    prepare_store,
)

from .support.chat import Site, Tab
from .support.servers import serve_process

APPS = [
    "examples.chat.fastapi_app",
    "examples.chat.starlette_app",
    "examples.chat.quart_app",
]
SECRET = "e2e-secret-key-for-the-chat-suite"


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _param(module: str) -> Any:
    name = module.rsplit(".", 1)[-1].removesuffix("_app")
    marks = [] if _exists(module) else [pytest.mark.skip(reason="not written yet")]
    return pytest.param(module, id=name, marks=marks)


@pytest.fixture(scope="module", params=[_param(m) for m in APPS])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    db = tmp_path_factory.mktemp("chat") / "chat.sqlite3"
    env = {"CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{db}", "CHAT_SECRET_KEY": SECRET}
    env["CHAT_REDIS_URL"] = ""
    with serve_process(f"{request.param}:app", env=env) as (address, _proc):
        yield Site(address)


@pytest.fixture
async def tabs(site: Site) -> AsyncIterator[list[Tab]]:
    opened: list[Tab] = []
    yield opened
    for tab in opened:
        await tab.close()


# -- HTTP ----------------------------------------------------------------------------------------


async def test_login_bodies(site: Site) -> None:
    ok = await site.login("greg", "Greg")
    assert ok.status_code == 200 and ok.json() == {"success": "Welcome back, greg"}
    wrong = await site.login("greg", "greg")
    assert wrong.status_code == 401 and set(wrong.json()) == {"error"}
    unknown = await site.login("nobody", "Nobody")
    assert unknown.status_code == 401 and unknown.json() == wrong.json()
    async with httpx.AsyncClient(base_url=site.base) as client:
        bad = await client.post(
            "/login", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and "error" in bad.json()
        missing = await client.post("/login", json={"username": "greg"})
        assert missing.status_code == 400 and "error" in missing.json()


async def test_pages_and_redirect_when_anonymous(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.base) as client:
        anonymous = await client.get("/")
        assert anonymous.status_code in (302, 303, 307)
        assert anonymous.headers["location"].endswith("/login")
        login_page = await client.get("/login")
        assert login_page.status_code == 200 and 'id="login-form"' in login_page.text
    async with httpx.AsyncClient(base_url=site.base) as client:
        await client.post("/login", json={"username": "anny", "password": "Anny"})
        chat = await client.get("/")
        assert chat.status_code == 200 and 'id="messages"' in chat.text
        assert "text/html" in chat.headers["content-type"]


async def test_the_browser_client_is_served(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.base) as client:
        script = await client.get("/asgi-groups.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "export class GroupsClient" in script.text
        etag = script.headers["etag"]
        again = await client.get("/asgi-groups.js", headers={"if-none-match": etag})
        assert again.status_code == 304


# -- handshake -----------------------------------------------------------------------------------


async def test_anonymous_websocket_refused_403(site: Site) -> None:
    for cookie in (None, "session=forged.cookie.value"):
        with pytest.raises(InvalidStatus) as refused:
            async with site.ws(cookie):
                pass
        assert refused.value.response.status_code == 403


async def test_foreign_origin_refused_403(site: Site) -> None:
    cookie = await site.cookie("greg")
    for origin in ("http://evil.example", "null"):
        with pytest.raises(InvalidStatus) as refused:
            async with site.ws(cookie, origin=origin):
                pass
        assert refused.value.response.status_code == 403


# -- routing -------------------------------------------------------------------------------------


async def test_routing_six_users_two_tabs(site: Site, tabs: list[Tab]) -> None:
    names = ["greg", "greg", "chuck", "mike", "amanda", "lisa", "anny"]
    tabs.extend([await site.tab(name) for name in names])
    greg, greg2, chuck, mike, amanda, lisa, anny = tabs

    await amanda.send({"type": "Group", "group": "boys", "text": "hi boys"})
    for tab in (greg, greg2, chuck, mike, amanda):  # the boys, and amanda's own copy
        got = await tab.next()
        assert (got["type"], got["from"], got["group"], got["text"]) == (
            "group",
            "amanda",
            "boys",
            "hi boys",
        )
    assert await Tab.all_quiet([lisa, anny])

    await greg2.send({"type": "Direct", "user_name": "LISA", "text": "psst"})
    for tab in (lisa, greg, greg2):
        got = await tab.next()
        assert (got["type"], got["from"], got["to"], got["text"]) == (
            "direct",
            "greg",
            "lisa",
            "psst",
        )
    assert await Tab.all_quiet([chuck, mike, amanda, anny])

    await mike.send({"type": "BroadCast", "text": "everyone"})
    ids = set()
    for tab in tabs:
        got = await tab.next()
        assert (got["type"], got["from"], got["text"]) == ("broadcast", "mike", "everyone")
        ids.add(got["id"])
    assert len(ids) == 1  # one message, one id
    assert await Tab.all_quiet(tabs, 0.1)


async def test_presence_lists_who_is_online(site: Site, tabs: list[Tab]) -> None:
    chuck = await site.tab("chuck")
    tabs.append(chuck)
    tabs.append(await site.tab("mike"))

    async def sees(tab: Tab, group: str, users: list[str]) -> None:
        async with asyncio.timeout(5):
            while tab.presence.get(group) != users:
                await tab.pull(5)

    await sees(chuck, "boys", ["chuck", "mike"])
    await tabs.pop().close()
    await sees(chuck, "boys", ["chuck"])
    await chuck.send({"type": "presence"})
    assert await chuck.next({"presence"}) == {
        "type": "presence",
        "group": "boys",
        "users": ["chuck"],
    }


async def test_a_tab_that_comes_back_gets_what_it_missed(site: Site, tabs: list[Tab]) -> None:
    tabs.append(chuck := await site.tab("chuck"))
    tabs.append(mike := await site.tab("mike"))
    await chuck.send({"type": "Group", "group": "boys", "text": "before"})
    for tab in (chuck, mike):
        assert (await tab.next())["text"] == "before"
    await mike.close()
    for text in ("while away 1", "while away 2"):
        await chuck.send({"type": "Group", "group": "boys", "text": text})
        assert (await chuck.next())["text"] == text
    tabs.append(back := await site.tab("mike", mike.positions))
    assert back.welcome is not None and back.welcome["recovered"] is True
    await chuck.send({"type": "Group", "group": "boys", "text": "live again"})
    texts = [(await back.next())["text"] for _ in range(3)]
    assert texts == ["while away 1", "while away 2", "live again"]  # in order, none twice


BAD_INPUTS: list[tuple[str | bytes, str]] = [
    ("{not json", "invalid_json"),
    (b"\xff\xfe\x00", "invalid_utf8"),
    ('{"type": "Whisper", "text": "x"}', "invalid_message"),
    ('{"type": "Group", "text": "x"}', "invalid_message"),
    ('{"type": "BroadCast", "text": 12}', "invalid_message"),
    ('{"type": "BroadCast", "text": 1e400}', "invalid_message"),
    ('{"type": "BroadCast", "text": ' + "7" * 6000 + "}", "invalid_message"),
    ("[" * 30_000 + "]" * 30_000, "invalid_message"),
    (json.dumps({"type": "BroadCast", "text": "x" * 5000}), "text_too_long"),
    ('{"type": "Group", "group": "nope", "text": "x"}', "unknown_group"),
    ('{"type": "Direct", "user_name": "nobody", "text": "x"}', "unknown_user"),
]


async def test_an_error_frame_for_each_bad_input(site: Site, tabs: list[Tab]) -> None:
    tabs.append(mike := await site.tab("mike"))
    for raw, code in BAD_INPUTS:
        await mike.send(raw)
        error = await mike.next()
        assert error["type"] == "error" and error["error"] == code, (raw[:30], error)
    await mike.send({"type": "Direct", "user_name": "mike", "text": "still open"})
    assert (await mike.next())["text"] == "still open"


async def test_logout_closes_that_users_sockets_4401(site: Site, tabs: list[Tab]) -> None:
    cookie = await site.cookie("anny", fresh=True)
    tabs.extend([await site.tab("anny"), await site.tab("anny"), await site.tab("lisa")])
    anny, anny2, lisa = tabs
    async with httpx.AsyncClient(base_url=site.base) as client:
        response = await client.post("/logout", headers={"Cookie": cookie})
        assert response.status_code < 400
    name = cookie.split("=", 1)[0]
    cleared = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert cleared and all("01 jan 1970" in h.lower() for h in cleared), cleared  # expired
    for tab in (anny, anny2):
        with pytest.raises(ConnectionClosed) as closed:
            await tab.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == codes.UNAUTHORIZED
    await lisa.send({"type": "Group", "group": "girls", "text": "still here"})
    assert (await lisa.next())["text"] == "still here"


# -- common.py without a server ------------------------------------------------------------------


def test_config_from_env(caplog: pytest.LogCaptureFixture) -> None:
    config = ChatConfig.from_env({})
    assert config == ChatConfig(DEFAULT_DATABASE_URL, DEV_SECRET_KEY, None, None)
    assert "CHAT_SECRET_KEY is not set" in caplog.text
    config = ChatConfig.from_env(
        {
            "CHAT_DATABASE_URL": "sqlite+aiosqlite:///x.db",
            "CHAT_SECRET_KEY": "s3cret",
            "CHAT_REDIS_URL": "redis://127.0.0.1:6379/0",
            "CHAT_ALLOWED_ORIGINS": "https://a.example, https://b.example,",
        }
    )
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert (config.database_url, config.secret_key, config.redis_url) == (
        "sqlite+aiosqlite:///x.db",
        "s3cret",
        "redis://127.0.0.1:6379/0",
    )
    assert config.history == HistoryLimits() and config.registry().history == HistoryLimits()
    off = ChatConfig.from_env({"CHAT_SECRET_KEY": "s3cret", "CHAT_HISTORY": "0"})
    assert off.history is None and off.registry().history is None


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with the demo users, made once: seeding hashes six passwords."""
    path = tmp_path_factory.mktemp("seeded") / "chat.sqlite3"

    async def seed() -> None:
        async with SqlUserStore(f"sqlite+aiosqlite:///{path}") as store:
            await prepare_store(store)

    asyncio.run(seed())
    return path


@pytest.fixture
async def store(seeded_db: Path, tmp_path: Path) -> AsyncIterator[SqlUserStore]:
    copy = tmp_path / "chat.sqlite3"
    shutil.copyfile(seeded_db, copy)
    async with SqlUserStore(f"sqlite+aiosqlite:///{copy}") as store:
        yield store


async def test_prepare_store_seeds_six_users_once(store: SqlUserStore) -> None:
    await prepare_store(store)  # a second run adds nobody
    users = {u.username: sorted(u.groups) for u in await store.list_users()}
    assert users == {s.username: [s.group] for s in SEED_USERS}
    assert len(users) == 6
    assert await store.authenticate("greg", "Greg") is not None


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b'{"username": "amanda", "password": "Amanda"}', 200),
        ({"username": "amanda", "password": "Amanda"}, 200),
        (b'{"username": "amanda", "password": "amanda"}', 401),
        (b'{"username": "amanda", "password": ""}', 400),
        (b'{"username": "amanda"}', 400),
        (b'{"username": 1, "password": "x"}', 400),
        (b"[1, 2]", 400),
        (b"not json", 400),
        (b"[" * 10_000, 400),
        ("x" * 10_000, 400),
    ],
)
async def test_check_login(store: SqlUserStore, payload: Any, status: int) -> None:
    code, body, user = await check_login(store, payload)
    assert code == status
    if status == 200:
        assert body == {"success": "Welcome back, amanda"}
        assert user is not None and user.username == "amanda" and user.groups == {"girls"}
    else:
        assert set(body) == {"error"} and user is None


async def test_store_directory(store: SqlUserStore) -> None:
    directory = StoreDirectory(store)
    greg = await directory.find_user("GrEg")
    assert greg is not None and greg.username == "greg"
    assert await directory.username_of(greg.id) == "greg"
    assert await directory.find_user("nobody") is None
    assert await directory.group_exists("girls") and not await directory.group_exists("Girls")
    groups, users = await directory.listing()
    assert groups == ["boys", "girls"] and len(users) == 6
    await store.create_user("zoe", "Zoe", groups=["girls"])
    directory.min_refresh = 0.0  # a miss refreshes at once
    zoe = await directory.find_user("zoe")
    assert zoe is not None and zoe.username == "zoe"


def test_pages_are_self_contained_and_render_data_as_text() -> None:
    chat, login = page("chat.html"), page("login.html")
    assert "/*include" not in chat + login
    assert 'from "/asgi-groups.js"' in chat and "new GroupsClient(" in chat
    assert "new WebSocket(" not in chat and 'fetch("/login"' in login
    for html in (chat, login):
        assert "innerHTML" not in html and "insertAdjacentHTML" not in html
        assert "document.write" not in html and "eval(" not in html
    with pytest.raises(KeyError):
        page("../common.py")
