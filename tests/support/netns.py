"""A network namespace that one server process runs in, and a silent partition from Redis.

The namespace has two veth links to the host (the root namespace):

- the *client* link: a server in the namespace listens on ``client_host``; clients on the host
  reach it through this link, which a partition never touches;
- the *redis* link: the namespace reaches Redis at ``redis_host`` (Redis binds it on the host).

:meth:`Namespace.partition` routes the Redis link's two addresses into an ``ifb`` device on each
side; an ``ifb`` discards what is routed into it, so every packet between the namespace and
Redis is dropped in both directions, with no RST, no ICMP error and no change of link state:
open TCP connections just hear nothing, new ones time out. :meth:`Namespace.heal` removes the
two routes. Only ``ip`` (iproute2) is needed, as root; no iptables, nft or netem.

Names are unique per run (``agf<pid><random>``); :meth:`Namespace.close` removes everything,
and namespaces left by a run that died are removed by the next one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator

__all__ = ["Namespace", "namespace", "unavailable_reason"]

PREFIX = "agf"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (``None`` when they can)."""
    if shutil.which("ip") is None:
        return "needs the ip tool: apt-get install iproute2"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    probe = f"{PREFIX}probe{secrets.token_hex(2)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        ifb = _ip("-n", probe, "link", "add", "x", "type", "ifb", check=False)
        if ifb.returncode != 0:
            return f"the kernel has no ifb devices (CONFIG_IFB): {ifb.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _sweep_stale() -> None:
    """Remove namespaces and ifb devices of runs whose process is gone."""
    listed = _ip("netns", "list", check=False).stdout.split()
    links = _ip("-o", "link", "show", check=False).stdout
    names = {n for n in listed if n.startswith(PREFIX)}
    names |= {
        part.split("@")[0].rstrip(":")[:-2]
        for part in links.split()
        if part.startswith(PREFIX) and part.rstrip(":").endswith("xr")
    }
    for name in names:
        digits = name[len(PREFIX) : len(PREFIX) + 7]
        if not digits.isdigit() or _alive(int(digits)):
            continue
        _ip("link", "del", f"{name}xr", check=False)
        _ip("link", "del", f"{name}c0", check=False)
        _ip("link", "del", f"{name}r0", check=False)
        _ip("netns", "del", name, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_block() -> ipaddress.IPv4Network:
    """A 10.x.y.0/29 that no address or route of the host uses."""
    taken = _ip("-4", "-o", "addr", "show", check=False).stdout
    taken += _ip("-4", "route", "show", "table", "all", check=False).stdout
    for _ in range(200):
        block = ipaddress.IPv4Network(
            f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.{8 * random.randint(0, 31)}/29"
        )
        if f"{block.network_address}".rsplit(".", 1)[0] + "." not in taken:
            return block
    raise RuntimeError("no free 10.x.y.0/29 block for the namespace")


class Namespace:
    """One namespace with a client link and a Redis link to the host (see the module doc)."""

    def __init__(self) -> None:
        _sweep_stale()
        self.name = f"{PREFIX}{os.getpid() % 10_000_000:07d}{secrets.token_hex(1)}"
        hosts = list(_free_block().hosts())  # six usable addresses: two /30s
        self.host_client, self.client_host = str(hosts[0]), str(hosts[1])
        self.redis_host, self.inner_redis = str(hosts[4]), str(hosts[5])
        self.partitioned = False
        self._made = False

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> None:
        n = self.name
        _ip("netns", "add", n)
        self._made = True
        _ip("-n", n, "link", "set", "lo", "up")
        for side, host_addr, inner_addr in (
            ("c", self.host_client, self.client_host),
            ("r", self.redis_host, self.inner_redis),
        ):
            outer, inner = f"{n}{side}0", f"{n}{side}1"
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", n)
            _ip("addr", "add", f"{host_addr}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", n, "addr", "add", f"{inner_addr}/30", "dev", inner)
            _ip("-n", n, "link", "set", inner, "up")
        _ip("link", "add", f"{n}xr", "type", "ifb")  # the host's sink
        _ip("link", "set", f"{n}xr", "up")
        _ip("-n", n, "link", "add", f"{n}xn", "type", "ifb")  # the namespace's sink
        _ip("-n", n, "link", "set", f"{n}xn", "up")

    def partition(self) -> None:
        """Drop every packet between the namespace and Redis, both ways, silently."""
        _ip("-n", self.name, "route", "add", f"{self.redis_host}/32", "dev", f"{self.name}xn")
        _ip("route", "add", f"{self.inner_redis}/32", "dev", f"{self.name}xr")
        self.partitioned = True

    def heal(self) -> None:
        """Let packets through again (connections that did not time out carry on)."""
        if not self.partitioned:
            return
        _ip("-n", self.name, "route", "del", f"{self.redis_host}/32", check=False)
        _ip("route", "del", f"{self.inner_redis}/32", check=False)
        self.partitioned = False

    def close(self) -> None:
        """Remove the routes, devices and the namespace (whatever state they are in)."""
        if not self._made:
            return
        self.heal()
        n = self.name
        for link in (f"{n}xr", f"{n}c0", f"{n}r0"):
            _ip("link", "del", link, check=False)
        _ip("netns", "del", n, check=False)
        self._made = False


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    """A created :class:`Namespace`, removed on exit even after a failure."""
    ns = Namespace()
    try:
        ns.create()
        yield ns
    finally:
        ns.close()
