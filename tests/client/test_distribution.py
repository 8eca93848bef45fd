"""The client as a distribution of its own: httpx its one dependency (pinned by the server's locks
too, since `make install` adds the client without resolving), typed, and importable without the
server or the provider SDKs. `.ci/run` also installs its wheel into an empty venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

import keyvault_client
from tests.deployment.test_lock_files import DEV_LOCK, pins

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"
PROJECT = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]


def test_httpx_is_the_only_dependency_and_the_locks_pin_it() -> None:
    requirements = [Requirement(text) for text in PROJECT["dependencies"]]

    assert [requirement.name for requirement in requirements] == ["httpx"]
    assert requirements[0].specifier.contains(pins(DEV_LOCK)["httpx"])
    assert PROJECT["requires-python"] == ">=3.11"
    assert set(PROJECT["optional-dependencies"]) == {"openai", "anthropic"}


def test_the_installed_version_is_the_packages() -> None:
    assert version("keyvault-client") == keyvault_client.__version__


def test_importing_the_client_loads_neither_the_server_nor_an_sdk() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keyvault_client; print(' '.join(sorted(sys.modules)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()

    for package in ("keyvault", "openai", "anthropic", "fastapi", "pydantic", "sqlalchemy"):
        assert package not in loaded


def test_the_wheel_holds_the_typed_package_and_declares_its_extras(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves a build/ directory beside the sources it builds.
    source = tmp_path / "source"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    build = ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build, str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("keyvault_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())

    assert "keyvault_client/py.typed" in names
    assert "keyvault_client/__init__.py" in names
    assert not any(name.startswith(("keyvault/", "tests/")) for name in names)
    assert metadata["Name"] == "keyvault-client"
    assert metadata["Version"] == keyvault_client.__version__
    requires = metadata.get_all("Requires-Dist") or []
    assert [r for r in requires if "extra ==" not in r] == ["httpx<1,>=0.27"]
    assert set(metadata.get_all("Provides-Extra") or []) == {"openai", "anthropic"}
