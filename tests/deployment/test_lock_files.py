"""requirements.lock and requirements-dev.lock pin every dependency of pyproject.toml, with hashes."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def entries(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """Each pinned requirement: normalised name -> (version, its --hash lines)."""
    pinned: dict[str, tuple[str, list[str]]] = {}
    hashes: list[str] | None = None
    for line in lock.read_text().splitlines():
        if match := PIN.match(line):
            hashes = []
            pinned[canonicalize_name(match.group(1))] = (match.group(2), hashes)
        elif hashes is not None and line.strip().startswith("--hash="):
            hashes.append(line.strip())
        else:
            hashes = None
    return pinned


def pins(lock: Path) -> dict[str, str]:
    return {name: pinned_version for name, (pinned_version, _) in entries(lock).items()}


def declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(line) for line in listed]


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_every_pin_carries_a_sha256_hash(lock: Path) -> None:
    found = entries(lock)
    assert found
    for name, (_, hashes) in found.items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", line) for line in hashes), name


@pytest.mark.parametrize(
    ("lock", "extra"),
    [(RUNTIME_LOCK, None), (RUNTIME_LOCK, "pkcs11"), (DEV_LOCK, None), (DEV_LOCK, "dev")],
    ids=["runtime", "runtime-pkcs11", "dev-runtime", "dev-extra"],
)
def test_every_declared_dependency_is_pinned_within_its_range(
    lock: Path, extra: str | None
) -> None:
    pinned = pins(lock)
    for requirement in declared(extra):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in {lock.name}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} in {lock.name} is outside {requirement.specifier}: run `make lock`"
        )


def test_runtime_and_dev_locks_pin_the_same_versions() -> None:
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    assert set(runtime) <= set(dev)
    assert {name: dev[name] for name in runtime} == runtime


def test_dev_environment_has_exactly_the_locked_versions() -> None:
    """`make install` installed from the lock: what runs the tests is what the lock says."""
    mismatched = {}
    for name, locked in pins(DEV_LOCK).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed != locked:
            mismatched[name] = (locked, installed)
    assert mismatched == {}
