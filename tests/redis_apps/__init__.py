"""Small ASGI apps that multi-process tests run under uvicorn against a real Redis."""
