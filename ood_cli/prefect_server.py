"""The temporary Prefect server of an `ood` command, bound to the life of that command.

Without ``PREFECT_API_URL`` Prefect 3 starts its own temporary server (``SubprocessASGIServer``: uvicorn
in a child process, stopped by an ``atexit`` hook). A SIGKILLed parent never runs ``atexit``, so that
server lived on with parent PID 1. Here the `ood` command starts the same server app itself and points
Prefect at it for the duration of the command; the server process ends when its parent does, by two
independent means:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, set in the child before it serves, so the kernel signals
  it the moment the parent dies (set from the child, so it is tied to the parent process's main thread
  that started it and not to any Prefect worker thread);
- everywhere: a watchdog thread in the child that polls its parent pid once a second.

Run as ``python -m ood_cli.prefect_server --parent PID --port PORT`` (the command does this itself).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

_PR_SET_PDEATHSIG = 1
_PORT_IN_USE_EXIT = 3  # uvicorn's exit status when it cannot bind
_WATCHDOG_PERIOD_S = 1.0


# --------------------------------------------------------------------------- parent side


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env() -> dict[str, str]:
    """The environment Prefect gives its own temporary server (UI off, ephemeral mode, our settings)."""
    from prefect.settings import get_current_settings

    return {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }


def _spawn(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "ood_cli.prefect_server", "--parent", str(os.getpid()), "--port", str(port)]
    return subprocess.Popen(command, env=_server_env())


def wait_healthy(process: subprocess.Popen[Any], url: str, timeout: float) -> bool | None:
    """True when the server answers, False when it could not bind its port, None when it died or timed out."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            status = process.poll()
            if status is not None:
                return False if status == _PORT_IN_USE_EXIT else None
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health", timeout=5).status_code == 200:
                    return True
            time.sleep(0.1)
    return None


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate a server process, killed when it has not ended after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_server(timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server child and wait until it answers; returns (process, API URL)."""
    for _ in range(3):
        port = free_port()
        process = _spawn(port)
        url = f"http://127.0.0.1:{port}/api"
        healthy = wait_healthy(process, url, timeout)
        if healthy:
            return process, url
        stop_process(process)
        if healthy is None:
            raise RuntimeError(f"the temporary Prefect server did not answer on {url} within {timeout:.0f} s "
                               f"(exit status {process.returncode})")
    raise RuntimeError("the temporary Prefect server found no free port in three tries")


@contextlib.contextmanager
def prefect_api(timeout: float = 180.0) -> Iterator[str | None]:
    """The Prefect API for this command: the configured server (PREFECT_API_URL), else a temporary one that
    lives as long as this process and no longer. Yields the URL of the temporary server, None otherwise."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    process, url = start_server(timeout)
    previous = os.environ.get("PREFECT_API_URL")
    # The environment and Prefect's process-wide settings both name the server, so threads that start
    # without our context (Prefect's event and log workers) never start a temporary server of their own.
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        drain_services()  # their clients name this server: a later command in this process gets fresh ones
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        refresh_global_settings_context()
        stop_process(process)


def drain_services() -> None:
    """Stop Prefect's process-wide queue services (concurrency leases, events, logs) after flushing them: they
    are singletons holding clients of one server, and a later server must get fresh ones."""
    from prefect._internal.concurrency.services import _QueueServiceBase

    _QueueServiceBase.drain_all(timeout=30)


# --------------------------------------------------------------------------- child side


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGTERM us when the parent dies (Linux), and watch the parent pid anyway."""
    if sys.platform.startswith("linux"):
        libc: Any = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCHDOG_PERIOD_S)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
        time.sleep(10)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prefect server bound to the life of its parent process")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=args.port,
                log_level="error", lifespan="on")


if __name__ == "__main__":
    main()
