"""The providers' own SDKs, unchanged but for their base URL, calling through the real `keyvault
serve` to a fake provider over real HTTP: answers whole and streamed (the first event before the
provider has finished), a caller going away, a provider breaking off or hanging, bodies larger than
the cap, and neither the key nor the token in anything the server writes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anthropic
import httpx
import openai
import pytest

from keyvault_client import KeyVault, anthropic_client, openai_client
from tests.audit_support import new_sub, stored_events
from tests.conftest import bearer, mint
from tests.fake_provider import FakeProvider
from tests.fake_provider_answers import BREAK, ENDLESS, HANG, SLOW, SLOW_SECONDS, TEXT
from tests.real_server import RunningServer, server_environment, serving
from tests.web.proxy_support import ANTHROPIC_KEY, KEYS, OPENAI_KEY, SERVICE_USE, USE, WRITE

pytestmark = pytest.mark.server

MAX_BODY = 256 * 1024
TIMEOUT = 2.0  # longer than the fake's SLOW pause, shorter than its HANG
DEADLINE_SECONDS = 10.0
MESSAGES: Any = [{"role": "user", "content": "hi"}]
REDACTED = "[redacted by keyvault]"


@pytest.fixture(scope="module")
def server(
    database_url: str, fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = server_environment(
        database_url,
        KEYVAULT_OPENAI_BASE_URL=f"{fake.base_url}/v1",
        KEYVAULT_ANTHROPIC_BASE_URL=fake.base_url,
        KEYVAULT_PROXY_TIMEOUT=str(TIMEOUT),
        KEYVAULT_PROXY_MAX_BODY_BYTES=str(MAX_BODY),
        KEYVAULT_RATE_LIMIT_PER_ADDRESS="",
        KEYVAULT_LOG_LEVEL="DEBUG",
    )
    with serving(tmp_path_factory.mktemp("proxy"), env) as running:
        yield running


def _user(server: RunningServer, key: dict[str, str] = KEYS) -> str:
    sub = new_sub()
    with httpx.Client(base_url=server.base_url, headers=bearer(mint(sub, WRITE))) as http:
        for provider, api_key in key.items():
            path = f"/users/{quote(sub, safe='')}/api-keys/{provider}"
            assert http.put(path, json={"api_key": api_key}).status_code == 201
    return sub


class Sdks:
    """The providers' SDK clients of one test, closed at its end."""

    def __init__(self, server: RunningServer, stack: ExitStack) -> None:
        self._server = server
        self._stack = stack

    def openai(self, sub: str, token: str | None = None) -> openai.OpenAI:
        """As the Python client's openai_client(sub) builds it: a service token, the user named."""
        client = openai.OpenAI(
            base_url=f"{self._server.base_url}/proxy/openai",
            api_key=token or mint(f"svc-{new_sub()}", SERVICE_USE),
            default_headers={"X-Keyvault-User": quote(sub, safe="")},
            max_retries=0,
            timeout=DEADLINE_SECONDS,
        )
        return self._stack.enter_context(client)

    def anthropic(self, sub: str) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            base_url=f"{self._server.base_url}/proxy/anthropic",
            api_key=mint(f"svc-{new_sub()}", SERVICE_USE),
            default_headers={"X-Keyvault-User": quote(sub, safe="")},
            max_retries=0,
            timeout=DEADLINE_SECONDS,
        )
        return self._stack.enter_context(client)


@pytest.fixture
def sdk(server: RunningServer) -> Iterator[Sdks]:
    with ExitStack() as stack:
        yield Sdks(server, stack)


def _eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


async def _last_use(database_url: str, sub: str) -> Any:
    uses = [e.event for e in await stored_events(database_url, sub) if e.event.action == "use"]
    return uses[-1] if uses else None


def test_openai_chat_completion_through_the_proxy(
    sdk: Sdks, server: RunningServer, fake: FakeProvider
) -> None:
    sub = _user(server)
    completion = sdk.openai(sub).chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == TEXT
    assert completion._request_id == "req_fake_0001"
    assert fake.last("/v1/chat/completions").headers["authorization"] == f"Bearer {OPENAI_KEY}"


