"""docs/client.md's complete example runs as written against the real server and the test
identity provider (only its URLs, its user and its secret's variable are this run's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.client.conftest import SERVICE_ID
from tests.client.support import CANARY_SECRET
from tests.identity_provider import IdentityProvider, TokenIssuer

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def example() -> str:
    section = GUIDE.read_text().split("## A complete example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_complete_example_runs(
    server_url: str,
    sub: str,
    identity_provider: IdentityProvider,
    issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = example()
    assert f'client_id="{SERVICE_ID}"' in code
    code = code.replace("https://idp.example.com/oauth/token", identity_provider.token_url)
    code = code.replace("https://keyvault.internal", server_url)
    code = code.replace('"google-oauth2|1234"', repr(sub))
    monkeypatch.setenv("BILLING_CLIENT_SECRET", CANARY_SECRET)

    exec(compile(code, str(GUIDE), "exec"), {})

    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "OpenAI does not accept this key"  # the local fake takes no such key
    assert len(issuer.requests) == 1
