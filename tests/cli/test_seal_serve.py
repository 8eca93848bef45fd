"""`keyvault serve` under the pkcs11 seal, as a real process against SoftHSM2: ready only once the
keyring is open, the HSM needed at start alone (requests keep working with the key gone from the
token), and neither the PIN nor the master key in its logs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pkcs11
import pytest

from tests.cli.seal_support import assert_no_secret, keyvault, one_line_refusal, seal_environment
from tests.conftest import bearer, key_path, mint
from tests.real_server import server_environment, serving
from tests.softhsm import SoftHsm

pytestmark = pytest.mark.server


def _destroy_key(softhsm: SoftHsm, label: str) -> None:
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=softhsm.token_label)
    with token.open(user_pin=softhsm.pin, rw=True) as session:
        session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY, label=label).destroy()


def test_served_under_the_hsm_needs_it_only_at_start(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str, tmp_path: Path
) -> None:
    env = server_environment(empty_database_url) | softhsm.environment(hsm_key)
    del env["MASTER_ENCRYPTION_KEY"]
    token = mint("alice", "api-key:read api-key:write")

    with serving(tmp_path, env) as server:
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
        put = httpx.put(
            f"{server.base_url}{key_path('alice')}",
            json={"api_key": "sk-before-0123456789"},
            headers=bearer(token),
        )
        assert put.status_code == 201, put.text
        _destroy_key(softhsm, hsm_key)
        # No request calls the token: with its key gone, the service still reads and writes.
        replaced = httpx.put(
            f"{server.base_url}{key_path('alice')}",
            json={"api_key": "sk-after-0123456789"},
            headers=bearer(token),
        )
        read = httpx.get(f"{server.base_url}{key_path('alice')}", headers=bearer(token))
        assert replaced.status_code == 200, replaced.text
        assert read.json()["api_key"] == "sk-after-0123456789"
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200

    output = server.output()
    assert_no_secret(output, env)
    started = [
        json.loads(line)
        for line in output.splitlines()
        if line.startswith("{") and '"master_key_verified"' in line
    ]
    assert started
    assert started[0]["seal"] == "pkcs11"
    # A restart now needs the key, and says so in one line.
    assert "there is no AES key" in one_line_refusal(
        keyvault(seal_environment(empty_database_url, softhsm, hsm_key), tmp_path, "serve")
    )