def test_the_python_clients_sdk_clients_call_through_the_proxy(
    server: RunningServer, fake: FakeProvider
) -> None:
    sub = _user(server)
    token = mint(f"svc-{new_sub()}", SERVICE_USE)
    with KeyVault(server.base_url, token=token) as vault:
        with openai_client(sub, vault=vault, max_retries=0) as gpt:
            reply = gpt.chat.completions.create(model="m", messages=MESSAGES)
        with anthropic_client(sub, vault=vault, max_retries=0) as claude:
            message = claude.messages.create(model="m", max_tokens=8, messages=MESSAGES)
    assert reply.choices[0].message.content == TEXT
    assert message.content[0].type == "text"
    assert message.content[0].text == TEXT
    assert fake.last("/v1/chat/completions").headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert fake.last("/v1/messages").headers["x-api-key"] == ANTHROPIC_KEY


def test_a_users_own_token_through_the_openai_sdk(sdk: Sdks, server: RunningServer) -> None:
    sub = _user(server)
    client = sdk.openai(sub, token=mint(sub, USE))
    embedding = client.embeddings.create(model="m", input="hi")
    assert embedding.data[0].embedding == [0.25, 0.5]


def test_anthropic_messages_through_the_proxy(
    sdk: Sdks, server: RunningServer, fake: FakeProvider
) -> None:
    sub = _user(server)
    client = sdk.anthropic(sub)
    message = client.messages.create(model="m", max_tokens=8, messages=MESSAGES)
    assert message.content[0].type == "text"
    assert message.content[0].text == TEXT
    assert client.messages.count_tokens(model="m", messages=MESSAGES).input_tokens > 0
    seen = fake.last("/v1/messages")
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY
    # The SDK's own API version, not the default keyvault adds for callers that send none.
    versions = [value for name, value in seen.header_list if name == "anthropic-version"]
    assert len(versions) == 1
    assert versions != ["2023-06-01"] or anthropic.__version__.startswith("0.")


def test_openai_events_arrive_as_the_provider_sends_them(
    sdk: Sdks, server: RunningServer, fake: FakeProvider
) -> None:
    sub = _user(server)
    sent_before = len(fake.events_sent)
    stream = sdk.openai(sub).chat.completions.create(model=SLOW, messages=MESSAGES, stream=True)
    arrivals = []
    words = []
    for chunk in stream:
        arrivals.append(time.monotonic())
        words.append(chunk.choices[0].delta.content or "")
    sent = [at for at, _ in fake.events_sent[sent_before:]]
    assert "".join(words) == TEXT
    # The first event came through while the provider was still waiting to send the second.
    assert arrivals[0] < sent[1]
    assert sent[1] - sent[0] >= SLOW_SECONDS * 0.9


def test_anthropic_events_arrive_as_the_provider_sends_them(
    sdk: Sdks, server: RunningServer, fake: FakeProvider
) -> None:
    sub = _user(server)
    sent_before = len(fake.events_sent)
    with sdk.anthropic(sub).messages.stream(model=SLOW, max_tokens=8, messages=MESSAGES) as stream:
        first = next(iter(stream))
        first_at = time.monotonic()
        assert first.type == "message_start"
        text = "".join(stream.text_stream)
    sent = [at for at, _ in fake.events_sent[sent_before:]]
    assert text == TEXT
    assert first_at < sent[1]


