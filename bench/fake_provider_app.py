"""The benchmark's provider: a bare ASGI app under uvicorn, answering `POST /v1/chat/completions`
the way OpenAI does, as fast as uvicorn can, after a latency the request asks for.

    x-bench-latency-ms: N   answer after N ms (default 0: at once)
    "stream": true          server-sent events instead: the first at once, carrying the
                            moment it was sent (`sent_ns`, CLOCK_MONOTONIC, which every process
                            on the machine shares), the rest x-bench-gap-ms later (default 200)

It reads no key and checks nothing: it stands for the provider, not for keyvault. Served with
`uvicorn --lifespan off`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench provider."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }
).encode()
_JSON_HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"req_bench")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"x-request-id", b"req_bench")]
_REST = b"".join(
    b'data: {"choices": [{"index": 0, "delta": {"content": "%d"}}]}\n\n' % n for n in range(5)
)


def _header(scope: dict[str, Any], name: bytes, default: float) -> float:
    for key, value in scope["headers"]:
        if key == name:
            return float(value)
    return default


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] != "/v1/chat/completions":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if b'"stream": true' in body or b'"stream":true' in body:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        first = b'data: {"sent_ns": %d}\n\n' % time.monotonic_ns()
        await send({"type": "http.response.body", "body": first, "more_body": True})
        await asyncio.sleep(_header(scope, b"x-bench-gap-ms", 200) / 1000)
        await send({"type": "http.response.body", "body": _REST + b"data: [DONE]\n\n"})
        return
    latency = _header(scope, b"x-bench-latency-ms", 0)
    if latency:
        await asyncio.sleep(latency / 1000)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(_COMPLETION)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _COMPLETION})


def create_app() -> Any:
    return app
