"""Reading the deployment files for the tests beside it: the Dockerfile's stages, the compose
services, the documentation's sections and code blocks, the CLI, the settings and the routes they
are checked against."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import yaml
from typer.testing import CliRunner

from keyvault.cli.app import app as cli_app
from keyvault.config import Settings
from keyvault.web.app import create_app
from tests.conftest import JWT_SECRET, MASTER_KEY

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKER_DOC = ROOT / "docs" / "docker.md"
CLI_DOC = ROOT / "docs" / "cli.md"
# Every page whose shell blocks are checked against the real CLI.
DOC_PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
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


def doc_section(page: Path, title: str) -> str:
    text = page.read_text()
    match = re.search(rf"^#{{1,2}} {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{page.name} has no '{title}' section"
    return match.group(1)


def docker_walkthrough() -> str:
    return doc_section(DOCKER_DOC, "Running with Docker")


def all_docs_text() -> str:
    return "\n".join(page.read_text() for page in DOC_PAGES)


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
