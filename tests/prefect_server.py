"""A real local Prefect server for tests: `prefect server start` on 127.0.0.1 and a free port, with a private
PREFECT_HOME; the in-process client points at it while it runs. Used by test_deployments (API only) and
test_ui (with the UI, whose PREFECT_UI_API_URL must name the same port)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ood_cli.prefect_server import drain_services, free_port, stop_process, wait_healthy

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
SERVER_START_TIMEOUT = 120.0


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
        if not wait_healthy(proc, srv.url, SERVER_START_TIMEOUT):
            raise AssertionError(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        # Services an earlier test left behind (e.g. a concurrency-lease service whose client still names the
        # temporary server of an in-process `ood` command, gone since) must not serve this server's runs.
        drain_services()
        with temporary_settings(updates={PREFECT_API_URL: srv.url, PREFECT_HOME: home}):
            try:
                yield srv
            finally:
                drain_services()  # so later tests' servers get fresh in-process services
    finally:
        stop_process(proc, timeout=20)
        log.close()
