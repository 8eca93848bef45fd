"""docker-compose.yml, read without a Docker engine: its services and their order, ports, stop
times, variables and secrets, checked against the real CLI and settings."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest

from keyvault.cli.serve import DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
from tests.deployment.files_support import (
    COMPOSE,
    SECRETS_MOUNT,
    cli_accepts,
    compose,
    docker_walkthrough,
    exposed_port,
    image_services,
    keyvault_variables,
    known_variables,
    option_value,
    runtime_stage,
    service,
)


def test_compose_runs_postgres_a_one_shot_migration_and_the_api() -> None:
    assert set(compose()["services"]) == {"db", "migrate", "api"}
    assert set(image_services()) == {"migrate", "api"}


def test_database_is_checked_with_pg_isready_and_keeps_its_data_in_a_named_volume() -> None:
    db = service("db")
    check = db["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"]
    assert option_value(check, "--username") == db["environment"]["POSTGRES_USER"]
    assert option_value(check, "--dbname") == db["environment"]["POSTGRES_DB"]
    volume, _, target = db["volumes"][0].partition(":")
    assert volume in compose()["volumes"]
    assert target == "/var/lib/postgresql/data"


def test_migrate_runs_keyvault_migrate_once_the_database_is_healthy() -> None:
    migrate = service("migrate")
    assert migrate["command"] == ["migrate"]
    assert cli_accepts(migrate["command"])
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"


def test_api_starts_only_after_the_database_is_healthy_and_migrate_succeeded() -> None:
    assert service("api")["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }


def test_api_serves_on_all_interfaces_of_the_port_it_publishes() -> None:
    api = service("api")
    command = api["command"]
    assert command[0] == "serve"
    assert cli_accepts(command)
    assert option_value(command, "--host") == "0.0.0.0"
    published = api["ports"][0].rsplit(":", 1)[-1]
    assert published == option_value(command, "--port") == exposed_port(runtime_stage()) == "8000"


def test_api_is_given_longer_to_stop_than_it_gives_in_flight_requests() -> None:
    grace = service("api")["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > DEFAULT_SHUTDOWN_TIMEOUT_SECONDS


@pytest.mark.parametrize("name", ["migrate", "api"])
def test_compose_sets_only_variables_keyvault_reads(name: str) -> None:
    assert keyvault_variables(service(name)["environment"]) <= known_variables()


@pytest.mark.parametrize("name", ["db", "migrate", "api"])
def test_every_secret_file_variable_names_a_secret_the_service_mounts(name: str) -> None:
    spec = service(name)
    file_variables = {k: v for k, v in spec["environment"].items() if k.endswith("_FILE")}
    assert file_variables
    for variable, path in file_variables.items():
        mounted = PurePosixPath(path)
        assert mounted.parent == SECRETS_MOUNT, variable
        assert mounted.name in spec["secrets"], variable
        assert mounted.name in compose()["secrets"], variable


def test_master_key_reaches_keyvault_as_a_file_and_never_as_a_variable() -> None:
    for spec in image_services().values():
        assert "MASTER_ENCRYPTION_KEY_FILE" in spec["environment"]
        assert "MASTER_ENCRYPTION_KEY" not in spec["environment"]
        assert "KEYVAULT_JWT_SECRET" not in spec["environment"]
        assert "KEYVAULT_DATABASE_URL" not in spec["environment"]


def test_every_secret_is_read_from_secrets_dir_and_documented_in_the_docker_page() -> None:
    documented = docker_walkthrough()
    for name, spec in compose()["secrets"].items():
        assert re.fullmatch(rf"\$\{{SECRETS_DIR:\?[^}}]+\}}/{name}", spec["file"]), spec["file"]
        assert f"| `{name}` |" in documented, f"secret {name} is not in docs/docker.md's table"


def test_every_compose_variable_has_a_default_or_a_guard() -> None:
    for reference in re.findall(r"\$\{([^}]*)\}", COMPOSE.read_text()):
        assert re.fullmatch(r"\w+(:-[^}]*|:\?.+)", reference), f"${{{reference}}} is unguarded"
