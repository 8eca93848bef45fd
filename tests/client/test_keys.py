"""KeyVault against the real server process, on each database: every operation on provider keys,
the refusals a caller meets, the cache, and the one connection a client keeps."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyvault_client import (
    Conflict,
    Forbidden,
    InvalidRequest,
    KeyRejected,
    KeyVault,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnknownProvider,
)
from tests.client.conftest import service_token
from tests.client.support import CANARY_KEY, assert_no_secret, counting_connections
from tests.conftest import mint
from tests.server import running_server

OTHER_KEY = "sk-ant-other-key-0123456789abcdef"
DEADLINE_SECONDS = 15.0


def vault_at(url: str, cache_ttl: float | None = None) -> KeyVault:
    return KeyVault(url, token=service_token(), cache_ttl=cache_ttl)


def test_a_stored_key_is_read_back_with_its_status(server_url: str, sub: str) -> None:
    with vault_at(server_url) as vault:
        assert vault.get_api_key(sub) is None
        assert vault.status(sub).has_api_key is False

        created = vault.put_api_key(sub, CANARY_KEY, label="team key")

        assert vault.get_api_key(sub) == CANARY_KEY
        status = vault.status(sub)
    assert (created.sub, created.provider, created.version) == (sub, "openai", 1)
    assert (created.has_api_key, created.last4, created.label) == (True, "cdef", "team key")
    assert created.expires_at is None
    assert created.expired is False
    assert created.etag is not None
    assert status == created


def test_each_provider_keeps_its_own_key_and_all_are_listed(server_url: str, sub: str) -> None:
    with vault_at(server_url) as vault:
        vault.put_api_key(sub, CANARY_KEY)
        vault.put_api_key(sub, OTHER_KEY, "anthropic", label="claude")

        assert vault.get_api_key(sub, "anthropic") == OTHER_KEY
        assert vault.get_api_key(sub) == CANARY_KEY
        listed = vault.list_keys(sub)
    assert [(key.provider, key.last4, key.label) for key in listed] == [
        ("anthropic", "cdef", "claude"),
        ("openai", "cdef", None),
    ]


def test_a_deleted_key_is_gone_and_deleting_again_is_false(server_url: str, sub: str) -> None:
    with vault_at(server_url) as vault:
        vault.put_api_key(sub, CANARY_KEY)

        assert vault.delete_api_key(sub) is True
        assert vault.get_api_key(sub) is None
        assert vault.delete_api_key(sub) is False
        assert vault.status(sub).has_api_key is False


def test_an_expired_key_reads_as_none_and_its_status_says_expired(
    server_url: str, sub: str
) -> None:
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    with vault_at(server_url) as vault:
        stored = vault.put_api_key(sub, CANARY_KEY, expires_at=expires_at)
        assert stored.expires_at is not None
        assert abs((stored.expires_at - expires_at).total_seconds()) < 1

        deadline = time.monotonic() + DEADLINE_SECONDS
        while vault.get_api_key(sub) is not None:
            assert time.monotonic() < deadline, "the key did not expire"
            time.sleep(0.2)  # polling interval until the expiry passes
        status = vault.status(sub)
    assert (status.has_api_key, status.expired) == (True, True)


def test_if_match_writes_only_over_the_key_it_names(server_url: str, sub: str) -> None:
    with vault_at(server_url) as vault:
        first = vault.put_api_key(sub, CANARY_KEY)
        assert first.etag is not None
        second = vault.put_api_key(sub, OTHER_KEY, if_match=first.etag)

        with pytest.raises(Conflict) as raised:
            vault.put_api_key(sub, CANARY_KEY, if_match=first.etag)

        assert vault.get_api_key(sub) == OTHER_KEY
    assert second.version == 2
    assert raised.value.status == 412


def test_validation_on_save_stores_only_a_key_the_provider_takes(server_url: str, sub: str) -> None:
    with vault_at(server_url) as vault:
        with pytest.raises(KeyRejected) as rejected:
            vault.put_api_key(sub, OTHER_KEY, validate=True)
        assert vault.status(sub).has_api_key is False

        vault.put_api_key(sub, CANARY_KEY, validate=True)
        assert vault.get_api_key(sub) == CANARY_KEY
    assert_no_secret([str(rejected.value), repr(rejected.value)], OTHER_KEY, service_token())


def test_an_unknown_provider_is_refused(server_url: str, sub: str) -> None:
    with vault_at(server_url) as vault:
        with pytest.raises(UnknownProvider):
            vault.get_api_key(sub, "no-such-provider")
        with pytest.raises(UnknownProvider):
            vault.put_api_key(sub, CANARY_KEY, "no-such-provider")


def test_an_invalid_key_names_the_field_and_rule_but_not_the_key(server_url: str, sub: str) -> None:
    invalid = CANARY_KEY[:10] + " " + CANARY_KEY[10:]
    with vault_at(server_url) as vault, pytest.raises(InvalidRequest) as raised:
        vault.put_api_key(sub, invalid)

    assert raised.value.field == "api_key"
    assert raised.value.rule == "must not contain whitespace"
    assert raised.value.status == 422
    assert_no_secret([str(raised.value), repr(raised.value)], CANARY_KEY[:10], CANARY_KEY[10:])


def test_a_label_too_long_and_a_past_expiry_are_both_named(server_url: str, sub: str) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    with vault_at(server_url) as vault, pytest.raises(InvalidRequest) as raised:
        vault.put_api_key(sub, CANARY_KEY, label="x" * 65, expires_at=past)

    assert {error.field for error in raised.value.errors} == {"expires_at", "label"}


def test_a_body_over_the_limit_is_payload_too_large(server_url: str, sub: str) -> None:
    huge = CANARY_KEY * 600
    with vault_at(server_url) as vault, pytest.raises(PayloadTooLarge) as raised:
        vault.put_api_key(sub, huge)

    assert_no_secret([str(raised.value), repr(raised.value)], CANARY_KEY)


def test_another_users_key_is_forbidden_to_a_users_own_token(server_url: str, sub: str) -> None:
    token = mint("someone-else", "api-key:read")
    with KeyVault(server_url, token=token) as vault, pytest.raises(Forbidden) as raised:
        vault.get_api_key(sub)

    assert raised.value.status == 403


def test_a_token_keyvault_refuses_is_unauthorized(server_url: str, sub: str) -> None:
    expired = mint("billing-service", "api-key:read users:any", exp=int(time.time()) - 3600)
    with KeyVault(server_url, token=expired) as vault, pytest.raises(Unauthorized) as raised:
        vault.get_api_key(sub)

    assert raised.value.error == "invalid_token"
    assert_no_secret([str(raised.value), repr(raised.value)], expired)


@pytest.fixture
def limited_url(server_url: str, database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second server on the same database, allowing each service two requests an hour.

    Not a minute: the sliding window's wait shrinks as its window ends, and one under the
    client's max_retry_wait (10 s) is rightly waited out and retried."""
    settings = {"KEYVAULT_RATE_LIMIT_SERVICE": "2/hour"}
    with running_server(database_url, tmp_path, settings=settings) as server:
        yield server.base_url


