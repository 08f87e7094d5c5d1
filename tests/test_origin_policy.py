"""OriginPolicy on its own: fixed origins in, allow or refuse out (no server, no scope).

The server-level tests (``test_hostile_origins``) show a refused Origin gets a 403; these pin
down each rule of the allow-list, one input at a time.
"""

from __future__ import annotations

import pytest

from asgi_groups.origin import OriginPolicy


def allows(policy: OriginPolicy, origin: str | None, host: str = "app.test", scheme: str = "ws"):
    return policy.allows(origin, host=host, scheme=scheme)


# -- the four kinds of entry -------------------------------------------------------------------


def test_star_admits_any_http_origin_but_not_null() -> None:
    """``"*"`` is "any http(s) origin": the opaque ``null`` origin of sandboxed frames and
    ``file:`` pages still has to be listed on its own."""
    star = OriginPolicy(["*"])
    assert allows(star, "https://anything.example")
    assert allows(star, "http://10.0.0.1:1234")
    assert not allows(star, "null")
    assert allows(OriginPolicy(["*", "null"]), "null")


def test_null_only_when_listed() -> None:
    assert allows(OriginPolicy(["null"]), "null")
    assert not allows(OriginPolicy(["null"]), "https://app.test", host="app.test", scheme="wss")
    assert not allows(OriginPolicy(), "null")
    assert not allows(OriginPolicy(["self"]), "null")


def test_exact_origins_match_scheme_host_and_port() -> None:
    policy = OriginPolicy(["https://a.example", "http://localhost:8000"])
    assert allows(policy, "https://a.example")
    assert allows(policy, "https://a.example:443")  # the default port, spelled out
    assert allows(policy, "http://localhost:8000")
    assert not allows(policy, "http://a.example")  # scheme differs
    assert not allows(policy, "https://a.example:8443")  # port differs
    assert not allows(policy, "http://localhost")  # port 80, not 8000
    assert not allows(policy, "http://localhost:8001")
    assert not allows(policy, "https://b.example")
    assert not allows(policy, "https://evil.example")  # shares only the top-level domain
    assert not allows(policy, "https://a.example.evil")


def test_exact_entries_ignore_case_and_trailing_slashes() -> None:
    policy = OriginPolicy(["HTTPS://SHOP.BOX", "http://a.example//"])
    assert allows(policy, "https://shop.box")
    assert allows(policy, "https://SHOP.BOX")
    assert allows(policy, "http://a.example")
    assert allows(policy, "http://a.example/")  # a trailing slash is still the origin


def test_subdomain_wildcard_with_scheme() -> None:
    policy = OriginPolicy(["https://*.example.com"])
    assert allows(policy, "https://example.com")
    assert allows(policy, "https://a.example.com")
    assert allows(policy, "https://a.b.example.com:8443")
    assert not allows(policy, "http://a.example.com")  # the entry names https only
    assert not allows(policy, "https://badexample.com")  # a suffix, not a subdomain
    assert not allows(policy, "https://example.com.evil")


def test_subdomain_wildcard_entries_ignore_case_and_a_trailing_slash() -> None:
    policy = OriginPolicy(["HTTPS://*.SHOP.BOX/"])
    assert allows(policy, "https://a.shop.box")
    assert allows(policy, "https://shop.box")
    assert not allows(policy, "http://a.shop.box")


def test_dot_domain_admits_every_scheme_and_subdomain() -> None:
    policy = OriginPolicy([".Example.com"])
    assert allows(policy, "http://example.com")
    assert allows(policy, "https://x.example.com")
    assert not allows(policy, "https://notexample.com")


def test_every_entry_counts_whatever_its_position() -> None:
    """Entries after a ``self``, ``null``, ``*`` or domain entry are still read."""
    after_self = OriginPolicy(["self", "https://a.example"])
    assert allows(after_self, "https://a.example")
    after_null = OriginPolicy(["null", "https://a.example"])
    assert allows(after_null, "https://a.example")
    after_domain = OriginPolicy([".one.example", "https://a.example", "https://*.two.example"])
    assert allows(after_domain, "https://a.example")
    after_wildcard = OriginPolicy(["https://*.two.example", "https://b.example"])
    assert allows(after_wildcard, "https://b.example")
    assert allows(after_domain, "https://x.two.example")
    assert allows(after_domain, "http://x.one.example")


def test_a_comma_separated_string_is_a_list() -> None:
    policy = OriginPolicy("https://a.example,https://b.example, ,")
    assert allows(policy, "https://a.example")
    assert allows(policy, "https://b.example")
    # a list replaces the same-origin default
    assert not allows(policy, "https://app.test", host="app.test", scheme="wss")


def test_bad_entries_are_refused_at_construction() -> None:
    for bad in ("example.com", "ftp://example.com", "https://", "http://x://*.a.com"):
        with pytest.raises(ValueError, match="not an origin"):
            OriginPolicy([bad])


# -- same origin (the default) -----------------------------------------------------------------


def test_same_origin_follows_the_host_header_and_scheme() -> None:
    policy = OriginPolicy()
    assert allows(policy, "http://app.test", host="app.test", scheme="ws")
    assert allows(policy, "https://app.test", host="app.test", scheme="wss")
    assert allows(policy, "https://app.test", host="app.test:443", scheme="wss")
    assert allows(policy, "http://app.test:8000", host="app.test:8000", scheme="ws")
    assert allows(policy, "https://app.test", host="app.test", scheme="https")
    assert not allows(policy, "http://app.test", host="app.test", scheme="wss")  # scheme
    assert not allows(policy, "https://app.test", host="app.test", scheme="ws")
    assert not allows(policy, "http://app.test:8000", host="app.test", scheme="ws")  # port
    assert not allows(policy, "http://app.test", host="app.test:8000", scheme="ws")
    assert not allows(policy, "http://evil.test", host="app.test", scheme="ws")


def test_same_origin_needs_a_usable_host_header() -> None:
    policy = OriginPolicy()
    assert not allows(policy, "http://app.test", host="", scheme="ws")
    assert not allows(policy, "http://xxxx", host=":80", scheme="ws")  # a Host without a name
    assert not allows(policy, "http://app.test", host="app.test:notaport", scheme="ws")


def test_a_list_without_self_refuses_the_own_origin() -> None:
    policy = OriginPolicy(["https://other.example"])
    assert not allows(policy, "http://app.test", host="app.test", scheme="ws")
    assert allows(OriginPolicy(["self"]), "http://app.test", host="app.test", scheme="ws")


def test_a_missing_origin_is_refused_unless_allowed() -> None:
    assert not allows(OriginPolicy(), None)
    assert not allows(OriginPolicy(["*"]), None)
    assert allows(OriginPolicy(allow_missing=True), None)


# -- what is not an origin ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "http://",
        "http://:80",
        "ftp://files.example",
        "app.test",
        "http://a.example/path",
        "http://a.example?q=1",
        "http://a.example#frag",
        "http://user@a.example",
        "http://a b.example",
        "http://a.example\\@evil.example",
        " http://a.example",
        "http://a.example\x0c",  # whitespace that str.strip() removes
        "http://a.example:99999",
    ],
)
def test_malformed_origins_are_refused_even_by_star(origin: str) -> None:
    assert not allows(OriginPolicy(["*"]), origin)


def test_origins_compare_case_insensitively() -> None:
    policy = OriginPolicy(["https://xyz.example"])
    assert allows(policy, "https://XYZ.example")
    assert allows(policy, "HTTPS://xyz.EXAMPLE")
