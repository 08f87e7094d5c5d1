"""Side-by-side fan-out benchmark: asgi_groups against a no-ASGI limit, a raw ASGI loop and peers.

Run ``python -m benchmarks.fanout --quick``; see ``benchmarks/README.md``.
"""
