"""Session codecs against the real frameworks that write the cookies, and against bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
import uuid
from base64 import b64encode
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from markupsafe import Markup
from quart import Quart, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from asgi_groups.sessions import (
    CraxSessionCookie,
    QuartSessionCookie,
    SignedCookie,
    StarletteSessionCookie,
    read_cookie,
)
from asgi_groups.types import SessionCodec

SECRET = "s3cret-key-for-tests"
ROOT = Path(__file__).resolve().parent.parent

Codec = StarletteSessionCookie | QuartSessionCookie | CraxSessionCookie | SignedCookie
CODECS: list[type[Codec]] = [
    StarletteSessionCookie,
    QuartSessionCookie,
    CraxSessionCookie,
    SignedCookie,
]
SAMPLE: dict[type[Codec], dict[str, Any]] = {
    StarletteSessionCookie: {"user_id": 5, "name": "ann"},
    QuartSessionCookie: {"user_id": 5, "name": "ann"},
    CraxSessionCookie: {"username": "ann", "user_id": 5},
    SignedCookie: {"user_id": 5, "name": "ann"},
}
codec_classes = pytest.mark.parametrize("codec_cls", CODECS, ids=lambda c: c.__name__)


def set_cookie_value(header: str) -> tuple[str, str]:
    name, _, value = header.split(";", 1)[0].partition("=")
    return name, value


def freeze_time(monkeypatch: pytest.MonkeyPatch, timestamp: int) -> None:
    """Every itsdangerous timestamp (signing and age checks) reads this instant."""
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: timestamp)


# --- Starlette / FastAPI SessionMiddleware -------------------------------------------------


def starlette_app(secret: str = SECRET) -> Starlette:
    async def login(request: Request) -> Response:
        request.session["user_id"] = 5
        request.session["name"] = "Zoë +/= ;"
        request.session["roles"] = ["a", "b"]
        return Response("ok")

    async def echo(request: Request) -> Response:
        return JSONResponse(dict(request.session))

    return Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/echo", echo)],
        middleware=[Middleware(SessionMiddleware, secret_key=secret)],
    )


def test_starlette_cookie_written_by_session_middleware_decodes() -> None:
    with TestClient(starlette_app()) as client:
        response = client.post("/login")
        name, value = set_cookie_value(response.headers["set-cookie"])
    assert name == "session"
    assert StarletteSessionCookie(SECRET).decode(value) == {
        "user_id": 5,
        "name": "Zoë +/= ;",
        "roles": ["a", "b"],
    }
    assert StarletteSessionCookie("another-secret").decode(value) is None


def test_starlette_cookie_read_from_the_request_cookie_header() -> None:
    with TestClient(starlette_app()) as client:
        client.post("/login")
        value = client.cookies["session"]
    headers = [(b"host", b"x"), (b"cookie", f"theme=dark; session={value}; a=b".encode())]
    raw = read_cookie(headers, "session")
    assert raw is not None
    assert StarletteSessionCookie(SECRET).decode(raw) == {
        "user_id": 5,
        "name": "Zoë +/= ;",
        "roles": ["a", "b"],
    }


def test_starlette_accepts_a_cookie_we_encode() -> None:
    data = {"user_id": 7, "name": "Åsa", "nested": {"k": [1, 2]}}
    cookie = StarletteSessionCookie(SECRET).encode(data)
    with TestClient(starlette_app()) as client:
        response = client.get("/echo", headers={"cookie": f"session={cookie}"})
    assert response.json() == data


def test_starlette_rejects_our_cookie_signed_with_another_key() -> None:
    cookie = StarletteSessionCookie("wrong").encode({"user_id": 7})
    with TestClient(starlette_app()) as client:
        response = client.get("/echo", headers={"cookie": f"session={cookie}"})
    assert response.json() == {}


# --- Quart / Flask SecureCookieSessionInterface --------------------------------------------

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def quart_app() -> Quart:
    app = Quart(__name__)
    app.secret_key = SECRET

    @app.post("/login")
    async def login() -> str:
        session["user_id"] = 5
        session["pair"] = (1, "two")
        session["blob"] = b"\x00\xffbytes"
        session["uid"] = ID
        session["when"] = WHEN
        session["html"] = Markup("<b>hi</b>")
        session["escaped"] = {" t": "not a tuple"}
        session["nested"] = [(1, 2), {"x": b"y"}]
        return "ok"

    @app.post("/big")
    async def big() -> str:
        session["user_id"] = 6
        session["filler"] = "abcd" * 500
        return "ok"

    @app.get("/echo")
    async def echo() -> dict[str, Any]:
        return {key: [type(value).__name__, repr(value)] for key, value in session.items()}

    return app


QUART_EXPECTED = {
    "user_id": 5,
    "pair": (1, "two"),
    "blob": b"\x00\xffbytes",
    "uid": ID,
    "when": WHEN,
    "html": "<b>hi</b>",
    "escaped": {" t": "not a tuple"},
    "nested": [(1, 2), {"x": b"y"}],
}


async def quart_login(app: Quart, path: str = "/login") -> str:
    async with app.test_client() as client:
        response = await client.post(path)
    (header,) = response.headers.getlist("set-cookie")
    name, value = set_cookie_value(header)
    assert name == "session"
    return value


async def test_quart_cookie_with_tagged_values_decodes() -> None:
    cookie = await quart_login(quart_app())
    decoded = QuartSessionCookie(SECRET).decode(cookie)
    assert decoded == QUART_EXPECTED
    assert decoded is not None
    assert type(decoded["pair"]) is tuple
    assert type(decoded["html"]) is str


async def test_quart_compressed_cookie_decodes() -> None:
    cookie = await quart_login(quart_app(), "/big")
    assert cookie.startswith("."), "a large session is zlib-compressed by itsdangerous"
    assert QuartSessionCookie(SECRET).decode(cookie) == {"user_id": 6, "filler": "abcd" * 500}


async def test_quart_accepts_a_cookie_we_encode() -> None:
    data = {"user_id": 9, "pair": (1, 2), "blob": b"xy", "uid": ID, "when": WHEN, "big": "z" * 3000}
    cookie = QuartSessionCookie(SECRET).encode(data)
    assert cookie.startswith(".")
    async with quart_app().test_client() as client:
        response = await client.get("/echo", headers={"cookie": f"session={cookie}"})
    echoed = await response.get_json()
    assert echoed == {key: [type(value).__name__, repr(value)] for key, value in data.items()}


async def test_quart_from_app_follows_secret_key_fallbacks() -> None:
    app = quart_app()
    app.config.update(
        SECRET_KEY="new-key",
        SECRET_KEY_FALLBACKS=["old-key"],
        SESSION_COOKIE_NAME="qsess",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=2),
    )
    codec = QuartSessionCookie.from_app(app)
    assert (codec.cookie_name, codec.max_age) == ("qsess", 7200)
    async with app.test_client() as client:
        response = await client.post("/big")
    _, written_by_quart = set_cookie_value(response.headers["set-cookie"])
    assert codec.decode(written_by_quart) == {"user_id": 6, "filler": "abcd" * 500}
    assert QuartSessionCookie("old-key").decode(written_by_quart) is None, "Quart signs with new"
    assert codec.decode(QuartSessionCookie("old-key").encode({"user_id": 1})) == {"user_id": 1}


def test_quart_from_app_needs_no_quart_object() -> None:
    class App:
        config = {"SECRET_KEY": b"bytes-key", "PERMANENT_SESSION_LIFETIME": 60}

    codec = QuartSessionCookie.from_app(App())
    assert (codec.cookie_name, codec.max_age) == ("session", 60)
    assert codec.decode(QuartSessionCookie(b"bytes-key").encode({"a": 1})) == {"a": 1}
    with pytest.raises(ValueError, match="SECRET_KEY"):
        QuartSessionCookie.from_app(type("NoKey", (), {"config": {"SECRET_KEY": None}})())


async def test_quart_cookie_decodes_without_quart_or_flask_installed() -> None:
    cookie = await quart_login(quart_app())
    script = (
        "import sys\n"
        "for name in ('quart', 'flask', 'werkzeug', 'markupsafe'):\n"
        "    sys.modules[name] = None\n"
        "from asgi_groups.sessions import QuartSessionCookie\n"
        f"print(repr(QuartSessionCookie({SECRET!r}).decode(sys.argv[1])))\n"
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, cookie],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(QUART_EXPECTED)


@pytest.mark.parametrize(
    "payload",
    [{" t": 5}, {" b": 1}, {" u": "not-a-uuid"}, {" di": {}}, {" di": 3}, {"x": {" u": []}}],
)
def test_quart_malformed_tags_are_no_session(payload: dict[str, Any]) -> None:
    forged = URLSafeTimedSerializer(
        SECRET,
        salt="cookie-session",
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
    ).dumps(payload)
    assert QuartSessionCookie(SECRET).decode(forged) is None


def test_quart_bad_http_date_reads_as_none_like_werkzeug() -> None:
    forged = URLSafeTimedSerializer(
        SECRET,
        salt="cookie-session",
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
    ).dumps({"user_id": 1, "when": {" d": "not a date"}})
    assert QuartSessionCookie(SECRET).decode(forged) == {"user_id": 1, "when": None}


# --- Crax ------------------------------------------------------------------------------------


def crax_cookie(username: str, pk: int, secret: str = SECRET) -> str:
    """What Crax's ``create_session_cookie`` writes."""
    return b64encode(TimestampSigner(str(secret)).sign(f"{username}:{pk}")).decode("utf-8")


