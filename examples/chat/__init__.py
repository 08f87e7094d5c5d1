"""The chat example: the same page and protocol served by FastAPI, Starlette and Quart.

Run one with ``uvicorn examples.chat.fastapi_app:app`` (or ``starlette_app`` / ``quart_app``)
and log in as greg / Greg, amanda / Amanda, ... The page talks through the browser client
(``/asgi-groups.js``): it reconnects by itself, gets what it missed while away, and shows the
recent conversation after a reload (history is on unless ``CHAT_HISTORY=0``).
"""
