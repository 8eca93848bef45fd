"""The Dockerfile, read without a Docker engine: its user, its dependencies, its command, health
check and variables, and the build context it copies from."""

from __future__ import annotations

import fnmatch
import re
from pathlib import PurePosixPath

import pytest

from tests.deployment.files_support import (
    ROOT,
    cli_accepts,
    dockerfile_stages,
    env_instructions,
    exec_form,
    exposed_port,
    healthcheck_command,
    is_route,
    keyvault_variables,
    known_variables,
    option_value,
    runtime_stage,
)
from tests.deployment.test_installed_package import PACKAGE_SOURCES


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
    """The migrations travel inside the package, which tests/deployment/test_installed_package.py runs
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
