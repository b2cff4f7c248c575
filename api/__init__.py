"""The ASGI API: routes, SSE/NDJSON encoding, auth and error mapping."""
