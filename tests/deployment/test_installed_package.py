"""The wheel, installed into a fresh venv, migrates and serves from a directory with nothing in it.

The wheel is built offline from what the image's build stage copies (pyproject.toml, README.md,
src/). The throw-away venv has only that wheel installed; its dependencies are this venv's, made
importable by a .pth line naming this venv's site-packages (a path line there is put on sys.path
but its own .pth files, among them the editable install of src/, are not run). So nothing is
downloaded, and keyvault itself can come only from the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import bearer, key_path
from tests.server import running_server, server_env

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
# What the wheel is built from; the image's build stage copies the same (test_deployment_files).
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "src")
COMMAND_SECONDS = 300
REQUEST_SECONDS = 10


@dataclass(frozen=True)
class Installation:
    venv: Path

    @property
    def keyvault(self) -> Path:
        return self.venv / "bin" / "keyvault"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def run(
    args: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


def build_wheel(into: Path) -> Path:
    source = into / "source"
    source.mkdir()
    for name in PACKAGE_SOURCES:
        if (ROOT / name).is_dir():
            ignored = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignored)
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = into / "wheels"
    run(
        [
            sys.executable,
            *("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"),
            *("--wheel-dir", wheels, source),
        ]
    )
    (wheel,) = wheels.glob("keyvault-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    work = tmp_path_factory.mktemp("installed-package")
    wheel = build_wheel(work)
    installation = Installation(work / "venv")
    run([sys.executable, "-m", "venv", "--without-pip", installation.venv])
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", installation.python]
    run([*pip, "install", "--no-deps", "--no-index", wheel])
    # After the install, so that pip does not take this venv's editable keyvault for installed.
    venv_site_packages = run(
        [installation.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    ).stdout.strip()
    dependencies = Path(venv_site_packages) / "keyvault-test-dependencies.pth"
    dependencies.write_text(sysconfig.get_path("purelib") + "\n")
    return installation


def test_installed_keyvault_is_the_wheels_not_the_checkouts(
    installed: Installation, tmp_path: Path
) -> None:
    imported = run(
        [installed.python, "-c", "import keyvault.db.migrations as m; print(m.__file__)"],
        cwd=tmp_path,
        env=server_env("sqlite+aiosqlite:///unused.db"),
    ).stdout.strip()
    assert Path(imported).is_relative_to(installed.venv)


def test_installed_wheel_migrates_serves_and_keeps_a_key_from_another_directory(
    installed: Installation, empty_database_url: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = server_env(empty_database_url)
    migrated = run([installed.keyvault, "migrate"], cwd=elsewhere, env=env)
    assert "database is at the latest schema" in migrated.stdout
    sub = f"packaged-{uuid.uuid4().hex[:8]}"
    token = run([installed.keyvault, "token", "--sub", sub], cwd=elsewhere, env=env).stdout
    headers = bearer(token.strip())

    with running_server(
        empty_database_url, elsewhere, keyvault=[str(installed.keyvault)]
    ) as server:
        url = f"{server.base_url}{key_path(sub)}"
        written = httpx.put(
            url,
            json={"api_key": "sk-wheel-0123456789abcdef"},
            headers=headers,
            timeout=REQUEST_SECONDS,
        )
        read = httpx.get(url, headers=headers, timeout=REQUEST_SECONDS)

    assert written.status_code == 201, written.text
    assert read.status_code == 200, read.text
    assert read.json()["api_key"] == "sk-wheel-0123456789abcdef"
