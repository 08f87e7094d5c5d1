"""The chat example under daphne, which runs no lifespan: the store is prepared by the first
request and the registry started by the first use, from HTTP code as from sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from asgi_groups import codes

from .support.chat import Site, Tab
from .support.daphne import serve_daphne

APPS = ["examples.chat.starlette_app", "examples.chat.fastapi_app", "examples.chat.quart_app"]


@pytest.fixture(params=APPS, ids=lambda module: module.rsplit(".", 1)[-1])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    env = {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}",
        "CHAT_SECRET_KEY": "daphne-test-secret",
        "CHAT_REDIS_URL": "",
    }
    with serve_daphne(f"{request.param}:app", env, tmp_path / "daphne.log") as address:
        yield Site(address)


async def receivers(tabs: dict[str, Tab], kind: str, text: str) -> list[str]:
    """Who among ``tabs`` got ``text`` as a ``kind`` message; the others must get nothing."""
    got = []
    for name, tab in tabs.items():
        try:
            frame = await tab.next(timeout=0.3)
        except TimeoutError:
            continue
        assert (frame["type"], frame["text"]) == (kind, text), (name, frame)
        got.append(name)
    return got


async def test_the_chat_works_without_lifespan(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.base) as http:
        # HTTP code first: a login (the store is prepared now), then a logout that closes the
        # user's sockets through the registry, which starts there (daphne ran no lifespan)
        cookie = await site.cookie("chuck")
        assert (await http.post("/logout", headers={"Cookie": cookie})).status_code == 200
        assert (await http.get("/readyz")).text == "ready\n"

    tabs = {name: await site.tab(name) for name in ("greg", "mike", "amanda", "lisa")}
    try:
        await tabs["amanda"].send({"type": "Group", "group": "boys", "text": "hi boys"})
        assert await receivers(tabs, "group", "hi boys") == ["greg", "mike", "amanda"]
        await tabs["greg"].send({"type": "Direct", "user_name": "lisa", "text": "psst"})
        assert await receivers(tabs, "direct", "psst") == ["greg", "lisa"]
        await tabs["mike"].send({"type": "BroadCast", "text": "everyone"})
        assert await receivers(tabs, "broadcast", "everyone") == list(tabs)

        # an HTTP handler sends too: an announcement reaches every page, as greg's broadcast
        async with httpx.AsyncClient(base_url=site.base) as http:
            text = {"text": "from an HTTP handler"}
            assert (await http.post("/announce", json=text)).status_code == 401  # anonymous
            cookie = {"Cookie": await site.cookie("greg")}
            sent = await http.post("/announce", json=text, headers=cookie)
            assert sent.status_code == 200, sent.text
        assert await receivers(tabs, "broadcast", "from an HTTP handler") == list(tabs)

        # logout over HTTP closes that user's socket with 4401; the others stay
        async with httpx.AsyncClient(base_url=site.base) as http:
            logout = await http.post("/logout", headers={"Cookie": await site.cookie("lisa")})
            assert logout.status_code == 200
        with pytest.raises(ConnectionClosed) as closed:
            await tabs["lisa"].next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == codes.UNAUTHORIZED
        await tabs.pop("lisa").close()
        await tabs["greg"].send({"type": "Group", "group": "boys", "text": "still here"})
        assert await receivers(tabs, "group", "still here") == ["greg", "mike"]
    finally:
        for tab in tabs.values():
            await tab.close()
