"""Process-level setup shared by every benchmark child: the open-files limit."""

from __future__ import annotations

import resource


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (5,000 sockets need more than the usual 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft
