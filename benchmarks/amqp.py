"""Messages from a RabbitMQ queue to 1,000 sockets, beside the same messages sent by send_group.

    python -m benchmarks.amqp [--sockets 1000] [--messages 1000] [--size 100] [--redis URL]

A uvicorn child serves ``/ws`` (every socket in group ``bench``) on a Registry (memory, or Redis
with ``--redis``) with an ``AmqpSource`` that starts on command. Each run fills a fresh queue,
then either starts the source (``amqp``) or has the server call ``send_group`` for the same
bodies in a loop (``direct``), and times from the trigger to the last delivery at the picows
clients; the server's CPU over that window, per message, is the cost of each path. Needs
RabbitMQ at 127.0.0.1:5672 (guest/guest). Results: benchmarks/AMQP.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

from .procstat import cpu_ns
from .tally import Tally
from .wsclient import Pool

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
GROUP = "bench"
#: How long one run may take before it is called failed, in seconds.
RUN_TIMEOUT = 300.0


# -- the server (in the child) ---------------------------------------------------------------


def server_app(queue: str, redis_url: str | None) -> Any:
    """The benchmark's ASGI app: sockets in ``bench``, ``POST /start`` and ``POST /send``."""
    from asgi_groups import Registry
    from asgi_groups.amqp import AmqpSource

    registry = Registry(redis_url)
    source = AmqpSource(registry, AMQP_URL, queue, declare=False)

    async def respond(send: Any, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": data})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await registry.start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await source.close()
                    await registry.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            async with registry.attached(send, None, [GROUP]):
                while (await receive())["type"] != "websocket.disconnect":
                    pass
        elif scope["path"] == "/start":
            await source.start()
            await respond(send, {"ok": True})
        elif scope["path"] == "/send":
            request = json.loads((await receive())["body"])
            for data in request["bodies"]:
                await registry.send_group(GROUP, data)
            await respond(send, {"ok": True})
        elif scope["path"] == "/stats":
            await respond(send, {"source": source.stats()})

    return app


# -- the driver ------------------------------------------------------------------------------


def bodies(count: int, size: int) -> list[dict[str, Any]]:
    """What both paths send: the same object, the id the source adds included."""
    return [{"text": "x" * size, "id": f"m{n}"} for n in range(count)]


async def fill(queue: str, count: int, size: int) -> None:
    """Declare ``queue`` (and its dead-letter exchange) and put ``count`` messages in it."""
    import aio_pika

    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_exchange(f"{queue}.dead", aio_pika.ExchangeType.FANOUT)
        await channel.declare_queue(queue, durable=True)
        pending = []
        for n in range(count):
            body = {"target": "group", "name": GROUP, "data": {"text": "x" * size}}
            message = aio_pika.Message(json.dumps(body).encode(), message_id=f"m{n}")
            pending.append(channel.default_exchange.publish(message, routing_key=queue))
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)


async def drop(queue: str) -> None:
    import aio_pika

    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.exchange_delete(f"{queue}.dead")


async def post(port: int, path: str, body: Any = None) -> Any:
    import httpx

    async with httpx.AsyncClient(timeout=RUN_TIMEOUT) as client:
        response = await client.post(f"http://127.0.0.1:{port}{path}", json=body or {})
        response.raise_for_status()
        return response.json()


async def one_run(mode: str, args: argparse.Namespace, redis_url: str | None) -> dict[str, Any]:
    """Start a server, open the sockets, send the messages one way; the figures."""
    from tests.support.servers import free_port, wait_for_port

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "BENCH_QUEUE": queue, "BENCH_REDIS": redis_url or ""}
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.amqp:serve", "--factory"]
    cmd += ["--port", str(port), "--log-level", "warning", "--ws", "websockets-sansio"]
    server = await asyncio.create_subprocess_exec(*cmd, env=env)
    tally = Tally()
    pool = Pool(f"ws://127.0.0.1:{port}/ws", "http://127.0.0.1", "ws", tally)
    try:
        await fill(queue, args.messages if mode == "amqp" else 0, args.size)
        await asyncio.to_thread(wait_for_port, port)
        await pool.resize(args.sockets)
        await asyncio.sleep(0.5)
        expected = args.sockets * args.messages
        tally.reset(expected)
        cpu0, t0 = cpu_ns(server.pid), time.perf_counter()
        if mode == "amqp":
            await post(port, "/start")
        else:
            await post(port, "/send", {"bodies": bodies(args.messages, args.size)})
        async with asyncio.timeout(RUN_TIMEOUT):
            await tally.done.wait()
        seconds = time.perf_counter() - t0
        cpu = (cpu_ns(server.pid) - cpu0) / 1e9
        return {
            "mode": mode,
            "messages_per_s": args.messages / seconds,
            "deliveries_per_s": expected / seconds,
            "server_cpu_us_per_message": cpu / args.messages * 1e6,
            "seconds": seconds,
        }
    finally:
        pool.close_all()
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)
        await drop(queue)


def serve() -> Any:
    """The uvicorn factory of the server child (``BENCH_QUEUE``, ``BENCH_REDIS``)."""
    return server_app(os.environ["BENCH_QUEUE"], os.environ.get("BENCH_REDIS") or None)


async def main(args: argparse.Namespace) -> None:
    rows = []
    for _ in range(args.repeat):
        for mode in ("direct", "amqp"):
            rows.append(await one_run(mode, args, args.redis))
            shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}
            print(json.dumps(shown))
    for mode in ("direct", "amqp"):
        mine = [r for r in rows if r["mode"] == mode]
        best = max(mine, key=lambda r: r["messages_per_s"])
        cpu = min(r["server_cpu_us_per_message"] for r in mine)
        print(
            f"{mode:7} best {best['messages_per_s']:8.0f} msg/s "
            f"({best['deliveries_per_s']:9.0f} deliveries/s), "
            f"server CPU {cpu:7.1f} us/message (lowest of {len(mine)})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100, help="text bytes per message")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", default=None, help="a Redis URL (default: memory backend)")
    asyncio.run(main(parser.parse_args()))
