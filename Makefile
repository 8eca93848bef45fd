# The two set-up commands: `make run` (the service on the embedded SQLite default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint lock bench

# Pinned, hash-checked versions first (reproducible, no resolver run); then the project itself.
# `-e '.[dev]'` finds nothing left to install unless pyproject.toml gained a dependency the lock
# lacks, and tests/test_lock_files.py then fails until `make lock` is run. The Python client
# (clients/python) goes in editable too: its one dependency, httpx, is the server's as well.
$(BIN)/keyvault: pyproject.toml requirements-dev.lock clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-build-isolation -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -e clients/python
	touch $@

install: $(BIN)/keyvault

# Re-pin after editing dependencies in pyproject.toml; LOCK_ARGS=--upgrade moves every pin to the
# newest release, LOCK_ARGS='--upgrade-package NAME' just one. Both locks, same Python as the image.
# The runtime lock (the image's) has the pkcs11 extra, so the image can use an HSM seal.
LOCK_FLAGS := --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
lock: install
	$(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) --extra pkcs11 -o requirements.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) --extra dev -o requirements-dev.lock pyproject.toml

run: install
	$(BIN)/keyvault init
	$(BIN)/keyvault migrate
	@echo
	@echo "Try it (token for demo-user, valid one hour):"
	@echo "  TOKEN=\$$($(BIN)/keyvault token --sub demo-user)"
	@echo "  curl -X PUT -H \"Authorization: Bearer \$$TOKEN\" -H 'Content-Type: application/json' \\"
	@echo "       -d '{\"api_key\": \"sk-demo-0123456789abcdef\"}' http://$(HOST):$(PORT)/users/demo-user/api-key"
	@echo "  curl -H \"Authorization: Bearer \$$TOKEN\" http://$(HOST):$(PORT)/users/demo-user/api-key"
	@echo
	$(BIN)/keyvault serve --host $(HOST) --port $(PORT)

# Runs the whole suite against SQLite and against Postgres (KEYVAULT_TEST_DATABASES narrows it).
test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

# The benchmark (bench/, see bench/README.md): needs wrk and a local Postgres; not part of `make test`.
bench: install
	$(BIN)/python -m bench.bench $(BENCH_ARGS)
