"""The chat example: the same page and protocol served by FastAPI, Starlette and Quart.

Run one with ``uvicorn examples.chat.fastapi_app:app`` (or ``starlette_app`` / ``quart_app``)
and log in as greg / Greg, amanda / Amanda, ...
"""
