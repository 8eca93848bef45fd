"""The kinds of PUT /users/{sub}/api-key that test_put_requests.py sends: each scenario's path, and
its request given the side's current ETag of Alice's key."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.keys.key_requests import (
    ALICE,
    MALLORY,
    NEW_KEY,
    NOBODY,
)
from tests.keys.key_requests import (
    as_ as _as,
)

ALICE_PATH = f"/users/{ALICE}/api-key"
NEW_BODY: dict[str, Any] = {"json": {"api_key": NEW_KEY}}
JSON = {"Content-Type": "application/json"}


# Each scenario: the path, and the request given the side's current ETag of Alice's key.
REQUESTS: dict[str, Callable[[str], tuple[str, dict[str, Any]]]] = {
    "replace own key": lambda _: (ALICE_PATH, {**NEW_BODY, "headers": _as(ALICE)}),
    "create a key": lambda _: (f"/users/{NOBODY}/api-key", {**NEW_BODY, "headers": _as(NOBODY)}),
    "service token": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": _as("billing-service", "api-key:write users:any")},
    ),
    "key trimmed": lambda _: (
        ALICE_PATH,
        {"json": {"api_key": f"  {NEW_KEY}\n"}, "headers": _as(ALICE)},
    ),
    "json with a charset": lambda _: (
        ALICE_PATH,
        {
            "content": json.dumps({"api_key": NEW_KEY}).encode(),
            "headers": {**_as(ALICE), "Content-Type": "application/json; charset=utf-8"},
        },
    ),
    "json without a content type": lambda _: (
        ALICE_PATH,
        {"content": json.dumps({"api_key": NEW_KEY}).encode(), "headers": _as(ALICE)},
    ),
    "json as text/plain": lambda _: (
        ALICE_PATH,
        {
            "content": json.dumps({"api_key": NEW_KEY}).encode(),
            "headers": {**_as(ALICE), "Content-Type": "text/plain"},
        },
    ),
    "json in utf-16": lambda _: (
        ALICE_PATH,
        {
            "content": json.dumps({"api_key": NEW_KEY}).encode("utf-16"),
            "headers": {**_as(ALICE), **JSON},
        },
    ),
    "duplicate field": lambda _: (
        ALICE_PATH,
        {
            "content": b'{"api_key": "sk-first-0123456789", "api_key": "'
            + NEW_KEY.encode()
            + b'"}',
            "headers": {**_as(ALICE), **JSON},
        },
    ),
    "not json": lambda _: (ALICE_PATH, {"content": b"{api_key", "headers": {**_as(ALICE), **JSON}}),
    "empty body": lambda _: (ALICE_PATH, {"content": b"", "headers": {**_as(ALICE), **JSON}}),
    "a list": lambda _: (ALICE_PATH, {"json": [NEW_KEY], "headers": _as(ALICE)}),
    "extra field": lambda _: (
        ALICE_PATH,
        {"json": {"api_key": NEW_KEY, "note": "x"}, "headers": _as(ALICE)},
    ),
    "whitespace in key": lambda _: (
        ALICE_PATH,
        {"json": {"api_key": "sk-CANARY two"}, "headers": _as(ALICE)},
    ),
    "empty key": lambda _: (ALICE_PATH, {"json": {"api_key": " "}, "headers": _as(ALICE)}),
    "deeply nested json": lambda _: (
        ALICE_PATH,
        {"content": b"[" * 5000 + b"]" * 5000, "headers": {**_as(ALICE), **JSON}},
    ),
    "body too large": lambda _: (
        ALICE_PATH,
        {"json": {"api_key": "k" * 20_000}, "headers": _as(ALICE)},
    ),
    "no token": lambda _: (ALICE_PATH, NEW_BODY),
    "basic scheme": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {"Authorization": "Basic x"}},
    ),
    "expired token": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": _as(ALICE, exp=int(time.time()) - 600)},
    ),
    "no write scope": lambda _: (ALICE_PATH, {**NEW_BODY, "headers": _as(ALICE, "api-key:read")}),
    "someone else's key": lambda _: (ALICE_PATH, {**NEW_BODY, "headers": _as(MALLORY)}),
    "no token and a bad body": lambda _: (ALICE_PATH, {"json": {"api_key": ""}}),
    "sub too long": lambda _: (
        f"/users/{'x' * 256}/api-key",
        {**NEW_BODY, "headers": _as("x" * 256)},
    ),
    "control character": lambda _: ("/users/a%01b/api-key", {**NEW_BODY, "headers": _as("a\x01b")}),
    "trailing slash": lambda _: (f"{ALICE_PATH}/", {**NEW_BODY, "headers": _as(ALICE)}),
    "newline in sub": lambda _: ("/users/a%0Ab/api-key", {**NEW_BODY, "headers": _as("a\nb")}),
    "newline in sub, no token": lambda _: ("/users/a%0Ab/api-key", NEW_BODY),
    "invalid utf-8 in sub": lambda _: (
        "/users/x%ff/api-key",
        {**NEW_BODY, "headers": _as("x\ufffd")},
    ),
    "newline after the route": lambda _: (f"{ALICE_PATH}%0A", {**NEW_BODY, "headers": _as(ALICE)}),
    "lone surrogate in key": lambda _: (
        ALICE_PATH,
        {"content": b'{"api_key": "sk-abc\\ud800defghijkl"}', "headers": {**_as(ALICE), **JSON}},
    ),
    "body not utf-8": lambda _: (
        ALICE_PATH,
        {"content": b'{"api_key": "sk-\xe9-0123456789"}', "headers": {**_as(ALICE), **JSON}},
    ),
    "body not utf-8, no token": lambda _: (
        ALICE_PATH,
        {"content": b'{"api_key": "sk-\xe9-0123456789"}', "headers": JSON},
    ),
    "if-none-match on a stored key": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-None-Match": "*"}},
    ),
    "if-none-match on a new key": lambda _: (
        f"/users/{NOBODY}/api-key",
        {**NEW_BODY, "headers": {**_as(NOBODY), "If-None-Match": "*"}},
    ),
    "if-match the current etag": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": f'"stale", {etag}'}},
    ),
    "if-match a stale etag": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": '"1.0"'}},
    ),
    "if-match any": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": "*"}},
    ),
    "if-none-match the current etag": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-None-Match": f'"1.0", {etag}'}},
    ),
    "if-none-match the current etag, weak": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-None-Match": f"W/{etag}"}},
    ),
    "if-none-match another etag": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-None-Match": '"1.0"'}},
    ),
    "if-none-match in two field lines": lambda etag: (
        ALICE_PATH,
        {
            **NEW_BODY,
            "headers": [*_as(ALICE).items(), ("If-None-Match", '"1.0"'), ("If-None-Match", etag)],
        },
    ),
    "if-match the current etag, weak": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": f"W/{etag}"}},
    ),
    "if-match any in a list": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": '*, "x"'}},
    ),
    "if-match not quoted": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": "1.0"}},
    ),
    "if-match and if-none-match": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": etag, "If-None-Match": etag}},
    ),
    "if-match any on a new key": lambda _: (
        f"/users/{NOBODY}/api-key",
        {**NEW_BODY, "headers": {**_as(NOBODY), "If-Match": "*"}},
    ),
}
