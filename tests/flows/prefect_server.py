"""A real ``prefect server`` and process worker in subprocesses, for deployment-level integration tests.

Everything started here runs in its own process group and is stopped (SIGINT, then SIGKILL) on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGINT the process group (a Prefect worker stops cleanly on SIGINT), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class PrefectStack:
    """``prefect server start`` on a free loopback port plus helpers to deploy, run and inspect."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.procs: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_EXTRA_LOGGERS": "st_workflow",
            "ST_WORKFLOW_HOME": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("PREFECT_API_KEY", None)

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.home / log, "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            args, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 180.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            "server.log",
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api}/health", timeout=2).json() is True:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"prefect server did not become healthy:\n{self.log('server.log')}")

    def log(self, name: str) -> str:
        p = self.home / name
        return p.read_text(errors="replace")[-6000:] if p.exists() else ""

    def cli(self, *args: str, timeout: float = 180.0) -> str:
        r = subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def start_worker(self, pool: str) -> subprocess.Popen:
        return self._spawn(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"], "worker.log"
        )

    def run_deployment(self, name: str, params: dict[str, Any]) -> str:
        out = self.cli("deployment", "run", name, "--params", json.dumps(params))
        m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        if not m:
            raise RuntimeError(f"no flow run id in: {out}")
        return m.group(1)

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.api}/flow_runs/{run_id}", timeout=10).json()

    def state(self, run_id: str) -> str:
        return self.flow_run(run_id)["state"]["type"]

    def wait(self, run_id: str, timeout: float = 900.0, until: set[str] = TERMINAL) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.state(run_id)
            if st in until:
                return st
            time.sleep(1.0)
        raise TimeoutError(
            f"flow run {run_id} still {self.state(run_id)} after {timeout} s\n{self.log('worker.log')}"
        )

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        body = {"flow_runs": {"id": {"any_": [run_id]}}}
        return httpx.post(f"{self.api}/artifacts/filter", json=body, timeout=10).json()

    def logs(self, run_id: str) -> str:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
        return "\n".join(
            r["message"] for r in httpx.post(f"{self.api}/logs/filter", json=body, timeout=10).json()
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)


@contextlib.contextmanager
def prefect_stack(home: Path) -> Iterator[PrefectStack]:
    stack = PrefectStack(home)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``marker`` (zombies excluded)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (d / "status").read_text()
        except OSError:
            continue
        if marker in cmd and "State:\tZ" not in status:
            found.append((int(d.name), cmd))
    return found
