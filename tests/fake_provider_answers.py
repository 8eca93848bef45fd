"""What the fake provider (tests/fake_provider.py) answers, in the shapes OpenAI's and Anthropic's
SDKs read: a JSON body, and the same answer as server-sent events for `"stream": true`.

The request's model picks a behaviour:

    ECHO     the answer's text (and an `x-echo-key` header) holds the key it was sent
    HANG     no answer for HANG_SECONDS (a proxy's timeout is shorter)
    SLOW     streamed: the first event at once, the rest SLOW_SECONDS later
    BREAK    streamed: the first event, then the connection is cut mid-answer
    ENDLESS  streamed: an event every ENDLESS_EVERY seconds for ENDLESS_SECONDS, until the
             client goes away
    GZIP     the answer gzip-compressed, whatever Accept-Encoding said (its text holds the key)
    BROTLI   the answer marked `Content-Encoding: br` (bytes nobody here can read)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any, Final

ECHO: Final = "fake-echo"
HANG: Final = "fake-hang"
SLOW: Final = "fake-slow"
BREAK: Final = "fake-break"
ENDLESS: Final = "fake-endless"
GZIP: Final = "fake-gzip"
BROTLI: Final = "fake-br"
HANG_SECONDS: Final = 3.0
SLOW_SECONDS: Final = 1.0
ENDLESS_EVERY: Final = 0.05
ENDLESS_SECONDS: Final = 30.0
TEXT: Final = "Hello from the fake provider"

Made = tuple[dict[str, Any], list[str]]  # the JSON answer, and the same as events


def answer(path: str, request: dict[str, Any], key: str, body: bytes) -> Made | None:
    """The answer to a POST of `request` to `path`, or None for a path it does not serve."""
    model = str(request.get("model", "fake-model"))
    text = f"your key is {key}" if model in (ECHO, GZIP) else TEXT
    if path == "/v1/chat/completions":
        return _chat_completion(model, text)
    if path == "/v1/embeddings":
        embedding = {"object": "embedding", "index": 0, "embedding": [0.25, 0.5]}
        usage = {"prompt_tokens": 2, "total_tokens": 2}
        return {"object": "list", "data": [embedding], "model": model, "usage": usage}, []
    if path == "/v1/audio/transcriptions":
        return {"text": f"received {len(body)} bytes"}, []
    if path == "/v1/messages":
        return _message(model, text)
    if path == "/v1/messages/count_tokens":
        return {"input_tokens": len(body)}, []
    return None


def events(made: Made, model: str) -> Iterator[str]:
    if model != ENDLESS:
        yield from made[1]
        return
    count = int(ENDLESS_SECONDS / ENDLESS_EVERY)
    yield from itertools.islice(itertools.cycle(made[1][:-1]), count)


def pause(model: str, number: int) -> float:
    """Seconds to wait after event `number` of a stream."""
    if model == SLOW and number == 0:
        return SLOW_SECONDS
    return ENDLESS_EVERY if model == ENDLESS else 0.0


def _sse(data: object, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _chat_completion(model: str, text: str) -> Made:
    base = {"id": "chatcmpl-fake", "created": 1_700_000_000, "model": model}
    whole = {
        **base,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }
    chunks = []
    for word in _words(text):
        choice = {"index": 0, "delta": {"content": word}, "finish_reason": None}
        chunks.append(_sse({**base, "object": "chat.completion.chunk", "choices": [choice]}))
    last = {"index": 0, "delta": {}, "finish_reason": "stop"}
    chunks.append(_sse({**base, "object": "chat.completion.chunk", "choices": [last]}))
    return whole, [*chunks, "data: [DONE]\n\n"]


def _message(model: str, text: str) -> Made:
    usage = {"input_tokens": 3, "output_tokens": 5}
    base = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model}
    whole = {
        **base,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    started: dict[str, Any] = {
        **base,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    stream = [
        _sse({"type": "message_start", "message": started}, "message_start"),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
    ]
    for word in _words(text):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": word},
        }
        stream.append(_sse(delta, "content_block_delta"))
    stream += [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
            "message_delta",
        ),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return whole, stream


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [word if i == 0 else f" {word}" for i, word in enumerate(words)]
