"""The chat example: the same page and protocol served by FastAPI, Starlette and Quart.

Run one with ``asgi-groups demo --framework fastapi`` (or ``starlette`` / ``quart``), which
starts uvicorn with the settings of :mod:`asgi_groups.servers`, or by hand with the server's
frame limit set to the library's: ``uvicorn examples.chat.fastapi_app:app --ws-max-size 65536
--timeout-graceful-shutdown 10``; then log in as greg / Greg, amanda / Amanda, ... The page
talks through the browser client (``/asgi-groups.js``): it reconnects by itself, gets what it
missed while away, and shows the recent conversation after a reload (history is on unless
``CHAT_HISTORY=0``).
"""
