"""Salted scrypt password hashes, stored as ``scrypt$n=…,r=…,p=…$salt$hash``."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from base64 import b64decode, b64encode

__all__ = ["hash_password", "verify_password"]

ALGORITHM = "scrypt"
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
# Upper bounds for parameters read back from the database: a tampered row must not make
# verification eat gigabytes of memory.
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16
_MAXMEM = 2**31 - 1


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=KEY_BYTES
    )


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """Hash ``password`` with a fresh random salt; CPU-bound (~50 ms), so call it off the loop."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p)
    return "$".join(
        [ALGORITHM, f"n={n},r={r},p={p}", b64encode(salt).decode(), b64encode(digest).decode()]
    )


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``; False for a mismatch or a malformed hash."""
    try:
        algorithm, params, salt_b64, digest_b64 = encoded.split("$")
        if algorithm != ALGORITHM:
            return False
        values = dict(item.split("=", 1) for item in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        salt, expected = b64decode(salt_b64, validate=True), b64decode(digest_b64, validate=True)
    except (ValueError, KeyError):
        return False
    if not (1 < n <= _MAX_N and 0 < r <= _MAX_R and 0 < p <= _MAX_P) or len(expected) != KEY_BYTES:
        return False
    try:
        actual = _scrypt(password, salt, n, r, p)
    except ValueError:  # e.g. n not a power of two
        return False
    return hmac.compare_digest(actual, expected)
