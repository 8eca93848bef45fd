"""Dockerfile, docker-compose.yml and the README's Docker walkthrough agree with the code.

There is no Docker engine where these tests run, so they read the files and check every claim
that can be checked without one: commands and options against the real CLI, variables against
the real settings, ports, the health check route, the user, the secrets, and the walkthrough's
own commands (its secret-making step is run for real).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import pytest
import yaml
from typer.testing import CliRunner

from keyvault.cli.app import app as cli_app
from keyvault.cli.serve import DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
from keyvault.config import Settings, refuse_weak_master_key
from keyvault.db.migrations import upgrade_to_head
from keyvault.web.app import create_app
from keyvault.web.docs import DOCS_PATH
from tests.conftest import JWT_SECRET, MASTER_KEY
from tests.server import free_port, running_server
from tests.test_installed_package import PACKAGE_SOURCES

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
SECRETS_MOUNT = PurePosixPath("/run/secrets")


# --- reading the files ---------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    instructions: list[Any] = field(default_factory=list)  # dockerfile.Command

    def all(self, keyword: str) -> list[Any]:
        return [command for command in self.instructions if command.cmd == keyword]

    def last(self, keyword: str) -> Any:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name}"
        return found[-1]

    def values(self, keyword: str) -> list[str]:
        return [" ".join(command.value) for command in self.all(keyword)]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile as Docker's own parser (moby/buildkit, via `dockerfile`) reads it."""
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            stages.append(Stage(command.value[-1]))
        elif stages:
            stages[-1].instructions.append(command)
    return stages


def runtime_stage() -> Stage:
    return dockerfile_stages()[-1]


def exec_form(command: Any) -> list[str]:
    assert command.json, f"{command.original} is not in exec (JSON) form"
    return list(command.value)


def healthcheck_command(stage: Stage) -> list[str]:
    check = exec_form(stage.last("HEALTHCHECK"))
    assert check[0] == "CMD", check
    return check[1:]


def exposed_port(stage: Stage) -> str:
    (port,) = stage.last("EXPOSE").value
    return str(port)


def env_instructions(stage: Stage) -> dict[str, str]:
    variables: dict[str, str] = {}
    for command in stage.all("ENV"):
        pairs = list(command.value)
        variables.update(zip(pairs[::2], pairs[1::2], strict=True))
    return variables


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"no service {name!r} in docker-compose.yml"
    found: dict[str, Any] = services[name]
    return found


def image_services() -> dict[str, dict[str, Any]]:
    """The services that run keyvault's own image."""
    return {name: spec for name, spec in compose()["services"].items() if "build" in spec}


def option_value(args: list[str], option: str) -> str:
    assert option in args, f"{option} not in {args}"
    return args[args.index(option) + 1]


def readme_section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str) -> list[str]:
    return [textwrap_dedent(block) for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def textwrap_dedent(block: str) -> str:
    lines = block.splitlines()
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines) + "\n"


def cli_accepts(args: list[str]) -> bool:
    """The CLI parses these arguments: real command, real options (`--help` stops before running)."""
    return CliRunner().invoke(cli_app, [*args, "--help"]).exit_code == 0


def known_variables() -> set[str]:
    """Every variable keyvault reads: its settings and their _FILE twins."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if alias is not None:
            names.update(str(choice) for choice in getattr(alias, "choices", [alias]))
        else:
            variable = f"{prefix}{name}".upper()
            names.update({variable, f"{variable}_FILE"})
    return names


def keyvault_variables(variables: dict[str, str]) -> set[str]:
    return {name for name in variables if name.startswith(("KEYVAULT_", "MASTER_"))}


def route_paths() -> list[tuple[set[str], re.Pattern[str]]]:
    """The API's operations as (methods, path pattern), from its own OpenAPI document."""
    app = create_app(
        Settings(_env_file=None, MASTER_ENCRYPTION_KEY=MASTER_KEY, jwt_secret=JWT_SECRET)
    )
    routes = []
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{\w+\\\}", "[^?#]+", re.escape(template))
        routes.append(({method.upper() for method in operations}, re.compile(f"^{pattern}$")))
    return routes


def is_route(method: str, path: str) -> bool:
    return any(method in methods and pattern.match(path) for methods, pattern in route_paths())


# --- Dockerfile ----------------------------------------------------------------------------------


def test_image_runs_as_an_unprivileged_user_it_creates() -> None:
    stage = runtime_stage()
    user = stage.last("USER").value[0].split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(stage.values("RUN"))
    assert re.search(rf"useradd\b.*--uid {user}\b", created), "the USER's uid is not created"


def test_image_installs_dependencies_only_from_the_hash_pinned_lock() -> None:
    installs = [
        args
        for stage in dockerfile_stages()
        for args in stage.values("RUN")
        if "pip install" in args
    ]
    locked = [args for args in installs if "--require-hashes" in args]
    assert locked, "no pip install --require-hashes"
    assert all("-r requirements.lock" in args for args in locked)
    # Anything else installed (the project itself) must not pull in unpinned dependencies.
    assert all("--no-deps" in args for args in installs)


def test_image_entrypoint_and_command_are_a_real_serve_invocation() -> None:
    stage = runtime_stage()
    assert exec_form(stage.last("ENTRYPOINT")) == ["keyvault"]
    command = exec_form(stage.last("CMD"))
    assert command[0] == "serve"
    assert cli_accepts(command)
    assert option_value(command, "--host") == "0.0.0.0"
    assert option_value(command, "--port") == exposed_port(stage)


def test_healthcheck_asks_a_real_route_on_the_served_port_without_curl() -> None:
    stage = runtime_stage()
    command = healthcheck_command(stage)
    assert command[0] == "python"  # the slim image has no curl
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", command[-1])
    assert url, command
    assert url.group(1) == exposed_port(stage)
    assert is_route("GET", url.group(2))


def test_image_sets_only_variables_keyvault_reads() -> None:
    variables = keyvault_variables(env_instructions(runtime_stage()))
    assert variables <= known_variables()


def test_image_installs_the_package_from_what_the_wheel_test_builds_it_from() -> None:
    """The migrations travel inside the package, which tests/test_installed_package.py runs
    from another directory; the runtime stage needs nothing from the checkout beside it."""
    build, runtime = dockerfile_stages()[0], runtime_stage()
    copied = {source for command in build.all("COPY") for source in command.value[:-1]}
    assert set(PACKAGE_SOURCES) <= copied
    runs = [args.split() for args in build.values("RUN")]
    project_installs = [words for words in runs if "install" in words and "-r" not in words]
    assert project_installs
    assert all(args[-1] == "." and "-e" not in args for args in project_installs)
    for command in runtime.all("COPY"):
        assert any(flag.startswith("--from") for flag in command.flags), command.original


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern that matches a path (or one of its parents) decides."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parents = [
            str(PurePosixPath(*PurePosixPath(path).parts[:n]))
            for n in range(1, len(PurePosixPath(path).parts) + 1)
        ]
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in parents):
            excluded = not negated
    return excluded