def test_crax_cookie_decodes() -> None:
    codec = CraxSessionCookie(SECRET)
    assert codec.cookie_name == "session_id"
    assert codec.decode(crax_cookie("ann", 42)) == {"username": "ann", "user_id": 42}


def test_crax_username_with_colons_keeps_the_right_id() -> None:
    value = crax_cookie("a:b:c", 7)
    assert CraxSessionCookie(SECRET).decode(value) == {"username": "a:b:c", "user_id": 7}


def test_crax_anonymous_cookie_is_no_session() -> None:
    # Crax sets this for every anonymous visitor: the "username" is a timestamp, pk 0.
    assert CraxSessionCookie(SECRET).decode(crax_cookie(str(int(time.time())), 0)) is None


@pytest.mark.parametrize("pk", ["x", "-3", "", "1.5", "١٢"])
def test_crax_non_numeric_pk_is_no_session(pk: str) -> None:
    value = b64encode(TimestampSigner(SECRET).sign(f"ann:{pk}")).decode()
    assert CraxSessionCookie(SECRET).decode(value) is None


def test_crax_encode_is_what_crax_reads() -> None:
    value = CraxSessionCookie(SECRET).encode({"username": "x:y", "user_id": 3})
    # Crax's AuthMiddleware: b64decode, unsign, then the id after the colon.
    from base64 import b64decode

    assert TimestampSigner(SECRET).unsign(b64decode(value)) == b"x:y:3"
    with pytest.raises(ValueError):
        CraxSessionCookie(SECRET).encode({"username": "x"})