async def test_a_caller_going_away_cancels_the_providers_call(
    sdk: Sdks, server: RunningServer, fake: FakeProvider, database_url: str
) -> None:
    sub = _user(server)
    disconnects = len(fake.disconnects)
    stream = sdk.openai(sub).chat.completions.create(model=ENDLESS, messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    _eventually(lambda: len(fake.disconnects) > disconnects)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while (event := await _last_use(database_url, sub)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (event.outcome, event.upstream_status) == ("cancelled", 200)


async def test_a_caller_giving_up_before_the_answer_is_a_499(
    server: RunningServer, database_url: str
) -> None:
    sub = _user(server)
    with (
        openai.OpenAI(
            base_url=f"{server.base_url}/proxy/openai",
            api_key=mint(f"svc-{new_sub()}", SERVICE_USE),
            default_headers={"X-Keyvault-User": quote(sub, safe="")},
            max_retries=0,
            timeout=0.5,  # long before the provider's answer, or keyvault's own timeout
        ) as impatient,
        pytest.raises(openai.APITimeoutError),
    ):
        impatient.chat.completions.create(model=HANG, messages=MESSAGES)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while (event := await _last_use(database_url, sub)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (event.outcome, event.upstream_status) == ("cancelled", None)
    _eventually(lambda: '"status": 499' in server.output())


async def test_a_provider_breaking_off_mid_answer_cuts_the_callers_answer(
    sdk: Sdks, server: RunningServer, database_url: str
) -> None:
    sub = _user(server)
    stream = sdk.openai(sub).chat.completions.create(model=BREAK, messages=MESSAGES, stream=True)
    with pytest.raises(Exception):  # noqa: B017, PT011 (the SDK's transport error, whichever)
        for _ in stream:
            pass
    event = await _last_use(database_url, sub)
    assert (event.outcome, event.upstream_status) == ("provider_unavailable", 200)


def test_a_hanging_provider_is_504_to_the_sdk(sdk: Sdks, server: RunningServer) -> None:
    sub = _user(server)
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.openai(sub).chat.completions.create(model=HANG, messages=MESSAGES)
    assert failed.value.status_code == 504


def test_the_key_a_provider_echoes_reaches_the_sdk_redacted(
    sdk: Sdks, server: RunningServer
) -> None:
    sub = _user(server, {"openai": "sk-rejected-CANARY-sdk-0123456789abcdef"})
    with pytest.raises(openai.AuthenticationError) as rejected:
        sdk.openai(sub).chat.completions.create(model="m", messages=MESSAGES)
    assert REDACTED in str(rejected.value)
    assert "CANARY" not in str(rejected.value)


def test_uploads_stream_through_up_to_the_cap(sdk: Sdks, server: RunningServer) -> None:
    sub = _user(server)
    client = sdk.openai(sub)
    audio = b"\x00\x01" * 50_000  # 100 kB: far over the key routes' 16 KiB, under the cap
    transcript = client.audio.transcriptions.create(model="m", file=("a.wav", audio))
    assert int(transcript.text.split()[1]) > len(audio)
    with pytest.raises(openai.APIStatusError) as refused:
        client.audio.transcriptions.create(model="m", file=("a.wav", b"\x00" * (MAX_BODY + 1)))
    assert refused.value.status_code == 413


def test_a_dot_segment_on_the_wire_is_404(server: RunningServer, fake: FakeProvider) -> None:
    sub = _user(server)
    before = len(fake.received)
    token = mint(f"svc-{new_sub()}", SERVICE_USE)
    request = (
        f"GET /proxy/openai/audio/../files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nX-Keyvault-User: {quote(sub, safe='')}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_SECONDS) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"path-not-proxied" in answer
    assert len(fake.received) == before


def test_neither_key_nor_token_is_in_anything_the_server_writes(
    sdk: Sdks, server: RunningServer, tmp_path: Path
) -> None:
    sub = _user(server, {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY})
    token = mint(f"svc-{new_sub()}", SERVICE_USE)
    client = sdk.openai(sub, token=token)
    client.chat.completions.create(model="m", messages=MESSAGES)
    for _ in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
        pass
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model=HANG, messages=MESSAGES)
    sdk.anthropic(sub).messages.create(model="m", max_tokens=8, messages=MESSAGES)
    output = server.output()
    assert '"route": "/proxy/{provider}/{path}"' in output
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, token, "CANARY"):
        assert secret not in output
