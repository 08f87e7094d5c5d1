"""Runnable example apps built on asgi_groups."""
