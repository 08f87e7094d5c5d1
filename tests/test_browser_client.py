"""The browser client: its Node unit tests pass, and ``ClientScript`` serves it over plain ASGI."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from asgi_groups.browser import ClientScript
from asgi_groups.types import Message

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "asgi_groups" / "static"
JS_TESTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "js").glob("*.test.mjs"))

Response = tuple[int, dict[bytes, bytes], bytes]


def test_the_javascript_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: install Node.js 20 to run the tests in tests/js")
    assert JS_TESTS
    result = subprocess.run(
        [node, "--test", *JS_TESTS], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "# fail 0" in result.stdout


async def call(
    app: ClientScript,
    method: str = "GET",
    headers: Iterable[tuple[bytes, bytes]] = (),
    query: bytes = b"",
) -> Response:
    """One HTTP request through the ASGI interface: status, headers and body."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/asgi-groups.js",
        "raw_path": b"/asgi-groups.js",
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, *rest = sent
    assert start["type"] == "http.response.start"
    assert [message["type"] for message in rest] == ["http.response.body"]
    return start["status"], dict(start["headers"]), rest[0]["body"]


async def test_get_serves_the_module_with_an_etag() -> None:
    status, headers, body = await call(ClientScript())
    assert status == 200
    assert body == (STATIC / "asgi-groups.js").read_bytes()
    assert headers[b"content-type"] == b"text/javascript; charset=utf-8"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"cache-control"] == b"no-cache"
    etag = headers[b"etag"]
    assert etag.startswith(b'"') and etag.endswith(b'"') and len(etag) > 2, "a strong ETag"


async def test_types_true_serves_the_declarations() -> None:
    status, headers, body = await call(ClientScript(types=True))
    assert status == 200
    assert body == (STATIC / "asgi-groups.d.ts").read_bytes()
    assert headers[b"content-type"].startswith(b"application/typescript")
    assert headers[b"etag"] != (await call(ClientScript()))[1][b"etag"]


async def test_a_matching_if_none_match_gets_304_without_a_body() -> None:
    script = ClientScript()
    etag = (await call(script))[1][b"etag"]
    for header in (etag, b'"other", ' + etag, b"W/" + etag, b"*"):
        status, headers, body = await call(script, headers=[(b"if-none-match", header)])
        assert (status, body) == (304, b""), header
        assert headers[b"etag"] == etag
        assert headers[b"cache-control"] == b"no-cache"


async def test_a_stale_etag_gets_the_file() -> None:
    status, _, body = await call(ClientScript(), headers=[(b"if-none-match", b'"stale"')])
    assert status == 200
    assert body == (STATIC / "asgi-groups.js").read_bytes()


async def test_head_has_the_headers_and_no_body() -> None:
    script = ClientScript()
    _, get_headers, get_body = await call(script)
    status, headers, body = await call(script, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers == get_headers
    assert headers[b"content-length"] == str(len(get_body)).encode()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_get_405(method: str) -> None:
    status, headers, _ = await call(ClientScript(), method=method)
    assert status == 405
    assert headers[b"allow"] == b"GET, HEAD"


async def test_the_query_string_is_ignored() -> None:
    status, _, body = await call(ClientScript(), query=b"v=123")
    assert status == 200
    assert body == (STATIC / "asgi-groups.js").read_bytes()


async def test_as_the_whole_app_it_answers_the_lifespan() -> None:
    inbox: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await ClientScript()({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
