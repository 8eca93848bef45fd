from __future__ import annotations

from keyvault.legacy_import.seed_crypto import SeedToken, fernet_key, open_token
from tests.seed_databases import SEED_MASTER_KEY, seed_token

ITERATIONS = 1_000
SALT = bytes(range(16))


def test_fernet_key_is_the_seeds_derivation() -> None:
    token = seed_token(SEED_MASTER_KEY, SALT, "sk-abc-0123456789", ITERATIONS)
    opened = open_token(SEED_MASTER_KEY, ITERATIONS, SeedToken("alice", token, SALT))
    assert opened.api_key == "sk-abc-0123456789"
    assert len(fernet_key(SEED_MASTER_KEY, SALT, ITERATIONS)) == 44


def test_salt_read_as_memoryview_is_accepted() -> None:
    token = seed_token(SEED_MASTER_KEY, SALT, "sk-abc-0123456789", ITERATIONS)
    opened = open_token(SEED_MASTER_KEY, ITERATIONS, SeedToken("alice", token, memoryview(SALT)))
    assert opened.api_key == "sk-abc-0123456789"


def test_salt_stored_as_text_is_a_named_failure() -> None:
    token = seed_token(SEED_MASTER_KEY, SALT, "sk-abc-0123456789", ITERATIONS)
    opened = open_token(SEED_MASTER_KEY, ITERATIONS, SeedToken("alice", token, SALT.hex()))
    assert opened.failure == "the salt is str, not bytes"


def test_truncated_token_is_not_a_fernet_token() -> None:
    token = seed_token(SEED_MASTER_KEY, SALT, "sk-abc-0123456789", ITERATIONS)
    opened = open_token(SEED_MASTER_KEY, ITERATIONS, SeedToken("alice", token[:40], SALT))
    assert opened.failure == "the token is not a Fernet token"


def test_altered_token_does_not_verify() -> None:
    token = seed_token(SEED_MASTER_KEY, SALT, "sk-abc-0123456789", ITERATIONS)
    altered = token[:60] + ("A" if token[60] != "A" else "B") + token[61:]
    opened = open_token(SEED_MASTER_KEY, ITERATIONS, SeedToken("alice", altered, SALT))
    assert opened.wrong_key


def test_invalid_decrypted_key_is_named_without_showing_it() -> None:
    canary = "sk-canary with-space-9876"
    token = seed_token(SEED_MASTER_KEY, SALT, canary, ITERATIONS)
    opened = open_token(SEED_MASTER_KEY, ITERATIONS, SeedToken("alice", token, SALT))
    assert (
        opened.failure
        == "the decrypted key is not a valid API key (Value error, must not contain whitespace)"
    )
    assert "canary" not in repr(opened)


def test_opened_key_never_appears_in_repr() -> None:
    token = seed_token(SEED_MASTER_KEY, SALT, "sk-canary-0123456789", ITERATIONS)
    row = SeedToken("alice", token, SALT)
    opened = open_token(SEED_MASTER_KEY, ITERATIONS, row)
    assert opened.api_key == "sk-canary-0123456789"
    assert token not in repr(row)
    assert "sk-canary" not in repr(opened)
