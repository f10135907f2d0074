"""``runproxy --workers N``: N forked processes serving the listening sockets the parent bound.

The parent binds each pool's socket once (so a taken port fails loudly, and no stale
process can silently share it as SO_REUSEPORT would allow); the workers inherit the
sockets and accept on them, each on its own event loop. The parent keeps the
heartbeats and the periodic purge, restarts a worker that dies (with the sockets it
keeps), hands every worker the sockets of pools a reload adds, and on SIGTERM passes
the signal on and waits for every worker to drain.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("synthiq.routing")

RESPAWN_BACKOFF_SECONDS = 1.0


class Workers:
    def __init__(self, *, count: int, target: Callable[[int, Callable[[], None], socket.socket], int],
                 stopping: threading.Event, grace_seconds: float, on_exit: Callable[[int], None] | None = None):
        self.count = count
        self.target = target
        self.stopping = stopping
        self.grace_seconds = grace_seconds
        self.on_exit = on_exit  # told the index of a worker that exited (its counts are void)
        self.pids: dict[int, int] = {}  # pid -> worker index
        # pid -> the parent's end of a channel to that worker (see ``reload``)
        self.channels: dict[int, socket.socket] = {}
        self._ready_r, self._ready_w = os.pipe()
        self._respawn_at: dict[int, float] = {}

    def start(self) -> None:
        for index in range(self.count):
            self._fork(index)

    def _fork(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(self._ready_r)
                ours.close()
                for channel in self.channels.values():
                    channel.close()
                parent = os.getppid()
                threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
                code = self.target(index, lambda: os.write(self._ready_w, b"r"), theirs)
            except BaseException:
                logger.exception("worker %d failed", index)
            finally:
                os._exit(code)
        theirs.close()
        self.pids[pid] = index
        self.channels[pid] = ours
        logger.info("worker %d started (pid %d)", index, pid)

    def reload(self, listeners: dict[str, socket.socket], web_listeners: dict[str, socket.socket]) -> None:
        """Tell every worker to re-read the config file, handing it the listening sockets
        of the pools the reload added and of the DICOMweb listeners it added or moved
        (SCM_RIGHTS over its channel: a worker forked before the reload has no other way to
        get them)."""
        message = json.dumps({"dicom": list(listeners), "web": list(web_listeners)}).encode()
        fds = [sock.fileno() for sock in [*listeners.values(), *web_listeners.values()]]
        for pid, channel in list(self.channels.items()):
            try:
                socket.send_fds(channel, [message], fds)
            except OSError as exc:  # the worker is gone; reap() starts another with the sockets
                logger.warning("reload: worker pid %d did not take the reload: %s", pid, exc)

    def wait_ready(self, *, timeout: float) -> bool:
        """True once every worker is listening."""
        deadline = time.monotonic() + timeout
        seen = 0
        os.set_blocking(self._ready_r, False)
        while seen < self.count and time.monotonic() < deadline and not self.stopping.is_set():
            try:
                seen += len(os.read(self._ready_r, 64))
            except BlockingIOError:
                time.sleep(0.05)
            self.reap()
        return seen >= self.count

    def reap(self) -> None:
        """Collect workers that exited; start a new one for each (not while stopping)."""
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            self.channels.pop(pid).close()
            logger.error("worker %d (pid %d) exited with %s", index, pid, _describe(status))
            if self.on_exit is not None:
                self.on_exit(index)
            if not self.stopping.is_set():
                self._respawn_at[index] = time.monotonic() + RESPAWN_BACKOFF_SECONDS
        for index, at in list(self._respawn_at.items()):
            if time.monotonic() >= at and not self.stopping.is_set():
                del self._respawn_at[index]
                self._fork(index)

    def stop(self) -> None:
        """SIGTERM to every worker; each drains (bounded by its grace); stragglers are killed."""
        for pid in list(self.pids):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        while self.pids and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
                continue
            index = self.pids.pop(pid, None)
            if index is not None and status:
                logger.warning("worker %d (pid %d) exited with %s", index, pid, _describe(status))
        for pid in list(self.pids):
            logger.error("worker pid %d did not stop in time: killed", pid)
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.pids.clear()
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"code {os.waitstatus_to_exitcode(status)}"


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent died (SIGKILL) stops too, instead of serving orphaned."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return
