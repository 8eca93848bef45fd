"""The headers of a proxied call each way: keyvault's own credentials, cookies, X-Keyvault-* and
hop-by-hop headers never go on; the key goes the provider's way; the answer's headers come back
less cookies and hop-by-hop ones, redacted."""

from __future__ import annotations

from keyvault.providers.registry import Provider, builtin_providers
from keyvault.proxy.headers import ProviderHeaders, downstream
from keyvault.proxy.redaction import REDACTED, Redactor

OPENAI, ANTHROPIC = builtin_providers("https://api.openai.com/v1", "https://api.anthropic.com")
KEY = "sk-CANARY-headers-0123456789"
CALLER = [
    (b"host", b"keyvault:8000"),
    (b"authorization", b"Bearer keyvault-token"),
    (b"x-api-key", b"keyvault-token"),
    (b"cookie", b"session=1"),
    (b"x-keyvault-user", b"alice"),
    (b"x-keyvault-anything", b"1"),
    (b"connection", b"keep-alive, x-private-hop"),
    (b"x-private-hop", b"1"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"te", b"trailers"),
    (b"upgrade", b"h2c"),
    (b"proxy-authorization", b"Basic eA=="),
    (b"expect", b"100-continue"),
    (b"accept-encoding", b"gzip"),
    (b"content-type", b"application/json"),
    (b"content-length", b"42"),
    (b"user-agent", b"OpenAI/Python 9.9"),
    (b"openai-organization", b"org-1"),
]


def _names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]


def test_openai_gets_the_callers_own_headers_and_the_key_as_bearer() -> None:
    sent = ProviderHeaders(OPENAI).upstream(CALLER, KEY, b"keyvault-token")
    assert sent == [
        (b"content-type", b"application/json"),
        (b"content-length", b"42"),
        (b"user-agent", b"OpenAI/Python 9.9"),
        (b"openai-organization", b"org-1"),
        (b"accept-encoding", b"identity"),
        (b"authorization", f"Bearer {KEY}".encode()),
    ]


def test_no_header_carrying_keyvaults_token_goes_on() -> None:
    caller = [(b"x-api-key", b"keyvault-token"), (b"x-note", b"token: keyvault-token!")]
    assert ProviderHeaders(OPENAI).upstream(caller, KEY, b"keyvault-token") == [
        (b"accept-encoding", b"identity"),
        (b"authorization", f"Bearer {KEY}".encode()),
    ]


def test_anthropic_gets_its_key_header_and_its_version_unless_the_caller_sent_one() -> None:
    sent = ProviderHeaders(ANTHROPIC).upstream(CALLER, KEY)
    assert b"authorization" not in _names(sent)
    assert sent[-1] == (b"x-api-key", KEY.encode())
    assert _names(sent).count(b"x-api-key") == 1
    assert (b"anthropic-version", b"2023-06-01") in sent
    own = ProviderHeaders(ANTHROPIC).upstream([(b"anthropic-version", b"2030-01-01")], KEY)
    assert [value for name, value in own if name == b"anthropic-version"] == [b"2030-01-01"]


def test_a_configured_key_header_replaces_the_callers() -> None:
    custom = Provider("acme", "https://acme.example", "v", key_header="x-acme-key")
    sent = ProviderHeaders(custom).upstream([(b"x-acme-key", b"token"), (b"a", b"b")], KEY)
    assert sent == [(b"a", b"b"), (b"accept-encoding", b"identity"), (b"x-acme-key", KEY.encode())]


def test_the_answer_comes_back_less_cookies_and_hop_by_hop_headers_redacted() -> None:
    answer = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"120"),
        (b"Set-Cookie", b"__cf_bm=abc"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Date", b"Mon, 01 Jan 2026 00:00:00 GMT"),
        (b"X-Request-Id", b"req_1"),
        (b"X-Echo", f"got {KEY}".encode()),
    ]
    kept = downstream(answer, Redactor(KEY), same_length=True, decoded=False)
    assert kept == [
        (b"content-type", b"application/json"),
        (b"content-length", b"120"),
        (b"x-request-id", b"req_1"),
        (b"x-echo", b"got " + REDACTED),
    ]
    streamed = downstream(answer, Redactor(KEY), same_length=False, decoded=False)
    assert b"content-length" not in _names(streamed)


def test_a_decoded_body_loses_its_content_encoding() -> None:
    answer = [(b"content-encoding", b"gzip"), (b"content-length", b"10")]
    assert downstream(answer, Redactor(KEY), same_length=False, decoded=True) == []
    assert downstream(answer, Redactor(KEY), same_length=True, decoded=False) == answer


def test_a_providers_x_keyvault_headers_never_come_back() -> None:
    answer = [(b"X-Keyvault-Request-ID", b"forged"), (b"x-keyvault-anything", b"1"), (b"a", b"b")]
    assert downstream(answer, Redactor(KEY), same_length=True, decoded=False) == [(b"a", b"b")]
