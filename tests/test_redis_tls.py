"""The Redis backend over TLS (``rediss://``): a real TLS-only redis-server, a throwaway CA.

The CA and the server certificate are made with the ``openssl`` CLI when the session starts; the
server listens with TLS only (``--port 0``), so every delivery below crossed a TLS connection.
TLS options reach redis-py through ``redis_options`` (e.g. ``{"ssl_ca_certs": path}``).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from asgi_groups import BackendUnavailable, Registry
from tests.support.redis import (
    FAST,
    GUARD,
    PATIENT,
    MakeRegistry,
    RedisServer,
    registries,
    user,
)
from tests.support.servers import free_port, wait_for_port

NO_TLS_BUILD = (
    "redis-server was built without TLS: install a TLS-enabled build (Debian/Ubuntu's "
    "`apt-get install redis-server` is one) or build Redis with `make BUILD_TLS=yes`"
)


# -- a throwaway PKI ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  #: the CA that signed the server's certificate
    cert: Path
    key: Path
    other_ca: Path  #: a CA that signed nothing the server uses


def _openssl(binary: str, workdir: Path, *args: str) -> None:
    result = subprocess.run(
        [binary, *args], cwd=workdir, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _make_ca(binary: str, workdir: Path, name: str) -> tuple[Path, Path]:
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    _openssl(
        binary, workdir, "req", "-x509", "-new", "-nodes", "-days", "1",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(cert), "-subj", f"/CN=asgi_groups test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _make_server_cert(binary: str, workdir: Path, ca: Path, ca_key: Path) -> tuple[Path, Path]:
    cert, key, csr = workdir / "server.crt", workdir / "server.key", workdir / "server.csr"
    extensions = workdir / "server.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        binary, workdir, "req", "-new", "-nodes",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    _openssl(
        binary, workdir, "x509", "-req", "-in", str(csr), "-days", "1",
        "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 it signed, and an unrelated second CA."""
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("openssl not found: apt-get install openssl")
    workdir = tmp_path_factory.mktemp("pki")
    ca, ca_key = _make_ca(binary, workdir, "ca")
    other_ca, _ = _make_ca(binary, workdir, "other-ca")
    cert, key = _make_server_cert(binary, workdir, ca, ca_key)
    return TlsFiles(ca=ca, cert=cert, key=key, other_ca=other_ca)


# -- a TLS-only redis-server -------------------------------------------------------------------


class TlsRedisServer(RedisServer):
    """A ``redis-server`` that accepts TLS connections only; ``client()`` trusts its CA."""

    def __init__(self, binary: str, port: int, workdir: Path, files: TlsFiles) -> None:
        super().__init__(binary, port, workdir)
        self.files = files

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        cmd = [self.binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--tls-cert-file", str(self.files.cert), "--tls-key-file", str(self.files.key)]
        cmd += ["--tls-ca-cert-file", str(self.files.ca), "--tls-auth-clients", "no"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, timeout, proc=self.proc)
        except RuntimeError:
            tail = self.log_tail()
            if "Bad directive" in tail and "tls" in tail.lower():
                pytest.skip(NO_TLS_BUILD)
            raise RuntimeError(f"redis-server (TLS) exited: {tail}") from None
        with self.client() as client:
            assert client.ping(), self.log_tail()

    def client(self, **options: Any) -> redis.Redis:
        options.setdefault("ssl", True)
        options.setdefault("ssl_ca_certs", str(self.files.ca))
        return super().client(**options)


@pytest.fixture(scope="session")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[TlsRedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    server = TlsRedisServer(binary, free_port(), tmp_path_factory.mktemp("redis-tls"), tls_files)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def make(tls_server: TlsRedisServer, prefix: str) -> AsyncIterator[MakeRegistry]:
    """Start registries that trust the test CA, on the test's prefix; all closed afterwards."""
    trusting = {"redis_options": {"ssl_ca_certs": str(tls_server.files.ca)}}
    async with registries(tls_server.url, prefix=prefix, **FAST, **trusting) as factory:
        yield factory


def asgi_groups_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("asgi_groups")]


# -- the tests ---------------------------------------------------------------------------------


async def test_group_message_and_send_user_cross_registries_over_tls(
    make: MakeRegistry, tls_server: TlsRedisServer, prefix: str
) -> None:
    a, b = await make(), await make()
    assert a.stats().backend["down"] is False and b.stats().backend["down"] is False
    a1, a1_inbox = await user(a, 1)
    b2, b2_inbox = await user(b, 2)
    await a.join(a1, "room")
    await b.join(b2, "room")
    assert tls_server.numsub(f"{prefix}:g:room") == 2  # both subscribed through TLS

    await a.send_group("room", "hello over TLS")
    assert await b2_inbox.text() == "hello over TLS"
    assert await a1_inbox.text() == "hello over TLS"

    await b.send_user(1, "direct, b to a")
    await a.send_user(2, {"direct": "a to b"})
    assert await a1_inbox.text() == "direct, b to a"
    assert await b2_inbox.text() == '{"direct":"a to b"}'
    await b.send_group("room", "marker")  # after the DMs in Redis's order, in every process
    assert await a1_inbox.text() == "marker"  # so each DM reached its own user only
    assert await b2_inbox.text() == "marker"
    assert await b.presence("room") == {"1": 1, "2": 1}


@pytest.mark.parametrize("trust", ["system-store", "other-ca"])
async def test_a_client_that_does_not_trust_the_ca_fails_to_start(
    tls_server: TlsRedisServer, prefix: str, trust: str
) -> None:
    other_ca = {"ssl_ca_certs": str(tls_server.files.other_ca)}
    redis_options = {} if trust == "system-store" else other_ca
    registry = Registry(tls_server.url, prefix=prefix, redis_options=redis_options, **PATIENT)
    # a clear refusal, not a wait for a timeout: PATIENT's are far longer than the guard
    with pytest.raises(BackendUnavailable, match="cannot reach Redis at rediss://") as caught:
        async with asyncio.timeout(GUARD):
            await registry.start()
    assert "certificate verify failed" in str(caught.value)
    assert not registry.started
    assert not asgi_groups_tasks()
    assert tls_server.running  # the server is fine; the client refused it


async def test_a_plain_redis_url_to_the_tls_port_fails_fast(
    tls_server: TlsRedisServer, prefix: str
) -> None:
    registry = Registry(f"redis://127.0.0.1:{tls_server.port}/0", prefix=prefix, **PATIENT)
    with pytest.raises(BackendUnavailable, match="cannot reach Redis at redis://"):
        async with asyncio.timeout(GUARD):  # refused, not left to time out (PATIENT)
            await registry.start()
    assert not registry.started
    assert not asgi_groups_tasks()
