"""Send to a topic from a separate process, through Redis, no web server involved.

    NOTIFY_REDIS_URL=redis://127.0.0.1:6379/0 python -m examples.notify_script news '{"v": 1}'

Every process of ``examples/notify.py`` on the same Redis delivers it to its listeners.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from asgi_groups import Registry


async def notify(registry: Registry, topic: str, data: Any) -> None:
    """The message ``examples/notify.py`` listeners expect, sent through ``registry``."""
    await registry.send_group(topic, {"topic": topic, "data": data})


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send to a topic through Redis.")
    parser.add_argument("topic")
    parser.add_argument("data", help="a JSON value")
    parser.add_argument("--redis-url", default=os.environ.get("NOTIFY_REDIS_URL"))
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("give --redis-url or set NOTIFY_REDIS_URL (other processes share only Redis)")
    try:
        data = json.loads(args.data)
    except ValueError:
        parser.error(f"not JSON: {args.data!r}")
    async with Registry(args.redis_url) as registry:
        await notify(registry, args.topic, data)
    print(f"sent to {args.topic!r}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