@pytest.fixture
def crax_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real Crax package, configured with our secret through its settings module."""
    authentication = pytest.importorskip(
        "crax.auth.authentication", reason="pip install -e '.[test]' installs crax"
    )
    (tmp_path / "crax_test_settings.py").write_text(f"SECRET_KEY = {SECRET!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CRAX_SETTINGS", "crax_test_settings")
    return authentication


def test_crax_cookie_written_by_crax_decodes(crax_settings: Any) -> None:
    """A cookie from Crax's own ``create_session_cookie`` is read; ours is what Crax reads."""
    from base64 import b64decode

    value, header = crax_settings.create_session_cookie("a:b", 42)
    assert header.startswith(f"session_id={value};")
    assert CraxSessionCookie(SECRET).decode(value) == {"username": "a:b", "user_id": 42}
    assert CraxSessionCookie("another secret").decode(value) is None

    ours = CraxSessionCookie(SECRET).encode({"username": "x:y", "user_id": 3})
    signer, max_age, cookie_name, _ = crax_settings.create_session_signer()
    assert cookie_name == CraxSessionCookie(SECRET).cookie_name
    assert signer.unsign(b64decode(ours), max_age=max_age) == b"x:y:3"


# --- SignedCookie and its headers -----------------------------------------------------------


def signed_cookie_app(codec: SignedCookie) -> Starlette:
    async def login(request: Request) -> Response:
        name, value = codec.set_cookie_header({"user_id": 11}, secure=False)
        return Response("ok", headers={name.decode(): value.decode()})

    async def logout(request: Request) -> Response:
        name, value = codec.clear_cookie_header(secure=False)
        return Response("bye", headers={name.decode(): value.decode()})

    async def whoami(request: Request) -> Response:
        raw = read_cookie(request.scope["headers"], codec.cookie_name)
        return JSONResponse(codec.decode(raw) if raw is not None else None)

    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/whoami", whoami),
        ]
    )


