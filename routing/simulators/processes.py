"""Child processes on loopback, as the tests and the benchmarks start them.

Every process runs in its own process group, with its output in a log file, and is torn
down with its group. Ports are chosen free at run time; readiness is polled, never slept.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from routing.simulators import SimulatorError

# The project directory (manage.py): children run from here.
ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


class MissingTool(SimulatorError):
    """An external tool (DCMTK, Orthanc, HAProxy…) is not installed."""


class NotReady(AssertionError):
    """A child exited, or a condition did not hold in time (an AssertionError: in a test, a failure)."""


# Ports handed out by free_port in this process (never handed out twice), from FREE_PORTS:
# below the kernel's ephemeral range (32768+ by default), and below 20000, where the demo's
# test puts its backends at fixed offsets from a base.
_HANDED_OUT: set[int] = set()
FREE_PORTS = (10000, 20000)


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (and bind to port 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port nothing is bound to now, for a server started a moment later. Chosen below the
    kernel's ephemeral range: a port bind(0) picks may be given meanwhile to an outgoing
    connection as its local port, and the server then finds it taken (an Orthanc in a test
    did). At random, so parallel test workers seldom pick the same; never twice in a process."""
    low, high = FREE_PORTS[0], min(FREE_PORTS[1], _ephemeral_low())
    for _ in range(200) if high > low + 1000 else ():
        port = random.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise NotReady(f"timed out after {timeout}s waiting for {what}")


def find_tool(name: str, debian_package: str) -> str:
    """Path of an external tool; raises MissingTool naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        raise MissingTool(
            f"{name} not found: install Debian's {debian_package} "
            f"(`make setup` does it as root: apt-get install {debian_package})"
        )
    return path


@dataclass
class Managed:
    """A child process in its own process group, its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_text: str | None = None
    proc: subprocess.Popen | None = None
    _log_offset: int = 0
    # Largest file the process may write (RLIMIT_FSIZE): past it writes fail with EFBIG,
    # as on a full disk (Python ignores SIGXFSZ).
    max_file_bytes: int | None = None
    # Soft limit of open files the process starts with (e.g. the common 1,024).
    open_files: int | None = None

    def start(self, *, timeout: float = 30) -> Managed:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = len(self.log())  # a restart waits for its own "ready" line
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=self._limits,
        )
        log.close()
        if self.ready_text:
            wait_for(self._ready, timeout=timeout, what=f"{self.name} to start ({self.log_path})")
        return self

    def _limits(self) -> None:
        import resource

        if self.max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))
        if self.open_files is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def _ready(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise NotReady(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return self.ready_text in self.log()[self._log_offset:]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, *, timeout: float = 15) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=5)
        try:  # anything the child left in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.returncode