def test_everything_the_image_copies_is_in_the_build_context() -> None:
    for stage in dockerfile_stages():
        for command in stage.all("COPY"):
            if any(flag.startswith("--from") for flag in command.flags):
                continue
            *sources, _destination = command.value
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not dockerignore_excludes(source), (
                    f"COPY {source}: excluded by .dockerignore"
                )


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "secrets/master_encryption_key",
        "keyvault.db",
        ".venv/bin/python",
        "test-artifacts/x.png",
    ],
)
def test_build_context_leaves_out_local_settings_secrets_and_data(path: str) -> None:
    assert dockerignore_excludes(path)


# --- docker-compose.yml --------------------------------------------------------------------------


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


def test_every_secret_is_read_from_secrets_dir_and_documented_in_the_readme() -> None:
    documented = readme_section("Running with Docker")
    for name, spec in compose()["secrets"].items():
        assert re.fullmatch(rf"\$\{{SECRETS_DIR:\?[^}}]+\}}/{name}", spec["file"]), spec["file"]
        assert f"| `{name}` |" in documented, f"secret {name} is not in the README's table"


def test_every_compose_variable_has_a_default_or_a_guard() -> None:
    for reference in re.findall(r"\$\{([^}]*)\}", COMPOSE.read_text()):
        assert re.fullmatch(r"\w+(:-[^}]*|:\?.+)", reference), f"${{{reference}}} is unguarded"


# --- the README's walkthrough --------------------------------------------------------------------


def secrets_step() -> str:
    blocks = [
        block
        for block in code_blocks(readme_section("Running with Docker"))
        if "SECRETS_DIR=" in block
    ]
    assert len(blocks) == 1
    return blocks[0]


def test_readme_secret_step_makes_exactly_the_secrets_compose_mounts(tmp_path: Path) -> None:
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
    """The README's secret files, mounted where compose puts them, make valid settings."""
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


def readme_keyvault_invocations() -> list[list[str]]:
    invocations = []
    for block in code_blocks(README.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            match = re.search(r"\bkeyvault ([^)|;&]*)", line)
            if match and not line.lstrip().startswith("#"):
                invocations.append(shlex.split(match.group(1), comments=True))
    return invocations


def test_readme_keyvault_commands_are_real_commands_and_options() -> None:
    invocations = readme_keyvault_invocations()
    assert ["token", "--sub", "demo-user"] in invocations
    for args in invocations:
        assert cli_accepts(args), f"keyvault {' '.join(args)}"


def test_readme_docker_compose_commands_name_real_services() -> None:
    services = set(compose()["services"])
    mentioned = re.findall(r"docker compose (?:exec|logs|run)(?: -\w+)* (\w+)", README.read_text())
    assert mentioned
    assert set(mentioned) <= services


def test_readme_urls_are_real_routes_on_the_published_port() -> None:
    section = readme_section("Running with Docker")
    default_port = re.search(r":-(\d+)\}:8000", service("api")["ports"][0])
    assert default_port
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/{}.-]*)", section)
    assert urls
    for port, path in urls:
        assert port == default_port.group(1)
        assert path == DOCS_PATH or is_route("GET", path) or is_route("PUT", path), path


def test_readme_lists_every_serve_option() -> None:
    section = readme_section("Command line")
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


def test_readme_quotes_what_migrate_really_prints(tmp_path: Path) -> None:
    quoted = re.search(r"docker compose logs migrate\s+# \"([^\"]+)\"", README.read_text())
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