def test_signed_cookie_login_header_round_trips_through_a_client() -> None:
    codec = SignedCookie(SECRET)
    with TestClient(signed_cookie_app(codec)) as client:
        assert client.get("/whoami").json() is None
        client.post("/login")
        assert client.get("/whoami").json() == {"user_id": 11}
        client.post("/logout")
        assert client.get("/whoami").json() is None


def test_signed_cookie_header_flags() -> None:
    name, value = SignedCookie(SECRET).set_cookie_header({"user_id": 1})
    assert name == b"set-cookie"
    text = value.decode()
    assert text.startswith("asgi_groups_session=")
    for flag in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=1209600"):
        assert flag in text
    cleared = SignedCookie(SECRET).clear_cookie_header()[1].decode()
    assert cleared.startswith("asgi_groups_session=;") or 'asgi_groups_session=""' in cleared
    assert "Max-Age=0" in cleared


def test_signed_cookie_header_refuses_unsafe_options() -> None:
    codec = SignedCookie(SECRET)
    with pytest.raises(ValueError):
        codec.set_cookie_header({}, samesite="none", secure=False)
    with pytest.raises(ValueError):
        codec.set_cookie_header({}, path="/; Domain=evil.example")


def test_signed_cookie_wrong_salt_is_no_session() -> None:
    other = URLSafeTimedSerializer(SECRET, salt="some.other.purpose").dumps({"user_id": 1})
    assert SignedCookie(SECRET).decode(other) is None
    assert SignedCookie(SECRET).decode(QuartSessionCookie(SECRET).encode({"user_id": 1})) is None


# --- every codec: protocol, rotation, expiry, tampering --------------------------------------


@codec_classes
def test_codec_satisfies_the_protocol_and_round_trips(codec_cls: type[Codec]) -> None:
    codec = codec_cls(SECRET)
    assert isinstance(codec, SessionCodec)
    assert codec.decode(codec.encode(SAMPLE[codec_cls])) == SAMPLE[codec_cls]


@codec_classes
def test_key_rotation(codec_cls: type[Codec]) -> None:
    data = SAMPLE[codec_cls]
    old, rotating, new = codec_cls("old"), codec_cls(["old", "new"]), codec_cls("new")
    assert rotating.decode(old.encode(data)) == data, "old cookies stay valid while listed"
    signed_during_rotation = rotating.encode(data)
    assert new.decode(signed_during_rotation) == data, "the newest (last) key signs"
    assert old.decode(signed_during_rotation) is None
    assert new.decode(old.encode(data)) is None, "a removed key is rejected"


