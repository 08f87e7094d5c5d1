"""``JwtVerifier``: checks a JWT (signature, ``exp``, ``nbf``, audience, issuer) with PyJWT.

Install the extra: ``pip install 'asgi-groups[jwt]'``. The expiry is checked against an
injectable clock, and returned so that an open socket is closed (4401) when its token lapses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .credentials import Credential, InvalidCredential
from .users import SimpleUser

__all__ = ["DEFAULT_ALGORITHMS", "DEFAULT_LEEWAY", "JwtVerifier", "claims_user"]

DEFAULT_ALGORITHMS = ("HS256",)
DEFAULT_LEEWAY = 0.0
"""Seconds of clock skew allowed on ``exp`` and ``nbf``."""


def claims_user(claims: Mapping[str, Any]) -> SimpleUser | None:
    """A user from a token's claims: ``sub`` (the id), ``username`` (else ``sub``), ``groups``."""
    sub = claims.get("sub")
    if sub is None or isinstance(sub, dict | list | bool):
        return None
    name = claims.get("username") or claims.get("preferred_username") or sub
    groups = claims.get("groups") or ()
    if isinstance(groups, str) or not isinstance(groups, Iterable):
        groups = ()
    return SimpleUser(id=sub, username=str(name), groups=frozenset(str(g) for g in groups))


class JwtVerifier:
    """Verify a signed JWT; its claims become the session, ``exp`` the credential's expiry.

    ``key``: the HMAC secret or public key; ``algorithms``: those accepted (never ``none``).
    ``require_exp`` (default True): a token without ``exp`` is refused (it would never lapse).
    ``user``: builds the user from the claims when the middleware has no ``users=`` loader
    (default: :func:`claims_user`). ``clock``: Unix time now (tests move it).
    """

    def __init__(
        self,
        key: Any,
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
        require_exp: bool = True,
        user: Callable[[Mapping[str, Any]], Any] | None = claims_user,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            import jwt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("JwtVerifier needs PyJWT: pip install 'asgi-groups[jwt]'") from exc
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError("algorithms must name at least one real signing algorithm")
        self._jwt = jwt
        self.key = key
        self.algorithms = list(algorithms)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.require_exp = require_exp
        self.user = user
        self.clock = clock

    def __call__(self, token: str) -> Credential:
        """The token's credential, or ``InvalidCredential`` naming the reason (not the token)."""
        jwt = self._jwt
        required = ["exp"] if self.require_exp else []
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "verify_exp": False,  # checked below, against self.clock
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": self.audience is not None,
                    "require": required,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidCredential(f"invalid JWT ({type(exc).__name__})") from None
        now = self.clock()
        exp = claims.get("exp")
        if exp is not None:
            if not isinstance(exp, int | float) or isinstance(exp, bool):
                raise InvalidCredential("invalid JWT (exp is not a number)")
            if now >= exp + self.leeway:
                raise InvalidCredential("expired JWT")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + self.leeway < nbf:
            raise InvalidCredential("JWT not yet valid (nbf)")
        user = self.user(claims) if self.user is not None else None
        expires_at = float(exp) + self.leeway if exp is not None else None
        return Credential(claims, user=user, expires_at=expires_at, source="jwt")
