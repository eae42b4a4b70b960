"""A real local Prefect server for tests: `prefect server start` on 127.0.0.1 and a free port, with a private
PREFECT_HOME; the in-process client points at it while it runs. Used by test_deployments (API only) and
test_ui (with the UI, whose PREFECT_UI_API_URL must name the same port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, home: Path, port: int) -> None:
        self.port = port
        self.ui_url = f"http://127.0.0.1:{port}"
        self.url = f"{self.ui_url}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.url,
            "PREFECT_UI_API_URL": self.url,  # the UI asks its API here (default: port 4200)
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PWD": str(REPO),  # prefect.yaml's pull step: set_working_directory {{ $PWD }}
        }
        self.home = home

    def cli(self, *args: str, timeout: float = 180.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([PREFECT, "--no-prompt", *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done


@contextmanager
def running_server(home: Path, *, ui: bool = False) -> Iterator[Server]:
    """Start the server, point this process's Prefect client at it, stop both afterwards."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    srv = Server(home, free_port())
    log = (home / "server.log").open("w")
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(srv.port), "--analytics-off"]
    proc = subprocess.Popen([*command, *([] if ui else ["--no-ui"])], cwd=home, env=srv.env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{srv.url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        # Services an earlier test left behind (e.g. a concurrency-lease service whose client still names the
        # temporary server of an in-process `ood` command, gone since) must not serve this server's runs.
        from prefect._internal.concurrency.services import _QueueServiceBase

        _QueueServiceBase.drain_all(timeout=30)
        with temporary_settings(updates={PREFECT_API_URL: srv.url, PREFECT_HOME: home}):
            try:
                yield srv
            finally:
                # Prefect's in-process services (concurrency leases, event and log shippers) are singletons
                # holding clients for this server; stop them so later tests' servers get fresh ones.
                from prefect._internal.concurrency.services import _QueueServiceBase

                _QueueServiceBase.drain_all(timeout=30)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