def test_a_rate_limit_longer_than_the_retry_cap_is_raised_with_its_wait(
    limited_url: str, sub: str
) -> None:
    with vault_at(limited_url) as vault:
        vault.status(sub)
        vault.status(sub)
        started = time.monotonic()
        with pytest.raises(RateLimited) as raised:
            vault.status(sub)

    assert time.monotonic() - started < 5  # not waited for: the wait is past max_retry_wait
    assert raised.value.retry_after is not None
    assert 10 < raised.value.retry_after <= 3600


def test_the_access_log_is_read_to_its_last_page(server_url: str, sub: str) -> None:
    with vault_at(server_url) as vault:
        vault.put_api_key(sub, CANARY_KEY)
        for _ in range(4):
            vault.get_api_key(sub)

        paged = list(vault.access_log(sub, page_size=2))
        whole = list(vault.access_log(sub, page_size=500))

    assert paged == whole
    assert [entry.action for entry in paged] == ["get", "get", "get", "get", "put"]
    assert all(entry.actor == "billing-service" for entry in paged)
    assert [entry.occurred_at for entry in paged] == sorted(
        (entry.occurred_at for entry in paged), reverse=True
    )


def test_a_cached_key_costs_no_request_and_a_write_drops_it(server_url: str, sub: str) -> None:
    def reads() -> int:
        return [entry.action for entry in plain.access_log(sub)].count("get")

    with vault_at(server_url, cache_ttl=60) as cached, vault_at(server_url) as plain:
        cached.put_api_key(sub, CANARY_KEY)
        for _ in range(3):
            assert cached.get_api_key(sub) == CANARY_KEY
        assert reads() == 1

        plain.put_api_key(sub, OTHER_KEY)
        assert cached.get_api_key(sub) == CANARY_KEY  # another client's write: cached until ttl
        cached.put_api_key(sub, OTHER_KEY, label="own write")
        assert cached.get_api_key(sub) == OTHER_KEY
        assert reads() == 2

        cached.delete_api_key(sub)
        assert cached.get_api_key(sub) is None
        assert plain.get_api_key(sub) is None
        assert reads() == 4


def test_one_connection_serves_every_call(keyvault_url: str, server_url: str, sub: str) -> None:
    port = int(server_url.rsplit(":", 1)[1])
    with counting_connections(port) as counter:
        with vault_at(f"http://127.0.0.1:{counter.port}") as vault:
            vault.put_api_key(sub, CANARY_KEY)
            for _ in range(5):
                vault.get_api_key(sub)
            vault.status(sub)
            vault.list_keys(sub)
        assert counter.accepted == 1


def test_no_log_line_holds_the_key_or_the_token(
    server_url: str, sub: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = service_token()

    with KeyVault(server_url, token=token) as vault:
        vault.put_api_key(sub, CANARY_KEY)
        vault.get_api_key(sub)
        with pytest.raises(InvalidRequest):
            vault.put_api_key(sub, CANARY_KEY + " x")

    assert caplog.records
    assert_no_secret([record.getMessage() for record in caplog.records], CANARY_KEY, token)
