"""The Docker walkthrough (docs/docker.md) and the CLI page, checked without a Docker engine: its
commands, services, URLs and quoted output are real, and its secret-making step is run for real."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml
from typer.testing import CliRunner

from keyvault.cli.app import app as cli_app
from keyvault.config import Settings, refuse_weak_master_key
from keyvault.db.migrations import upgrade_to_head
from keyvault.web.docs import DOCS_PATH
from tests.conftest import JWT_SECRET, MASTER_KEY
from tests.deployment.files_support import (
    CLI_DOC,
    DOCKER_DOC,
    all_docs_text,
    cli_accepts,
    code_blocks,
    compose,
    doc_section,
    docker_walkthrough,
    exposed_port,
    healthcheck_command,
    is_route,
    known_variables,
    runtime_stage,
    service,
)
from tests.server import free_port, running_server


def secrets_step() -> str:
    blocks = [block for block in code_blocks(docker_walkthrough()) if "SECRETS_DIR=" in block]
    assert len(blocks) == 1
    return blocks[0]


def test_docker_page_secret_step_makes_exactly_the_secrets_compose_mounts(tmp_path: Path) -> None:
    secrets_dir = run_secrets_step(tmp_path)
    assert {path.name for path in secrets_dir.iterdir()} == set(compose()["secrets"])
    assert oct(secrets_dir.stat().st_mode & 0o777) == oct(0o700)


def run_secrets_step(home: Path) -> Path:
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", secrets_step()], env=env, check=True, timeout=60
    )
    return home / "keyvault-secrets"


def test_keyvault_starts_from_the_settings_compose_gives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walkthrough's secret files, mounted where compose puts them, make valid settings."""
    secrets_dir = run_secrets_step(tmp_path)
    for variable in known_variables():
        monkeypatch.delenv(variable, raising=False)
    for variable, value in service("api")["environment"].items():
        mounted = PurePosixPath(value)
        monkeypatch.setenv(variable, str(secrets_dir / mounted.name))
    settings = Settings(_env_file=None)

    password = (secrets_dir / "postgres_password").read_text().strip()
    db = service("db")["environment"]
    assert settings.database_url.get_secret_value() == (
        f"postgresql+asyncpg://{db['POSTGRES_USER']}:{password}@db:5432/{db['POSTGRES_DB']}"
    )
    assert settings.jwt_secret is not None
    refuse_weak_master_key(settings.master_key())


def documented_keyvault_invocations() -> list[list[str]]:
    invocations = []
    for block in code_blocks(all_docs_text()):
        for line in block.replace("\\\n", " ").splitlines():
            match = re.search(r"\bkeyvault ([^)|;&]*)", line)
            if match and not line.lstrip().startswith("#"):
                invocations.append(shlex.split(match.group(1), comments=True))
    return invocations


def test_documented_keyvault_commands_are_real_commands_and_options() -> None:
    invocations = documented_keyvault_invocations()
    assert ["token", "--sub", "demo-user"] in invocations
    for args in invocations:
        assert cli_accepts(args), f"keyvault {' '.join(args)}"


def test_documented_docker_compose_commands_name_real_services() -> None:
    services = set(compose()["services"])
    mentioned = re.findall(r"docker compose (?:exec|logs|run)(?: -\w+)* (\w+)", all_docs_text())
    assert mentioned
    assert set(mentioned) <= services


def test_docker_page_urls_are_real_routes_on_the_published_port() -> None:
    section = docker_walkthrough()
    default_port = re.search(r":-(\d+)\}:8000", service("api")["ports"][0])
    assert default_port
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/{}.-]*)", section)
    assert urls
    for port, path in urls:
        assert port == default_port.group(1)
        assert path == DOCS_PATH or is_route("GET", path) or is_route("PUT", path), path


def test_cli_page_lists_every_serve_option() -> None:
    section = doc_section(CLI_DOC, "serve")
    documented = set(re.findall(r"^\| `(--[\w-]+)", section, re.M))
    help_text = CliRunner().invoke(cli_app, ["serve", "--help"], terminal_width=200).output
    offered = set(re.findall(r"(--[a-z][\w-]+)", help_text)) - {"--help"}
    assert documented == offered


@pytest.mark.server
def test_healthcheck_command_passes_against_a_running_server(tmp_path: Path) -> None:
    """The image's HEALTHCHECK, pointed at a real server's port, reports healthy; a dead port not."""
    stage = runtime_stage()
    script = healthcheck_command(stage)[-1]
    served = f":{exposed_port(stage)}/"
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'health.db'}"
    upgrade_to_head(database_url)

    def check(port: str) -> int:
        probe = script.replace(served, f":{port}/")
        return subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, timeout=30
        ).returncode

    with running_server(database_url, tmp_path) as server:
        healthy = check(server.base_url.rsplit(":", 1)[1])
    assert healthy == 0
    assert check(str(free_port())) != 0


def test_docker_page_quotes_what_migrate_really_prints(tmp_path: Path) -> None:
    quoted = re.search(r"docker compose logs migrate\s+# \"([^\"]+)\"", DOCKER_DOC.read_text())
    assert quoted
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KEYVAULT_", "MASTER_ENCRYPTION"))
    } | {
        "MASTER_ENCRYPTION_KEY": MASTER_KEY,
        "KEYVAULT_JWT_SECRET": JWT_SECRET,
        "KEYVAULT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "keyvault", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == quoted.group(1)


def test_docker_page_hsm_override_sets_real_settings_and_mounts_module_and_pin() -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", doc_section(DOCKER_DOC, "With an HSM"), re.S)
    override = yaml.safe_load(block)
    assert set(override["services"]) == {"migrate", "api"} <= set(compose()["services"])
    for name in ("migrate", "api"):
        hsm = override["services"][name]
        environment = hsm["environment"]
        assert set(environment) <= known_variables()
        assert environment["KEYVAULT_SEAL"] == "pkcs11"
        (secret,) = hsm["secrets"]
        assert environment["KEYVAULT_PKCS11_PIN_FILE"] == f"/run/secrets/{secret}"
        module = environment["KEYVAULT_PKCS11_LIBRARY"]
        assert [volume.split(":")[1:] for volume in hsm["volumes"]] == [[module, "ro"]]
    assert override["secrets"][secret]["file"].startswith("${SECRETS_DIR")
