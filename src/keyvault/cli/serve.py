"""`keyvault serve`: uvicorn over the app factory, after checking the providers file, the schema
and the master key."""

from __future__ import annotations

import asyncio
import logging.config
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from keyvault.cli.common import check_unlocks, one_line_failures
from keyvault.config import ConfigurationError, load_settings
from keyvault.observability.logs import logging_config
from keyvault.observability.metrics import MULTIPROCESS_DIR_VARIABLE
from keyvault.providers.providers_file import load_providers

# Under Docker's default 10 s stop timeout, yet ample for requests that take milliseconds.
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 8


@one_line_failures
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="PEM certificate (chain) file: serve HTTPS."
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="PEM private key for --ssl-certfile."),
    ] = None,
    shutdown_timeout: Annotated[
        int,
        typer.Option(min=1, help="On SIGTERM, seconds to let in-flight requests finish."),
    ] = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
) -> None:
    """Run the HTTP service (after checking the providers file, the schema and the master key)."""
    import uvicorn

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ConfigurationError(
            "--ssl-certfile and --ssl-keyfile go together; give both or neither"
        )
    settings = load_settings()
    load_providers(settings)  # a bad providers file is one line here, not a worker's traceback
    log_config = logging_config(settings.log_level)
    logging.config.dictConfig(log_config)
    asyncio.run(check_unlocks(settings))
    _exit_cleanly_after_sigterm()
    with multiprocess_metrics(workers):
        uvicorn.run(
            "keyvault.web.app:create_served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # By name, as the app is: the CLI imports nothing of keyvault.web.
            http="keyvault.web.http_protocol:GuardedHttpProtocol",
            # keyvault serves no WebSocket route; an upgrade request is answered as plain HTTP.
            ws="none",
            log_config=log_config,
            access_log=False,
            server_header=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            timeout_graceful_shutdown=shutdown_timeout,
        )


def _exit_cleanly_after_sigterm() -> None:
    """SIGTERM is how an orchestrator asks for a stop; once uvicorn has drained, that is success.

    uvicorn finishes in-flight requests and closes the pool, then re-raises the signal it caught
    under the handler that was there before; with the default one the process would die by the
    signal (exit 143 in a container) after an orderly shutdown. This one exits 0 instead, and a
    SIGTERM that arrives before uvicorn installs its own handler (nothing in flight yet) too.
    """

    def exit_zero(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_zero)


@contextmanager
def multiprocess_metrics(workers: int) -> Iterator[None]:
    """Workers share counters through files in PROMETHEUS_MULTIPROC_DIR (a fresh one unless given).

    Set before uvicorn spawns the workers: prometheus-client picks its mode when a worker imports
    it. A given directory is emptied first, as prometheus-client requires between runs.
    """
    if workers == 1:
        yield
        return
    given = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="keyvault-metrics-"))
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_DIR_VARIABLE] = str(directory)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)