@codec_classes
def test_expired_cookie_is_no_session(
    codec_cls: type[Codec], monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = codec_cls(SECRET, max_age=3600)
    now = int(time.time())
    freeze_time(monkeypatch, now)
    cookie = codec.encode(SAMPLE[codec_cls])
    freeze_time(monkeypatch, now + 3600)
    assert codec.decode(cookie) == SAMPLE[codec_cls]
    freeze_time(monkeypatch, now + 3601)
    assert codec.decode(cookie) is None
    assert codec_cls(SECRET, max_age=None).decode(cookie) == SAMPLE[codec_cls]


@codec_classes
def test_future_dated_cookie_is_no_session(
    codec_cls: type[Codec], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time())
    freeze_time(monkeypatch, now + 600)
    cookie = codec_cls(SECRET).encode(SAMPLE[codec_cls])
    freeze_time(monkeypatch, now)
    assert codec_cls(SECRET).decode(cookie) is None


def _mutations(cookie: str) -> list[str]:
    flipped = [cookie[:i] + ("A" if cookie[i] != "A" else "B") + cookie[i + 1 :] for i in (0, -2)]
    candidates = [
        *flipped,
        cookie[:-1],
        cookie[: len(cookie) // 2],
        cookie + "x",
        "x" + cookie,
        cookie.replace(".", "", 1),
    ]
    return [bad for bad in candidates if bad != cookie]


@codec_classes
def test_tampered_or_truncated_cookie_is_no_session(codec_cls: type[Codec]) -> None:
    codec = codec_cls(SECRET)
    for bad in _mutations(codec.encode(SAMPLE[codec_cls])):
        assert codec.decode(bad) is None, bad


@codec_classes
@pytest.mark.parametrize(
    "garbage", ["", "null", ".", "....", "=", "a.b.c", "\x00", "é", "\udcff", "%00", "==.==.=="]
)
def test_garbage_is_no_session(codec_cls: type[Codec], garbage: str) -> None:
    assert codec_cls(SECRET).decode(garbage) is None


def test_signed_payloads_that_are_not_objects_are_no_session() -> None:
    signer = TimestampSigner(SECRET)
    for payload in [b"[1, 2]", b'"text"', b"5", b"null", b"[" * 50_000, b"{bad json"]:
        assert (
            StarletteSessionCookie(SECRET).decode(signer.sign(b64encode(payload)).decode()) is None
        )
    quart = URLSafeTimedSerializer(
        SECRET,
        salt="cookie-session",
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
    )
    ours = URLSafeTimedSerializer(SECRET, salt="asgi_groups.session")
    for value in [[1, 2], "text", 5, None]:
        assert QuartSessionCookie(SECRET).decode(quart.dumps(value)) is None
        assert SignedCookie(SECRET).decode(ours.dumps(value)) is None


def test_codecs_do_not_accept_each_others_cookies() -> None:
    cookies = {cls: cls(SECRET).encode(SAMPLE[cls]) for cls in CODECS}
    for reader in CODECS:
        for writer, cookie in cookies.items():
            if reader is not writer:
                assert reader(SECRET).decode(cookie) is None, (reader, writer)


def test_empty_secret_is_refused() -> None:
    for cls in CODECS:
        with pytest.raises(ValueError):
            cls("")
        with pytest.raises(ValueError):
            cls([])


def test_rejected_cookie_value_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="asgi_groups")
    secret_looking = StarletteSessionCookie(SECRET).encode({"user_id": 1})[:-3] + "zzz"
    for cls in CODECS:
        assert cls(SECRET).decode(secret_looking) is None
    assert secret_looking not in caplog.text
    assert secret_looking[:20] not in caplog.text


@codec_classes
@given(value=st.text())
def test_arbitrary_text_never_raises(codec_cls: type[Codec], value: str) -> None:
    result = codec_cls(SECRET).decode(value)
    assert result is None or isinstance(result, dict)


@given(value=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEF0123456789-_.=+/:"))
def test_cookie_alphabet_never_raises(value: str) -> None:
    for cls in CODECS:
        assert cls(SECRET).decode(value) is None


# --- read_cookie -------------------------------------------------------------------------------


def test_read_cookie_splits_on_the_first_equals_sign() -> None:
    headers = [(b"cookie", b"a=1; session=abc==.def=; b=2")]
    assert read_cookie(headers, "session") == "abc==.def="
    assert read_cookie(headers, "b") == "2"
    assert read_cookie(headers, "missing") is None


def test_read_cookie_is_lenient() -> None:
    headers = [
        (b"Cookie", b'novalue; theme="dark blue"; ; empty=; q="a\\"b\\073"'),
        (b"x-other", b"session=nope"),
        (b"cookie", b"session=second-header;session=later"),
    ]
    assert read_cookie(headers, "theme") == "dark blue"
    assert read_cookie(headers, "empty") == ""
    assert read_cookie(headers, "q") == 'a"b;'
    assert read_cookie(headers, "session") == "second-header"
    assert read_cookie([], "session") is None


@given(
    headers=st.lists(
        st.tuples(st.sampled_from([b"cookie", b"Cookie", b"x"]) | st.binary(), st.binary())
    ),
    name=st.text(),
)
def test_read_cookie_never_raises(headers: list[tuple[bytes, bytes]], name: str) -> None:
    result = read_cookie(headers, name)
    assert result is None or isinstance(result, str)


def test_starlette_session_cookie_value_survives_json() -> None:
    # The documented wire format: b64(json) signed with a timestamp, standard alphabet.
    cookie = StarletteSessionCookie(SECRET).encode({"k": "ü" * 40})
    payload = TimestampSigner(SECRET).unsign(cookie)
    from base64 import b64decode

    assert json.loads(b64decode(payload)) == {"k": "ü" * 40}
