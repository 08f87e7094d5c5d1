"""Group messaging behind the auth libraries apps already use, one runnable app each.

``fastapi_jwt`` (FastAPI's OAuth2/JWT tutorial), ``fastapi_users_app`` (fastapi-users),
``starlette_auth`` (Starlette's ``AuthenticationMiddleware``) and ``quart_auth_app``
(quart-auth). Each serves the same socket, :class:`examples.auth.common.Chat`, at ``/ws``:
``uvicorn examples.auth.fastapi_jwt:app``, or ``uvicorn --factory examples.auth.<name>:create_app``.
"""
