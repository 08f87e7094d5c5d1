"""Thin framework adapters: ``asgi_groups.adapters.fastapi``, ``.starlette``, ``.quart``."""
